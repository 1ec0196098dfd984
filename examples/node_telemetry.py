"""A node's telemetry as the examples read it: every client may subscribe to
``qnet/v1/<network>/<node>/telemetry`` (the shipped ACL), retained, one JSON envelope per record
(docs/integrators/telemetry.md). The envelope's signature is not checked here; a program that
acts on the figures should check it with the network's public keys.

    async for payload in telemetry(info, "alice", timeout_s=60):
        record = json.loads(payload)["body"]
"""
from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiomqtt

from qnode.client.connection import ConnectionInfo


def _tls(info: ConnectionInfo, application: str | None) -> ssl.SSLContext | None:
    if urlsplit(info.broker_url).scheme != "mqtts":
        return None
    ctx = ssl.create_default_context(cafile=info.ca_file)
    if application is not None:
        app = info.application(application)
        if app.client_cert:
            ctx.load_cert_chain(app.client_cert, app.client_key)
    return ctx


async def telemetry(info: ConnectionInfo, node: str, *,
                    application: str | None = None) -> AsyncIterator[bytes]:
    """The payloads of ``node``'s telemetry messages as they come (the retained one first),
    connected with ``application``'s credentials (or none). Stop iterating to disconnect; bound
    the wait with ``asyncio.timeout``."""
    url = urlsplit(info.broker_url)
    app = info.application(application) if application is not None else None
    async with aiomqtt.Client(url.hostname or "localhost", url.port or 1883,
                              username=app.username if app else None,
                              password=app.password if app else None,
                              tls_context=_tls(info, application)) as client:
        await client.subscribe(f"qnet/v1/{info.network}/{node}/telemetry", qos=1)
        async for message in client.messages:
            yield bytes(message.payload)   # type: ignore[arg-type]
