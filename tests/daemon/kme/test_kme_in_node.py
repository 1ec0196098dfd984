"""A node with ``[kme]`` serves its key store over ETSI GS QKD 014: a real ``qnode run``
process, a real broker, HTTPS with client certificates, and the KME's figures in telemetry."""
from __future__ import annotations

import re
import ssl
import subprocess
import sys
import uuid

import aiohttp
import pytest

from qnode.daemon.kme.pki import write_demo_pki
from qnode.daemon.kme.store import KeyStore

from support.certs import sae_context
from support.daemon_harness import Daemon, node_config
from support.mosquitto import Mosquitto


def _client(pki, sae: str) -> ssl.SSLContext:
    return sae_context(pki.ca, *pki.clients[sae])


@pytest.mark.asyncio
async def test_a_node_serves_its_keys_through_its_kme(tmp_path):
    pki = write_demo_pki(tmp_path / "pki", saes=["sae-a", "sae-b"])
    store_path = tmp_path / "a-keys.sqlite"
    keys = [(uuid.uuid4(), bytes([i]) * 32) for i in range(4)]
    with KeyStore(store_path, "a") as store:       # as post-processing would have left it
        assert store.add("a-b", "b", "a", keys) == 4
    kme = (f'[kme]\nlisten = "127.0.0.1:0"\ncert = "{pki.server_cert}"\n'
           f'key = "{pki.server_key}"\nca = "{pki.ca}"\nstore = "{store_path}"\n'
           'saes = [{id = "sae-a", node = "a"}, {id = "sae-b", node = "b"}]\n')
    with Mosquitto(tmp_path / "mosquitto") as broker:
        config = node_config(tmp_path / "a.toml", node="a", roles=["memory"],
                             broker_port=broker.port, state_dir=tmp_path / "state", body=kme)
        with Daemon(config) as node:
            node.wait_for_log("KME listening", 60)
            port = int(re.search(r"KME listening.*port=(\d+)", node.log()).group(1))
            base = f"https://127.0.0.1:{port}/api/v1/keys/sae-b"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                async with http.get(f"{base}/status", ssl=_client(pki, "sae-a")) as r:
                    status = await r.json()
                    assert r.status == 200, status
                assert status["stored_key_count"] == 4 and status["key_size"] == 256
                assert status["source_KME_ID"] == "kme-a"
                async with http.post(f"{base}/enc_keys", json={"number": 3},
                                     ssl=_client(pki, "sae-a")) as r:
                    got = await r.json()
                    assert r.status == 200, got
                assert [k["key_ID"] for k in got["keys"]] == [str(k) for k, _ in keys[:3]]
                # the SAE at the other node cannot take keys from this node's enc side
                async with http.post(f"{base}/enc_keys", json={"number": 1},
                                     ssl=_client(pki, "sae-b")) as r:
                    assert r.status == 401
            assert node.stop() == 0
        assert "key=" not in node.log() and "AQEB" not in node.log()
    with KeyStore(store_path, "a") as store:        # delivered once: one key is left
        assert store.count("b", "a") == 1


def test_a_key_store_of_another_node_stops_the_start_with_a_config_error(tmp_path):
    """A user's mistake (the store file of another node) is one line naming the key, exit 2,
    no traceback."""
    pki = write_demo_pki(tmp_path / "pki", saes=["sae-a"])
    store_path = tmp_path / "keys.sqlite"
    KeyStore(store_path, "b").close()
    config = node_config(
        tmp_path / "a.toml", node="a", roles=["memory"], broker_port=1,
        state_dir=tmp_path / "state",
        body=(f'[kme]\nlisten = "127.0.0.1:0"\ncert = "{pki.server_cert}"\n'
              f'key = "{pki.server_key}"\nca = "{pki.ca}"\nstore = "{store_path}"\n'
              'saes = [{id = "sae-a", node = "a"}]\n'))
    run = subprocess.run([sys.executable, "-m", "qnode.daemon.cli", "run", "--config",
                          str(config)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "config error" in run.stderr and "kme.store" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
