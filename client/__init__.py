"""qnode.client: an application's asyncio API to its node (docs/integrators/client.md).

::

    from qnode.client import NodeClient

    async with NodeClient.from_connection("qnode-demo.json", "alice-app") as node:
        async for pair in node.create_keep("bob", pairs=5, purpose=7, timeout_s=30):
            print(pair.pair_id, pair.bell_state, pair.fidelity, pair.qubit, pair.hold_ms)

:meth:`NodeClient.operate` runs gates (:mod:`qnode.client.gates`) on a delivered pair's half,
and :meth:`NodeClient.send_data` / :meth:`NodeClient.receive_data` carry classical messages
between applications. :class:`BlockingClient` is the same for scripts without an event loop.
Of qnode, the client imports only the application protocol's message classes
(:mod:`qnode.daemon.apps.protocol`).
"""
from qnode.client import gates
from qnode.client.blocking import BlockingClient, BlockingPairs
from qnode.client.connection import (
    ApplicationInfo,
    ConnectionFileError,
    ConnectionInfo,
)
from qnode.client.gates import AUX, PAIR
from qnode.client.node import NodeClient, PairListener, PairStream
from qnode.client.results import (
    Acceptance,
    ClientError,
    ConnectionLost,
    DataMessage,
    NoData,
    NoReply,
    Operation,
    Outcome,
    Pair,
    RequestCancelled,
    RequestError,
    RequestExpired,
)

__all__ = [
    "AUX",
    "PAIR",
    "Acceptance",
    "ApplicationInfo",
    "BlockingClient",
    "BlockingPairs",
    "ClientError",
    "ConnectionFileError",
    "ConnectionInfo",
    "ConnectionLost",
    "DataMessage",
    "NoData",
    "NoReply",
    "NodeClient",
    "Operation",
    "Outcome",
    "Pair",
    "PairListener",
    "PairStream",
    "RequestCancelled",
    "RequestError",
    "RequestExpired",
    "gates",
]
