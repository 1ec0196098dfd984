"""The client through the shipped broker setup (systemd/mosquitto-qnode.conf and its ACL, TLS
with client certificates whose CN is the user name): ``keyapp`` logs in with the certificate a
connection file names (relative to the file), and a scripted node ``alice`` (its own
certificate) answers its requests: the ACL lets each side read and write exactly these topics.
The script also sends what a node should not — a reply delivered twice, a pair after the
request's end — which the client drops and counts."""
from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from qnode.client import ApplicationInfo, ConnectionInfo, NodeClient, RequestError

from support import REPO
from support.certs import Pki
from support.mosquitto import Mosquitto

ACL = REPO / "systemd" / "mosquitto-qnode.acl"
CONF = REPO / "systemd" / "mosquitto-qnode.conf"


async def _node(port: int, ctx: ssl.SSLContext, subscribed: asyncio.Event) -> None:
    """alice: ACCEPTED, two PAIRs (the first sent twice, byte for byte), DONE, then a stray
    PAIR; ``unknown_remote`` for a request to anyone but bob."""
    ids = iter(range(1, 1_000_000))
    async with aiomqtt.Client("127.0.0.1", port, tls_context=ctx, identifier="alice") as c:
        await c.subscribe("qnet/v1/lab/+/req/alice", qos=1)
        subscribed.set()

        async def reply(app: str, type_: str, body: dict[str, Any], times: int = 1) -> None:
            payload = json.dumps({"v": 1, "type": type_, "sender": "alice", "id": next(ids),
                                  "ts": time.time(), "body": body})
            for _ in range(times):
                await c.publish(f"qnet/v1/lab/alice/app/{app}", payload, qos=1)

        async for m in c.messages:
            env = json.loads(m.payload)
            app, body = env["sender"], env["body"]
            if env["type"] != "REQUEST":
                continue
            rid = body["request_id"]
            if body["remote"] != "bob":
                await reply(app, "ERROR", {"request_id": rid, "code": "unknown_remote",
                                           "reason": f"no pool with {body['remote']}"})
                continue
            await reply(app, "ACCEPTED", {"request_id": rid, "queued": 1,
                                          "fidelity_estimate": 0.95})
            pair = {"pool": "alice-bob", "remote": "bob", "purpose": body["purpose"],
                    "bell_state": "phi+", "fidelity": 0.94, "kind": "keep",
                    "request_id": rid, "qubit": 0, "hold_ms": 500}
            await reply(app, "PAIR", {**pair, "pair_id": 1, "index": 1}, times=2)
            await reply(app, "PAIR", {**pair, "pair_id": 2, "index": 2})
            await reply(app, "DONE", {"request_id": rid, "pairs": 2})
            await reply(app, "PAIR", {**pair, "pair_id": 3, "index": 3})


@pytest.mark.asyncio
async def test_the_client_logs_in_with_a_certificate_through_the_shipped_acl(tmp_path: Path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.client("keyapp")
    node_cert, node_key = pki.client("alice")
    broker = Mosquitto(tmp_path / "mosquitto", listener_options=pki.shipped_options(CONF, ACL),
                       allow_anonymous=False)
    with broker:
        # the certificate's file names relative to the connection file, as one writes by hand
        path = ConnectionInfo(f"mqtts://127.0.0.1:{broker.port}", "lab", ("alice", "bob"), {
            "keyapp": ApplicationInfo("keyapp", "alice", (), None, None, cert.name, key.name)},
            ca_file=pki.ca.name).write(pki.dir / "c.json")
        node_ctx = ssl.create_default_context(cafile=str(pki.ca))
        node_ctx.load_cert_chain(str(node_cert), str(node_key))
        subscribed = asyncio.Event()
        node = asyncio.create_task(_node(broker.port, node_ctx, subscribed))
        try:
            async with asyncio.timeout(30):
                await subscribed.wait()
            async with NodeClient.from_connection(path, "keyapp") as client:
                stream = client.create_keep("bob", 2, purpose=7, timeout_s=30)
                pairs = [p async for p in stream]
                assert [p.pair_id for p in pairs] == [1, 2], pairs
                assert stream.accepted is not None and stream.accepted.fidelity_estimate == 0.95
                assert stream.outcome is not None and stream.outcome.status == "done"
                with pytest.raises(RequestError) as refused:
                    await client.create_keep("carol", 1).start()
                assert refused.value.code == "unknown_remote"
                async with asyncio.timeout(30):
                    while sum(client.ignored.values()) < 2:
                        await asyncio.sleep(0.05)
                assert client.ignored == {"duplicate": 1, "after_end": 1}, client.ignored
        finally:
            node.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await node
