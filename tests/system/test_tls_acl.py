"""The MQTT trust boundary with a real mosquitto running the shipped configuration
(systemd/mosquitto-qnode.conf: TLS with client certificates whose CN is the node id, the
certificate's identity as user name *and* client id; systemd/mosquitto-qnode.acl: a node
publishes only under its own prefix).

Two memory daemons connect over mqtts:// with their certificates; the test's station heralds
pairs to them. A client without a certificate is refused; "mallory", holding a valid
certificate and even the link key, cannot publish under the station's prefix; cannot take over
alice's session by connecting with her client id; and cannot silence alice by poisoning her
replay window with unsigned commands."""
from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import aiomqtt
import pytest

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.envelope import Message, decode, encode
from qnode.daemon.bus.topics import Topics, parse_topic
from qnode.daemon.linklayer import HeraldStation

from support import REPO
from support.certs import Pki
from support.contract import ContractTap
from support.daemon_harness import Daemon, identity, node_config, running, write_key
from support.mosquitto import Mosquitto

SYSTEMD = REPO / "systemd"
ACL, CONF = SYSTEMD / "mosquitto-qnode.acl", SYSTEMD / "mosquitto-qnode.conf"
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


class Network:
    """The shipped broker, alice and bob (memory daemons over mqtts) and the test's station."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.pki = Pki(tmp_path / "pki")
        self.broker = Mosquitto(tmp_path / "mosquitto",
                                listener_options=self.pki.shipped_options(CONF, ACL),
                                allow_anonymous=False)
        key = tmp_path / "link.key"
        write_key(key, KEY)
        self.configs: dict[str, Path] = {}
        for node, peer in (("alice", "bob"), ("bob", "alice")):
            cert, pkey = self.pki.client(node)
            cfg = node_config(
                tmp_path / f"{node}.toml", node=node, roles=["memory"],
                broker_port=self.broker.port, state_dir=tmp_path / "state" / node,
                body=f"[memory]\ncapacity = 0\nmax_pair_age_s = 0\n\n[[links]]\n"
                     f"id = \"{LINK}\"\npeer = \"{peer}\"\ntype = \"K\"\n"
                     f"herald = \"station\"\nhmac_key_file = \"{key}\"\n")
            cfg.write_text(cfg.read_text().replace(
                f"url = \"mqtt://127.0.0.1:{self.broker.port}\"",
                f"url = \"mqtts://127.0.0.1:{self.broker.port}\"\nca_file = \"{self.pki.ca}\"\n"
                f"client_cert = \"{cert}\"\nclient_key = \"{pkey}\""))
            self.configs[node] = cfg
        self.station = HeraldStation([LINK])
        self.heralded = 0
        self.observer = tls(self.pki, "observer")

    def tap(self) -> ContractTap:
        """The contract tap on the broker (checked when its block ends): a certified client
        whose CN the ACL lets read every node's channels and publish its marker."""
        return self.broker.tap("t", ("alice", "bob"), tls=tls(self.pki, "contract-tap"),
                               name="contract-tap")

    def bus(self) -> NodeBus:
        return NodeBus(Topics("t", "station"), "127.0.0.1", self.broker.port,
                       tls=tls(self.pki, "station"), keys={LINK: KEY},
                       signer=identity(self.tmp, "station"))

    async def herald(self, bus: NodeBus, batches: int = 5, per_batch: int = 10) -> int:
        """Herald ``batches`` × ``per_batch`` pairs; returns the station's next sequence."""
        for _ in range(batches):
            for _ in range(per_batch):
                self.station.success(LINK, "psi-", 1000 * (self.heralded + 1))
            (batch,) = self.station.flush(self.heralded)
            self.heralded += 1
            bus.publish(bus.topics.herald(LINK), batch.TYPE, batch.to_dict(), sign_with=LINK)
        await bus.drain(30)
        return self.station.next_seq(LINK)

    async def telemetry(self, node: str) -> dict:
        async with aiomqtt.Client("127.0.0.1", self.broker.port, tls_context=self.observer,
                                  identifier="observer-t") as c:
            await c.subscribe(f"qnet/v1/t/{node}/telemetry")
            async with asyncio.timeout(60):
                async for m in c.messages:
                    return dict(decode(bytes(m.payload), parse_topic(str(m.topic))).body)
        raise AssertionError("no telemetry")


async def ready(*daemons: Daemon) -> None:
    for d in daemons:
        await asyncio.to_thread(d.wait_for_log, "node ready")


@pytest.mark.asyncio
async def test_tls_client_certificates_and_the_acl_keep_impostors_out(tmp_path):
    net = Network(tmp_path)
    with net.broker, Daemon(net.configs["alice"]) as alice, Daemon(net.configs["bob"]) as bob:
        net.tap()
        await ready(alice, bob)
        async with running(net.bus()) as bus:
            assert await net.herald(bus) == 50
        assert await expected_seq(net.broker.port, net.observer, "alice", 50) == 50
        assert await expected_seq(net.broker.port, net.observer, "bob", 50) == 50

        # mallory has a valid certificate (CN=mallory) and even the link key, and publishes a
        # correctly signed herald under the station's prefix: the ACL drops it at the broker
        forged = NodeBus(Topics("t", "station"), "127.0.0.1", net.broker.port, keys={LINK: KEY})
        for _ in range(10):
            net.station.success(LINK, "psi+", 99_000)
        (batch,) = net.station.flush(99)
        async with aiomqtt.Client("127.0.0.1", net.broker.port,
                                  tls_context=tls(net.pki, "mallory"), identifier="mallory") as m:
            payload = forged.envelope(batch.TYPE, batch.to_dict(), sign_with=LINK)[1]
            await m.publish(f"qnet/v1/t/station/herald/{LINK}", payload, qos=1)
            await m.publish("qnet/v1/t/mallory/status", b"{}", qos=1)  # its own prefix: fine
        # three fresh telemetry records (1.5 s) later alice is still at 50
        assert await expected_seq(net.broker.port, net.observer, "alice", 60, records=4) == 50
        assert "Denied PUBLISH from mallory" in net.broker.log_tail(400)

        # no certificate: the TLS handshake fails
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", net.broker.port, tls_context=tls(net.pki, None),
                                      identifier="anon", timeout=5):
                pass
        assert alice.proc.poll() is None and bob.proc.poll() is None


@pytest.mark.asyncio
async def test_a_certified_client_cannot_take_over_a_nodes_session(tmp_path):
    """Finding 4: with the client id free to choose, 20 connections under alice's id kicked her
    20 times and handed her queued heralds to the impostor. With the shipped config the broker
    replaces a client's id by its certificate's CN: mallory's connections are mallory's."""
    net = Network(tmp_path)
    with net.broker, Daemon(net.configs["alice"]) as alice, Daemon(net.configs["bob"]) as bob:
        net.tap()
        await ready(alice, bob)
        before = (await net.telemetry("alice"))["bus"]
        stolen = 0
        async with running(net.bus()) as bus:
            for _ in range(20):
                async with aiomqtt.Client("127.0.0.1", net.broker.port,
                                          tls_context=tls(net.pki, "mallory"),
                                          identifier="alice", clean_session=False) as m:
                    await m.subscribe(f"qnet/v1/t/station/herald/{LINK}")
                    await net.herald(bus, batches=1)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            async for _ in m.messages:
                                stolen += 1
            assert await net.herald(bus) == 250
        # every herald reached alice, on the one connection she had all along
        assert await expected_seq(net.broker.port, net.observer, "alice", 250) == 250
        after = (await net.telemetry("alice"))["bus"]
        assert before["reconnects"] == after["reconnects"] == 0
        assert after["disconnects"] == 0
        # mallory's subscription was her own: she saw the heralds she subscribed to, under her
        # own name; the broker logged her real identity for each connection
        assert stolen > 0
        log = net.broker.log_tail(3000)
        assert log.count("as mallory (") >= 20 and log.count("as alice (") == 1
        assert alice.proc.poll() is None and bob.proc.poll() is None


@pytest.mark.asyncio
async def test_unsigned_commands_cannot_poison_the_replay_window(tmp_path):
    """Finding 1: two unsigned cmd messages claiming senders station and bob with id 2^63-1
    made every later herald stale at alice, persistently, through TLS and the ACL. Now unsigned
    traffic never touches the windows of signed traffic, and nothing of it is stored."""
    net = Network(tmp_path)
    with net.broker, Daemon(net.configs["alice"]) as alice, Daemon(net.configs["bob"]) as bob:
        # the poison claims bob's name: not bob's message, so not judged
        net.tap().ignore("qnet/v1/t/alice/cmd")
        await ready(alice, bob)
        async with running(net.bus()) as bus:
            assert await net.herald(bus) == 50
            async with aiomqtt.Client("127.0.0.1", net.broker.port,
                                      tls_context=tls(net.pki, "mallory"),
                                      identifier="mallory") as m:
                for sender in ("station", "bob"):
                    poison = encode(Message("CREATE", sender, (1 << 63) - 1, {}))
                    await m.publish("qnet/v1/t/alice/cmd", poison, qos=1)
            assert await net.herald(bus) == 100
            assert await expected_seq(net.broker.port, net.observer, "alice", 100) == 100
            # and after a restart, from what alice stored
            assert alice.stop() == 0
            alice.start()
            await ready(alice)
            assert await net.herald(bus) == 150
        assert await expected_seq(net.broker.port, net.observer, "alice", 150) == 150
        assert await expected_seq(net.broker.port, net.observer, "bob", 150) == 150
        rejected = (await net.telemetry("alice"))["bus"]["rejected"]
        assert rejected.get("stale", 0) == 0


@pytest.mark.asyncio
async def test_applications_read_only_their_own_replies_and_post_only_as_themselves(tmp_path):
    """The application service's channels through the shipped ACL, with certificates for two
    applications and two nodes: each application receives only the replies addressed to it
    (even subscribed to every application's), only the addressed node reads a request, and an
    application cannot post a request under another's name (the broker denies it, so the node
    never sees it). The same holds for DATA between applications (``to/<application>``): only
    the addressee reads it, and nobody sends it in another's name. One connection per
    identity: the broker makes the certificate's CN the client id, so a second connection of
    the same identity would take the first one's place."""
    # No contract tap: no daemon runs here, and every payload is a b"{}" placeholder sent (in
    # the nodes' and applications' names) only to see where the ACL lets it go.
    net = Network(tmp_path)
    names = ("app1", "app2", "alice", "bob")
    got: dict[str, set[str]] = {n: set() for n in names}

    async def collect(name: str, client: aiomqtt.Client) -> None:
        async for m in client.messages:
            got[name].add(str(m.topic))

    with net.broker:
        async with contextlib.AsyncExitStack() as stack:
            clients = {n: await stack.enter_async_context(aiomqtt.Client(
                "127.0.0.1", net.broker.port, tls_context=tls(net.pki, n), identifier=n))
                for n in names}
            for c in clients.values():
                # every reply and request topic, not only its own: the ACL filters what it gets
                for f in ("qnet/v1/t/+/status", "qnet/v1/t/+/app/+", "qnet/v1/t/+/req/+",
                          "qnet/v1/t/+/to/+"):
                    await c.subscribe(f, qos=1)
            tasks = [asyncio.create_task(collect(n, c)) for n, c in clients.items()]
            try:
                for app in ("app1", "app2"):
                    await clients["alice"].publish(f"qnet/v1/t/alice/app/{app}", b"{}", qos=1)
                await clients["alice"].publish("qnet/v1/t/alice/status", b"{}", qos=1)
                await clients["app1"].publish("qnet/v1/t/app1/req/alice", b"{}", qos=1)
                await clients["app1"].publish("qnet/v1/t/app2/req/alice", b"{}", qos=1)  # denied
                await clients["app1"].publish("qnet/v1/t/app1/to/app2", b"{}", qos=1)
                await clients["app2"].publish("qnet/v1/t/app1/to/app2", b"{}", qos=1)  # denied
                await clients["alice"].publish("qnet/v1/t/alice/to/app1", b"{}", qos=1)
                want = {"app1": {"qnet/v1/t/alice/app/app1", "qnet/v1/t/alice/status",
                                 "qnet/v1/t/alice/to/app1"},
                        "app2": {"qnet/v1/t/alice/app/app2", "qnet/v1/t/alice/status",
                                 "qnet/v1/t/app1/to/app2"},
                        "alice": {"qnet/v1/t/alice/status", "qnet/v1/t/app1/req/alice"},
                        "bob": {"qnet/v1/t/alice/status"}}
                async with asyncio.timeout(30):
                    while any(not want[n] <= got[n] for n in names):
                        await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)   # anything the ACL let through by mistake is here now
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        assert got == want, got
        assert "Denied PUBLISH from app1" in net.broker.log_tail(400)
        assert "Denied PUBLISH from app2" in net.broker.log_tail(400)
