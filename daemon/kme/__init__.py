"""Key delivery to key consumers (SAEs) through ETSI GS QKD 014: the node's KME role.

* :mod:`qnode.daemon.kme.store`: the node's SQLite store of secret keys shared with its peers,
  each key handed out once;
* :mod:`qnode.daemon.runtime.kme_config`: the ``[kme]`` table of the node's configuration;
* :mod:`qnode.daemon.kme.server`: the HTTPS server (mutual TLS) of the standard's REST API;
* :mod:`qnode.daemon.kme.pki`: a throw-away PKI for demonstrations and tests.

The integrator's view is docs/integrators/key-delivery.md.
"""
