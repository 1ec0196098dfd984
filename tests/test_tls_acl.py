"""DESIGN §5 security with a real mosquitto: TLS with client certificates (CN = node id) and
the shipped ACL (systemd/mosquitto-qnode.acl: a node publishes only under its own prefix).

Two memory daemons connect over mqtts:// with their certificates; the test's station heralds
pairs to them. A client without a certificate is refused; "mallory", holding a valid
certificate and even the link key, cannot publish under the station's prefix: the broker drops
it, and the ends never see it."""
from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiomqtt
import pytest
from certs import Pki
from daemon_harness import Daemon, node_config, running

from qnode.daemon.bus import NodeBus
from qnode.daemon.linklayer import HeraldStation
from qnode.daemon.messages import decode
from qnode.daemon.topics import Topics, parse_topic

from mosquitto import Mosquitto

ACL = Path(__file__).resolve().parent.parent / "systemd" / "mosquitto-qnode.acl"
LINK, KEY = "alice-bob", b"k" * 32


def tls(pki: Pki, node: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if node is not None:
        cert, key = pki.client(node)
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def expected_seq(port: int, ctx: ssl.SSLContext, node: str, want: int,
                       records: int = 100) -> int:
    """A node's expected_seq from its telemetry (every 0.5 s), once it equals ``want`` or after
    ``records`` records."""
    seen = -1
    async with aiomqtt.Client("127.0.0.1", port, tls_context=ctx, identifier="observer") as c:
        await c.subscribe(f"qnet/v1/t/{node}/telemetry")
        async with asyncio.timeout(60):
            async for m in c.messages:
                body = decode(bytes(m.payload), parse_topic(str(m.topic))).body
                seen = body["links"][LINK]["expected_seq"]
                records -= 1
                if seen == want or records == 0:
                    break
    return seen


@pytest.mark.asyncio
async def test_tls_client_certificates_and_the_acl_keep_impostors_out(tmp_path):
    pki = Pki(tmp_path / "pki")
    broker = Mosquitto(tmp_path / "mosquitto", listener_options=pki.listener_options(ACL),
                       allow_anonymous=False)
    key = tmp_path / "link.key"
    key.write_bytes(KEY)
    configs = {}
    for node, peer in (("alice", "bob"), ("bob", "alice")):
        cert, pkey = pki.client(node)
        configs[node] = node_config(
            tmp_path / f"{node}.toml", node=node, roles=["memory"], broker_port=broker.port,
            state_dir=tmp_path / "state" / node,
            body=f"[memory]\ncapacity = 0\nmax_pair_age_s = 0\n\n[[links]]\nid = \"{LINK}\"\n"
                 f"peer = \"{peer}\"\ntype = \"K\"\nherald = \"station\"\n"
                 f"hmac_key_file = \"{key}\"\n")
        text = configs[node].read_text().replace(
            f"url = \"mqtt://127.0.0.1:{broker.port}\"",
            f"url = \"mqtts://127.0.0.1:{broker.port}\"\nca_file = \"{pki.ca}\"\n"
            f"client_cert = \"{cert}\"\nclient_key = \"{pkey}\"")
        configs[node].write_text(text)
    with broker, Daemon(configs["alice"]) as alice, Daemon(configs["bob"]) as bob:
        await asyncio.to_thread(alice.wait_for_log, "node ready")
        await asyncio.to_thread(bob.wait_for_log, "node ready")
        observer = tls(pki, "observer")
        station = HeraldStation([LINK])
        bus = NodeBus(Topics("t", "station"), "127.0.0.1", broker.port,
                      tls=tls(pki, "station"), keys={LINK: KEY})
        async with running(bus):
            for i in range(5):
                for _ in range(10):
                    station.success(LINK, "psi-", 1000 * (i + 1))
                (batch,) = station.flush(i)
                bus.publish(bus.topics.herald(LINK), batch.TYPE, batch.to_dict(), sign_with=LINK)
            await bus.drain(10)
        assert await expected_seq(broker.port, observer, "alice", 50) == 50
        assert await expected_seq(broker.port, observer, "bob", 50) == 50

        # mallory has a valid certificate (CN=mallory) and even the link key, and publishes a
        # correctly signed herald under the station's prefix: the ACL drops it at the broker
        forged = NodeBus(Topics("t", "station"), "127.0.0.1", broker.port, keys={LINK: KEY})
        for _ in range(10):
            station.success(LINK, "psi+", 99_000)
        (batch,) = station.flush(99)
        async with aiomqtt.Client("127.0.0.1", broker.port, tls_context=tls(pki, "mallory"),
                                  identifier="mallory") as m:
            payload = forged.envelope(batch.TYPE, batch.to_dict(), sign_with=LINK)[1]
            await m.publish(f"qnet/v1/t/station/herald/{LINK}", payload, qos=1)
            await m.publish("qnet/v1/t/mallory/status", b"{}", qos=1)  # its own prefix: fine
        # three fresh telemetry records (1.5 s) later alice is still at 50
        assert await expected_seq(broker.port, observer, "alice", 60, records=4) == 50
        assert "Denied PUBLISH from mallory" in broker.log_tail(400)

        # no certificate: the TLS handshake fails
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", broker.port, tls_context=tls(pki, None),
                                      identifier="anon", timeout=5):
                pass
        assert alice.proc.poll() is None and bob.proc.poll() is None
