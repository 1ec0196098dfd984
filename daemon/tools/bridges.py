"""Sites joined by mosquitto bridges: which topics cross, the bridge config of each site and the
hub's ACL lines for the bridges (docs/operators/bridged-sites.md).

A site runs its own broker; its nodes and applications connect to it alone. Every site but the
hub bridges to the hub's broker over TLS (a star: a message between two outer sites goes
through the hub, two bridge hops). Only what some other site needs crosses a bridge, named by
the addressee rather than the publisher, from the nodes' own configs:

* to each node: ``+/ll/<node>``, ``+/proto/<node>``, ``+/svc/<node>``, ``+/req/<node>`` and its
  command topic ``<node>/cmd``;
* for each link a node ends: its heralds ``+/herald/<link>``, time tags ``+/tags/<link>`` and
  key post-processing ``+/key/<link>``;
* to each application listed at a site: ``+/reply/<app>``, ``+/app/<app>``, ``+/to/<app>``
  (and ``+/reply/<node>`` to each node);
* to everyone (small, and read by operators anywhere): ``+/status``, ``+/telemetry``, and the
  routing adverts ``+/topo`` (every memory node builds its graph from all of them).

A site's bridge takes *in* what its own nodes need and sends *out* what the other sites' nodes
need; a topic both need goes both ways (mosquitto's ``try_private`` keeps a message from
coming back over the bridge it came in by). A herald station's batches for a link whose ends
both live at its site never leave it.

The bridge logs in at the hub with its certificate (CN ``bridge-<site>``); the hub's ACL lets
it publish only under its site's nodes' and applications' prefixes and read only what its site
takes in (:func:`hub_acl`). The bridge's fixed options come from the shipped
``systemd/mosquitto-bridge.conf``; :func:`bridge_conf` fills in the site and appends the
topics. Command line: ``qnode bridge-config``.
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from qnode.daemon.bus.topics import VERSION_SEGMENT
from qnode.daemon.runtime.config import ConfigError, NodeConfig, load_config

#: Topics every site takes in and sends out, below ``qnet/v1/<network>/``.
BROADCAST = ("+/status", "+/telemetry", "+/topo")
#: A site's, node's, application's or network's name (a topic segment)
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: host:port of a broker (a name, an IPv4 address or a bracketed IPv6 one)
ADDRESS = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")
#: Options of the shipped bridge file that :func:`bridge_conf` sets per site.
PER_SITE = ("connection", "address", "remote_clientid", "local_clientid", "bridge_cafile",
            "bridge_certfile", "bridge_keyfile")


def shipped_bridge_conf() -> Path:
    """``systemd/mosquitto-bridge.conf`` of this checkout, or of the installed package's data."""
    here = Path(__file__).resolve().parents[2] / "systemd" / "mosquitto-bridge.conf"
    if here.is_file():
        return here
    return Path(sys.prefix) / "share" / "qnode" / "systemd" / "mosquitto-bridge.conf"


@dataclass(frozen=True)
class Site:
    """One site: its broker's ``address`` (host:port of its TLS listener, as other sites'
    bridges reach it), its nodes and the applications that connect to its broker."""

    name: str
    nodes: tuple[str, ...]
    applications: tuple[str, ...] = ()
    address: str | None = None


@dataclass(frozen=True)
class Sites:
    """The network's sites and which one is the hub (every other site bridges to it)."""

    network: str
    hub: str
    sites: Mapping[str, Site]

    def __post_init__(self) -> None:
        # every name lands in mosquitto's config and ACL files: one line each, nothing else
        for what, name in (("network", self.network), *(
                (f"sites.{s.name}", n) for s in self.sites.values()
                for n in (s.name, *s.nodes, *s.applications))):
            if not NAME.fullmatch(name):
                raise ValueError(f"{what}: {name!r} is not a name (letters, digits, _ and -, "
                                 "at most 64)")
        for s in self.sites.values():
            if s.address is not None and not ADDRESS.fullmatch(s.address):
                raise ValueError(f"sites.{s.name}.address: expected host:port, got "
                                 f"{s.address!r}")
        if self.hub not in self.sites:
            raise ValueError(f"hub: {self.hub!r} is not one of the sites {sorted(self.sites)}")
        seen: dict[str, str] = {}
        for site in self.sites.values():
            for name in (*site.nodes, *site.applications):
                if name in seen:
                    raise ValueError(f"{name!r} is at two sites: {seen[name]} and {site.name}")
                seen[name] = site.name
        if self.sites[self.hub].address is None:
            raise ValueError(f"sites.{self.hub}.address: the hub's broker needs one "
                             "(host:port of its TLS listener)")


def load_sites(path: str | Path) -> Sites:
    """Read a sites file (TOML): ``network``, ``hub`` and ``[sites.<name>]`` tables with
    ``nodes``, optional ``applications`` and (the hub's, required) ``address``. ValueError
    naming the key for anything else."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    try:
        network, hub, tables = data["network"], data["hub"], data["sites"]
    except KeyError as exc:
        raise ValueError(f"{path}: missing key {exc.args[0]!r}") from None
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"{path}: sites: expected tables [sites.<name>]")
    sites = {}
    for name, t in tables.items():
        if not isinstance(t, dict) or not isinstance(t.get("nodes"), list) or not t["nodes"]:
            raise ValueError(f"{path}: sites.{name}.nodes: expected a list of node ids")
        apps = t.get("applications", [])
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
            raise ValueError(f"{path}: sites.{name}.applications: expected a list of names")
        address = t.get("address")
        if address is not None and not isinstance(address, str):
            raise ValueError(f"{path}: sites.{name}.address: expected host:port")
        if not all(isinstance(n, str) for n in t["nodes"]):
            raise ValueError(f"{path}: sites.{name}.nodes: expected a list of node ids")
        sites[name] = Site(name, tuple(t["nodes"]), tuple(apps), address)
    if not isinstance(network, str) or not isinstance(hub, str):
        raise ValueError(f"{path}: network and hub: expected names")
    try:
        return Sites(network, hub, sites)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def needs(network: str, configs: Iterable[NodeConfig], applications: Iterable[str] = ()
          ) -> set[str]:
    """The topic filters that the nodes of ``configs`` and the ``applications`` of one site
    take in."""
    base = f"qnet/{VERSION_SEGMENT}/{network}"
    out = {f"{base}/{t}" for t in BROADCAST}
    for c in configs:
        out |= {f"{base}/+/{kind}/{c.id}" for kind in ("ll", "proto", "svc", "req", "reply")}
        out.add(f"{base}/{c.id}/cmd")
        for link in c.links:
            out |= {f"{base}/+/{kind}/{link.id}" for kind in ("herald", "tags", "key")}
    for app in applications:
        out |= {f"{base}/+/{kind}/{app}" for kind in ("reply", "app", "to")}
    return out


def bridge_topics(sites: Sites, configs: Mapping[str, NodeConfig], site: str
                  ) -> list[tuple[str, str]]:
    """(filter, direction) of the bridge from ``site`` to the hub: ``in`` what the site's
    nodes need, ``out`` what any other site's need, ``both`` for both; sorted."""
    if site == sites.hub:
        raise ValueError(f"{site} is the hub: the other sites bridge to it")
    missing = [n for s in sites.sites.values() for n in s.nodes if n not in configs]
    if missing:
        raise ValueError(f"no config for node(s) {', '.join(sorted(missing))}")
    other = sorted(n for s in sites.sites.values() for n in s.nodes
                   if configs[n].network != sites.network)
    if other:
        raise ValueError(f"node(s) {', '.join(other)} are of another network than "
                         f"{sites.network!r}")
    wanted = {name: needs(sites.network, [configs[n] for n in s.nodes], s.applications)
              for name, s in sites.sites.items()}
    inside = wanted[site]
    outside = set().union(*(w for name, w in wanted.items() if name != site))
    return sorted((f, "both" if f in inside and f in outside else "in" if f in inside
                   else "out") for f in inside | outside)


def bridge_conf(sites: Sites, configs: Mapping[str, NodeConfig], site: str, *,
                template: Path | None = None, ca_file: str | None = None,
                cert_file: str | None = None, key_file: str | None = None,
                address: str | None = None) -> str:
    """The mosquitto bridge config of ``site``: the shipped file's options with this site's
    connection name, client ids, the hub's address (``address`` overrides it, e.g. a test's
    proxy) and certificate paths, then one ``topic`` line per :func:`bridge_topics`."""
    own: dict[str, str | None] = {
        "connection": f"qnode-{site}", "address": address or sites.sites[sites.hub].address,
        "remote_clientid": f"bridge-{site}", "local_clientid": f"bridge-{site}-local"}
    for option, path in (("bridge_cafile", ca_file), ("bridge_certfile", cert_file),
                         ("bridge_keyfile", key_file)):
        if path is not None:
            own[option] = path
    lines = [f"# the bridge of site {site} to the hub {sites.hub} (qnode bridge-config)"]
    for line in (template or shipped_bridge_conf()).read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] == "topic":
            continue
        if words[0] in own:
            lines.append(f"{words[0]} {own[words[0]]}")
        elif words[0] in PER_SITE:     # a path not overridden: the site's own file name
            lines.append(" ".join(words).replace("SITE", site))
        else:
            lines.append(" ".join(words))
    lines += [f"topic {f} {d} 1" for f, d in bridge_topics(sites, configs, site)]
    return "\n".join(lines) + "\n"


def hub_acl(sites: Sites, configs: Mapping[str, NodeConfig], site: str) -> str:
    """ACL lines for the hub's broker (appended to its qnode.acl): the bridge of ``site`` may
    publish only under its site's nodes' and applications' prefixes, and read what the site
    takes in."""
    base = f"qnet/{VERSION_SEGMENT}/{sites.network}"
    s = sites.sites[site]
    lines = [f"# the bridge of site {site} (certificate CN bridge-{site})", f"user bridge-{site}"]
    lines += [f"topic write {base}/{n}/#" for n in (*s.nodes, *s.applications)]
    lines += [f"topic read {f}" for f, d in bridge_topics(sites, configs, site)
              if d in ("in", "both")]
    return "\n".join(lines) + "\n"


def load_configs(paths: Iterable[Path]) -> dict[str, NodeConfig]:
    """The node configs of ``paths`` by node id (each validated: :class:`ConfigError`)."""
    configs = {}
    for p in paths:
        c = load_config(p)
        configs[c.id] = c
    return configs


def run(args: argparse.Namespace) -> int:
    """``qnode bridge-config``: ``bridge-<site>.conf`` for every site but the hub and
    ``hub-bridges.acl`` into ``args.out``; 2 with one line on stderr for a bad file."""
    try:
        sites = load_sites(args.sites)
        configs = load_configs(Path(p) for p in args.configs)
        placed = {n for s in sites.sites.values() for n in s.nodes}
        if set(configs) - placed:
            raise ValueError(f"node(s) {', '.join(sorted(set(configs) - placed))} are at no "
                             "site of the sites file")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        acl = []
        for name in sites.sites:
            if name == sites.hub:
                continue
            path = out / f"bridge-{name}.conf"
            path.write_text(bridge_conf(sites, configs, name))
            acl.append(hub_acl(sites, configs, name))
            print(f"{path}: install at site {name} (mosquitto conf.d)")
        (out / "hub-bridges.acl").write_text("\n".join(acl))
        print(f"{out / 'hub-bridges.acl'}: append to the hub's ({sites.hub}) qnode.acl")
    except (ValueError, ConfigError, OSError) as exc:
        print(f"qnode bridge-config: {exc}", file=sys.stderr)
        return 2
    return 0
