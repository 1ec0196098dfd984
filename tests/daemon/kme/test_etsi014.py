"""ETSI GS QKD 014 key delivery between two real KMEs (nodes alice and bob) over real TLS
sockets with client certificates, on real SQLite stores filled with the same keys, as
post-processing leaves them: a master SAE takes keys at its node, the slave SAE takes the same
bytes by id at the other node; every class of bad input is refused with its code and leaves both
stores as they were."""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import ssl
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qnode.daemon.kme.pki import DemoPki, write_demo_pki
from qnode.daemon.kme.server import MAX_BODY_BYTES, KmeServer
from qnode.daemon.kme.store import KeyStore
from qnode.daemon.runtime.kme_config import KmeConfig

from support.certs import Pki

SAES = [{"id": "sae-alice-1", "node": "alice"}, {"id": "sae-alice-2", "node": "alice"},
        {"id": "sae-bob-1", "node": "bob"}, {"id": "sae-carol-1", "node": "carol"}]
LINK = "alice-bob"
N_KEYS = 12          # half mastered by alice, half by bob
MAX_PER_REQUEST = 8  # more than either half: a request can exhaust the store


@dataclasses.dataclass
class Net:
    pki: DemoPki
    other_ca: DemoPki   # a second CA, trusted by nobody
    alice: KmeServer
    bob: KmeServer
    keys: list[tuple[uuid.UUID, bytes, str]]  # (key_ID, bytes, master node), oldest first

    def mastered_by(self, node: str) -> list[tuple[uuid.UUID, bytes]]:
        return [(k, b) for k, b, m in self.keys if m == node]


def _server(tmp: Path, pki: DemoPki, node: str) -> KmeServer:
    config = KmeConfig.from_table({
        "listen": "127.0.0.1:0", "cert": str(pki.server_cert), "key": str(pki.server_key),
        "ca": str(pki.ca), "store": str(tmp / f"{node}.sqlite"),
        "max_key_per_request": MAX_PER_REQUEST, "max_key_count": 100, "saes": SAES,
        "kme_ids": {"bob": "kme-bob-lab"}}, node)
    store = KeyStore(config.store, node, key_size_bits=config.key_size_bits,
                     max_key_count=config.max_key_count)
    return KmeServer(config, store)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    pki = write_demo_pki(tmp_path / "pki", saes=[*(s["id"] for s in SAES), "sae-stranger"])
    other = write_demo_pki(tmp_path / "other", saes=["sae-alice-1"])
    alice, bob = _server(tmp_path, pki, "alice"), _server(tmp_path, pki, "bob")
    keys = [(uuid.uuid4(), bytes([i + 1]) * 32, "alice" if i % 2 == 0 else "bob")
            for i in range(N_KEYS)]
    for key_id, material, master in keys:  # post-processing: the same keys at both ends
        alice.store.add(LINK, "bob", master, [(key_id, material)])
        bob.store.add(LINK, "alice", master, [(key_id, material)])
    yield Net(pki, other, alice, bob, keys)
    alice.store.close()
    bob.store.close()


@contextlib.asynccontextmanager
async def running(net: Net) -> AsyncIterator[None]:
    await net.alice.start()
    try:
        await net.bob.start()
        try:
            yield
        finally:
            await net.bob.stop()
    finally:
        await net.alice.stop()


def client_ssl(pki: DemoPki, sae: str | None, trust: DemoPki | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=(trust or pki).ca)
    if sae is not None:
        ctx.load_cert_chain(*pki.clients[sae])
    return ctx


async def call(net: Net, server: KmeServer, sae: str, method: str, path: str,
               pki: DemoPki | None = None, **kwargs: Any) -> tuple[int, Any]:
    """(status, JSON body) of one request by ``sae`` (its certificate from ``pki``)."""
    ctx = client_ssl(pki or net.pki, sae, trust=net.pki)
    url = f"https://127.0.0.1:{server.bound_port}/api/v1/keys/{path}"
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.request(method, url, ssl=ctx, **kwargs) as response:
            return response.status, await response.json(content_type=None)


def decoded(body: dict[str, Any]) -> list[tuple[uuid.UUID, bytes]]:
    return [(uuid.UUID(k["key_ID"]), base64.b64decode(k["key"])) for k in body["keys"]]


def state(net: Net) -> tuple[int, ...]:
    """Everything a refused request must leave as it was."""
    out = []
    for server, peer in ((net.alice, "bob"), (net.bob, "alice")):
        s = server.store
        out += [s.count(peer, "alice"), s.count(peer, "bob"), s.delivered_count(),
                s.delivered_total]
    return tuple(out)


# -- the round trip --------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_post_enc_at_alice_then_post_dec_at_bob_gives_the_same_keys(net):
    async with running(net):
        status, body = await call(net, net.alice, "sae-alice-1", "POST",
                                  "sae-bob-1/enc_keys", json={"number": 3, "size": 256})
        assert status == 200
        enc = decoded(body)
        assert enc == net.mastered_by("alice")[:3]  # the oldest first
        ids = [{"key_ID": str(k)} for k, _ in enc]
        status, body = await call(net, net.bob, "sae-bob-1", "POST", "sae-alice-1/dec_keys",
                                  json={"key_IDs": ids})
        assert status == 200 and decoded(body) == enc
    assert net.alice.store.count("bob", "alice") == N_KEYS // 2 - 3
    assert net.bob.store.count("alice", "alice") == N_KEYS // 2 - 3
    assert net.alice.served["enc_keys"] == 1 and net.bob.served["dec_keys"] == 1


@pytest.mark.asyncio
async def test_get_variants_and_keys_mastered_by_bob_flow_the_other_way(net):
    async with running(net):
        status, body = await call(net, net.bob, "sae-bob-1", "GET",
                                  "sae-alice-2/enc_keys?number=2&size=256")
        assert status == 200
        enc = decoded(body)
        assert enc == net.mastered_by("bob")[:2]
        status, body = await call(net, net.alice, "sae-alice-2", "GET",
                                  f"sae-bob-1/dec_keys?key_ID={enc[0][0]}")
        assert status == 200 and decoded(body) == enc[:1]
        # the default number is 1; several key_ID parameters are accepted in one GET
        status, body = await call(net, net.bob, "sae-bob-1", "GET", "sae-alice-1/enc_keys")
        assert status == 200 and decoded(body) == net.mastered_by("bob")[2:3]
        query = "&".join(f"key_ID={k}" for k in (enc[1][0], decoded(body)[0][0]))
        status, body = await call(net, net.alice, "sae-alice-1", "GET",
                                  f"sae-bob-1/dec_keys?{query}")
        assert status == 200 and decoded(body) == [enc[1], *net.mastered_by("bob")[2:3]]


@pytest.mark.asyncio
async def test_status_describes_the_pair_and_counts_the_keys_served_here(net):
    async with running(net):
        status, body = await call(net, net.alice, "sae-alice-1", "GET", "sae-bob-1/status")
        assert status == 200
        assert body == {"source_KME_ID": "kme-alice", "target_KME_ID": "kme-bob-lab",
                        "master_SAE_ID": "sae-alice-1", "slave_SAE_ID": "sae-bob-1",
                        "key_size": 256, "stored_key_count": N_KEYS // 2,
                        "max_key_count": 100, "max_key_per_request": MAX_PER_REQUEST,
                        "max_key_size": 256, "min_key_size": 256, "max_SAE_ID_count": 0}
        await call(net, net.alice, "sae-alice-1", "POST", "sae-bob-1/enc_keys",
                   json={"number": 2})
        status, body = await call(net, net.alice, "sae-alice-1", "GET", "sae-bob-1/status")
        assert body["stored_key_count"] == N_KEYS // 2 - 2
        status, body = await call(net, net.bob, "sae-bob-1", "GET", "sae-alice-1/status")
        assert (body["source_KME_ID"], body["target_KME_ID"]) == ("kme-bob-lab", "kme-alice")
        assert body["stored_key_count"] == N_KEYS // 2


# -- bad input -------------------------------------------------------------------------------

UNKNOWN_ID = str(uuid.uuid4())
BAD_INPUT = [
    # (server, caller, method, path, request kwargs, status, reason)
    ("alice", "sae-alice-1", "GET", "sae-nobody/enc_keys", {}, 400, "unknown_sae"),
    ("alice", "sae-alice-1", "GET", "sae-nobody/status", {}, 400, "unknown_sae"),
    ("bob", "sae-bob-1", "POST", "sae-nobody/dec_keys",
     {"json": {"key_IDs": [{"key_ID": UNKNOWN_ID}]}}, 400, "unknown_sae"),
    ("alice", "sae-alice-1", "GET", "sae-alice-2/enc_keys", {}, 400, "sae_hosted_here"),
    ("alice", "sae-alice-1", "GET", "sae-bob-1/enc_keys?size=255", {}, 400,
     "size_not_multiple_of_8"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"json": {"size": 100}}, 400,
     "size_not_multiple_of_8"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"json": {"size": 128}}, 400,
     "size_unsupported"),
    ("alice", "sae-alice-1", "GET", "sae-bob-1/enc_keys?number=0", {}, 400,
     "number_out_of_range"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys",
     {"json": {"number": MAX_PER_REQUEST + 1}}, 400, "number_out_of_range"),
    ("alice", "sae-alice-1", "GET", "sae-bob-1/enc_keys?number=two", {}, 400,
     "number_not_integer"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"json": {"number": 1.5}}, 400,
     "number_not_integer"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"json": {"number": True}}, 400,
     "number_not_integer"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"json": {"number": "2"}}, 400,
     "number_not_integer"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"json": {"size": 256.0}}, 400,
     "size_not_integer"),
    ("alice", "sae-alice-1", "GET", "sae-bob-1/enc_keys?size=256.0", {}, 400,
     "size_not_integer"),
    ("alice", "sae-alice-1", "GET", "sae-bob-1/enc_keys?number=1&number=2", {}, 400,
     "repeated_parameter"),
    ("alice", "sae-alice-1", "GET", "sae-bob-1/enc_keys?nubmer=2", {}, 400,
     "unknown_parameter"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"data": b"{\"number\": 1"}, 400,
     "malformed_json"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"json": [1]}, 400,
     "malformed_json"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"data": b"[" * 5000}, 400,
     "malformed_json"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys",
     {"json": {"extension_mandatory": [{"abc_route_type": "direct"}]}}, 400,
     "extension_unsupported"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys",
     {"json": {"additional_slave_SAE_IDs": ["sae-carol-1"]}}, 400,
     "additional_slave_unsupported"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys",
     {"data": b"{\"number\": 1, \"pad\": \"" + b"x" * MAX_BODY_BYTES + b"\"}"}, 400,
     "body_too_large"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/enc_keys", {"json": {"number": 7}}, 503,
     "keys_exhausted"),
    ("bob", "sae-bob-1", "POST", "sae-alice-1/dec_keys", {"json": {}}, 400, "missing_key_id"),
    ("bob", "sae-bob-1", "POST", "sae-alice-1/dec_keys", {"json": {"key_IDs": []}}, 400,
     "missing_key_id"),
    ("bob", "sae-bob-1", "POST", "sae-alice-1/dec_keys", {"json": {"key_IDs": [{}]}}, 400,
     "missing_key_id"),
    ("bob", "sae-bob-1", "GET", "sae-alice-1/dec_keys", {}, 400, "missing_key_id"),
    ("bob", "sae-bob-1", "GET", "sae-alice-1/dec_keys?key_ID=not-a-uuid", {}, 400,
     "invalid_key_id"),
    ("bob", "sae-bob-1", "POST", "sae-alice-1/dec_keys",
     {"json": {"key_IDs": [{"key_ID": 42}]}}, 400, "invalid_key_id"),
    ("bob", "sae-bob-1", "POST", "sae-alice-1/dec_keys",
     {"json": {"key_IDs": [{"key_ID": UNKNOWN_ID}] * 2}}, 400, "duplicate_key_id"),
    ("bob", "sae-bob-1", "POST", "sae-alice-1/dec_keys",
     {"json": {"key_IDs": [{"key_ID": str(uuid.uuid4())}
                           for _ in range(MAX_PER_REQUEST + 1)]}}, 400, "too_many_key_ids"),
    ("bob", "sae-bob-1", "GET", f"sae-alice-1/dec_keys?key_ID={UNKNOWN_ID}", {}, 400,
     "unknown_key"),
    ("alice", "sae-stranger", "GET", "sae-bob-1/enc_keys", {}, 401, "unknown_caller"),
    ("alice", "sae-bob-1", "GET", "sae-alice-1/dec_keys?key_ID=" + UNKNOWN_ID, {}, 401,
     "caller_not_hosted_here"),
    ("alice", "sae-carol-1", "GET", "sae-bob-1/status", {}, 401, "caller_not_hosted_here"),
    ("alice", "sae-alice-1", "POST", "sae-bob-1/status", {}, 405, "http_405"),
    ("alice", "sae-alice-1", "GET", "sae-bob-1/keys", {}, 404, "http_404"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("server", "sae", "method", "path", "kwargs", "code", "reason"),
                         BAD_INPUT, ids=[f"{case[-1]}-{i}" for i, case in enumerate(BAD_INPUT)])
async def test_bad_input_is_refused_and_changes_nothing(net, server, sae, method, path, kwargs,
                                                        code, reason):
    kme = getattr(net, server)
    before = state(net)
    async with running(net):
        status, body = await call(net, kme, sae, method, path, **kwargs)
    assert (status, body["details"][0]["reason"]) == (code, reason), body
    assert isinstance(body["message"], str) and body["message"]
    assert kme.rejected == {reason: 1} and not kme.served
    assert state(net) == before


@pytest.mark.asyncio
async def test_keys_are_refused_by_id_when_delivered_or_served_elsewhere(net):
    async with running(net):
        _, body = await call(net, net.alice, "sae-alice-1", "POST", "sae-bob-1/enc_keys",
                             json={"number": 1})
        key_id = body["keys"][0]["key_ID"]
        ids = {"key_IDs": [{"key_ID": key_id}]}
        status, _ = await call(net, net.bob, "sae-bob-1", "POST", "sae-alice-1/dec_keys",
                               json=ids)
        assert status == 200
        before = state(net)
        status, body = await call(net, net.bob, "sae-bob-1", "POST", "sae-alice-1/dec_keys",
                                  json=ids)
        assert status == 400 and "already delivered" in body["message"]
        assert body["details"] == [{"reason": "already_delivered", "key_ID": key_id}]
        # at alice the key went out through enc_keys: never again through dec_keys either
        status, body = await call(net, net.alice, "sae-alice-1", "POST",
                                  "sae-bob-1/dec_keys", json=ids)
        assert (status, body["details"][0]["reason"]) == (400, "already_delivered")
        # a key alice masters is served at alice through enc_keys only, not through dec_keys
        theirs = str(net.mastered_by("alice")[1][0])
        status, body = await call(net, net.alice, "sae-alice-1", "GET",
                                  f"sae-bob-1/dec_keys?key_ID={theirs}")
        assert (status, body["details"][0]["reason"]) == (400, "not_for_caller")
        # one bad id among good ones: none is taken
        good = str(net.mastered_by("alice")[1][0])
        status, body = await call(net, net.bob, "sae-bob-1", "POST", "sae-alice-1/dec_keys",
                                  json={"key_IDs": [{"key_ID": good},
                                                    {"key_ID": str(uuid.uuid4())}]})
        assert (status, body["details"][0]["reason"]) == (400, "unknown_key")
        assert state(net) == before


@pytest.mark.asyncio
async def test_an_empty_extension_list_is_no_extension(net):
    async with running(net):
        status, body = await call(net, net.alice, "sae-alice-1", "POST", "sae-bob-1/enc_keys",
                                  json={"number": 1, "size": 256, "extension_mandatory": [],
                                        "extension_optional": [{"x": 1}],
                                        "additional_slave_SAE_IDs": []})
    assert status == 200 and len(body["keys"]) == 1


# -- who may connect -------------------------------------------------------------------------

async def _connect(net: Net, ctx: ssl.SSLContext) -> None:
    url = f"https://127.0.0.1:{net.alice.bound_port}/api/v1/keys/sae-bob-1/status"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        async with session.get(url, ssl=ctx) as response:
            await response.read()


# Under TLS 1.2 the handshake itself fails; under TLS 1.3 the client has sent its request
# when the server's alert arrives, so the client sees the connection closed instead.
TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.asyncio
@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
async def test_a_client_without_a_certificate_fails_the_handshake(net, version):
    ctx = client_ssl(net.pki, None)
    ctx.maximum_version = version
    async with running(net):
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await _connect(net, ctx)
    assert not net.alice.served and not net.alice.rejected


@pytest.mark.asyncio
@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
async def test_a_certificate_from_another_ca_fails_the_handshake(net, version):
    ctx = client_ssl(net.other_ca, "sae-alice-1", trust=net.pki)
    ctx.maximum_version = version
    async with running(net):
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await _connect(net, ctx)
        # the same SAE with the right certificate gets in
        status, _ = await call(net, net.alice, "sae-alice-1", "GET", "sae-bob-1/status")
    assert status == 200 and net.alice.served["status"] == 1


# -- logs ------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_refusals_are_logged_once_per_reason_without_key_material(net, caplog):
    caplog.set_level(logging.INFO, logger="qnode.kme")
    async with running(net):
        for _ in range(3):
            await call(net, net.alice, "sae-alice-1", "GET", "sae-bob-1/enc_keys?size=7")
        await call(net, net.alice, "sae-stranger", "GET", "sae-bob-1/status")
        status, body = await call(net, net.alice, "sae-alice-1", "POST", "sae-bob-1/enc_keys",
                                  json={"number": 2})
        assert status == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.reason for r in warnings] == ["size_not_multiple_of_8", "unknown_caller"]
    assert not any(r.exc_info for r in warnings)
    assert net.alice.rejected == {"size_not_multiple_of_8": 3, "unknown_caller": 1}
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    for key in body["keys"]:
        material = base64.b64decode(key["key"])
        assert key["key"] not in text and material.hex() not in text
        assert repr(material)[2:-1] not in text


# -- configuration and the demo PKI ----------------------------------------------------------

MINIMAL = {"cert": "kme.crt", "key": "kme.key", "ca": "ca.crt", "store": "keys.sqlite",
           "saes": SAES}


def test_the_config_defaults():
    config = KmeConfig.from_table(MINIMAL, "alice")
    assert (config.host, config.port, config.kme_id) == ("127.0.0.1", 8443, "kme-alice")
    assert (config.key_size_bits, config.max_key_count, config.max_key_per_request) \
        == (256, 10_000, 128)
    assert config.node_of("sae-bob-1") == "bob" and config.node_of("sae-x") is None
    assert config.kme_id_of("carol") == "kme-carol"
    assert config.local_saes() == ["sae-alice-1", "sae-alice-2"]
    v6 = KmeConfig.from_table({**MINIMAL, "listen": "[::1]:0", "kme_ids": {"alice": "k-a"}},
                              "alice")
    assert (v6.host, v6.port, v6.kme_id) == ("::1", 0, "k-a")


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "red"}, "unknown key"),
    ({"cert": None}, "kme.cert is required"),
    ({"listen": "8443"}, "kme.listen"),
    ({"listen": "::1:8443"}, "kme.listen"),
    ({"listen": "host:99999"}, "kme.listen"),
    ({"key_size_bits": 100}, "multiple of 8"),
    ({"key_size_bits": "256"}, "kme.key_size_bits must be an integer"),
    ({"max_key_per_request": 0}, "kme.max_key_per_request"),
    ({"max_key_count": 10, "max_key_per_request": 11}, "kme.max_key_per_request"),
    ({"saes": []}, "kme.saes"),
    ({"saes": [*SAES, {"id": "sae-bob-1", "node": "bob"}]}, "listed twice"),
    ({"saes": [{"id": "sae 1", "node": "alice"}]}, r"kme.saes\[0\].id"),
    ({"saes": [{"id": "sae-1", "node": "a/b"}]}, r"kme.saes\[0\].node"),
    ({"saes": [{"id": "sae-1"}]}, r"kme.saes\[0\]"),
    ({"kme_id": "k1", "kme_ids": {"alice": "k2"}}, "differs"),
])
def test_the_config_names_what_is_wrong(change, message):
    table = {k: v for k, v in {**MINIMAL, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        KmeConfig.from_table(table, "alice")


def test_a_server_refuses_a_store_of_another_node_or_size(net):
    with pytest.raises(ValueError, match="node 'bob'"):
        KmeServer(net.alice.config, net.bob.store)
    other = dataclasses.replace(net.alice.config, key_size_bits=128)
    with pytest.raises(ValueError, match="256 bits"):
        KmeServer(other, net.alice.store)


def test_the_demo_pki_keeps_its_keys_private(net):
    for key in (net.pki.server_key, *(k for _, k in net.pki.clients.values())):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(net.pki.ca.stat().st_mode) == 0o644
    assert not list(net.pki.ca.parent.glob("ca.key"))  # the CA's key is never written


@pytest.mark.asyncio
async def test_certificates_made_with_openssl_work_too(tmp_path):
    """The server takes any PKI: here the tests' openssl-made one (RSA, no key usages)."""
    pki = Pki(tmp_path / "openssl")
    cert, key = pki.client("sae-alice-1")
    config = KmeConfig.from_table({"listen": "127.0.0.1:0", "cert": str(pki.server_cert),
                                   "key": str(pki.server_key), "ca": str(pki.ca),
                                   "store": str(tmp_path / "k.sqlite"), "saes": SAES}, "alice")
    with KeyStore(config.store, "alice") as store:
        store.add(LINK, "bob", "alice", [(uuid.uuid4(), b"\x11" * 32)])
        server = KmeServer(config, store)
        await server.start()
        try:
            ctx = ssl.create_default_context(cafile=pki.ca)
            ctx.load_cert_chain(cert, key)
            url = f"https://127.0.0.1:{server.bound_port}/api/v1/keys/sae-bob-1/enc_keys"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
                async with s.get(url, ssl=ctx) as response:
                    body = await response.json()
        finally:
            await server.stop()
    assert base64.b64decode(body["keys"][0]["key"]) == b"\x11" * 32
