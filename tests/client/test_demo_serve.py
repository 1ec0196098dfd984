"""``qnode demo --serve`` as a user runs it: the simulated network with applications until
SIGINT, a connection file once it serves, which the client takes as it is to get pairs over the
path alice – repeater – bob, and a key consumer to take the M link's keys from both analyzers'
KMEs (ETSI GS QKD 014, the demo SAEs' certificates); a second server refuses the same file;
SIGINT stops everything cleanly and removes the file."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from qnode.client import ConnectionInfo, NodeClient, Pair, PairStream, RequestError

from support.certs import sae_context

WAIT_S = 60.0


def _qnode(*args: str) -> list[str]:
    return [sys.executable, "-m", "qnode.daemon.cli", *args]


async def _pairs_over_the_path(info: ConnectionInfo) -> tuple[list[Pair], list[Pair]]:
    async with NodeClient.from_connection(info, "alice-app") as alice, \
            NodeClient.from_connection(info, "bob-app") as bob:
        async with bob.receive(7) as theirs:
            stream: PairStream | None = None
            # "not yet": bob's LISTEN not announced to alice yet, or the path's supply over
            # the last seconds too low (swapped pairs come in bursts)
            for _ in range(120):
                stream = alice.create_keep("bob", 3, purpose=7, timeout_s=WAIT_S)
                try:
                    await stream.start()
                    break
                except RequestError as exc:
                    assert exc.code in ("no_listener", "rate_unreachable"), exc
                    await asyncio.sleep(0.5)
            assert stream is not None
            mine = [p async for p in stream]
            far: list[Pair] = []
            try:
                while len(far) < len(mine):
                    far.append(await asyncio.wait_for(anext(theirs), 10.0))
            except TimeoutError:
                pass
    return mine, far


async def _keys_from_both_kmes(kme: dict) -> bool:
    """The connection file's KMEs and SAEs, as a key consumer takes them: sae-a takes a key at
    analyzer-a (enc_keys), sae-b the same key by id at analyzer-b (dec_keys)."""
    def tls(sae: str) -> ssl.SSLContext:
        return sae_context(kme["ca_file"], kme["saes"][sae]["client_cert"],
                           kme["saes"][sae]["client_key"])
    a = f"{kme['nodes'][kme['saes']['sae-a']['node']]}/api/v1/keys/sae-b"
    b = f"{kme['nodes'][kme['saes']['sae-b']['node']]}/api/v1/keys/sae-a"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for _ in range(120):          # the link's first block may still be on its way
            async with http.get(f"{a}/status", ssl=tls("sae-a")) as r:
                if (await r.json())["stored_key_count"] > 0:
                    break
            await asyncio.sleep(1.0)
        async with http.post(f"{a}/enc_keys", json={"number": 1}, ssl=tls("sae-a")) as r:
            enc = await r.json()
            assert r.status == 200, enc
        async with http.post(f"{b}/dec_keys", json={"key_IDs": [
                {"key_ID": enc["keys"][0]["key_ID"]}]}, ssl=tls("sae-b")) as r:
            dec = await r.json()
            assert r.status == 200, dec
    return dec["keys"][0]["key"] == enc["keys"][0]["key"]


def test_demo_serve_writes_a_connection_file_that_the_client_uses(tmp_path: Path):
    connection = tmp_path / "qnode-demo.json"
    out_path = tmp_path / "serve.out"
    with open(out_path, "w") as out:
        # its own process group: if the test fails, the daemons and the bench it started go
        # with it instead of loading the host for every later test
        proc = subprocess.Popen(_qnode("demo", "--serve", "--connection", str(connection),
                                       "--report", str(tmp_path / "report")),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not connection.exists():
            assert proc.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.5)
        info = ConnectionInfo.load(connection)
        assert info.pid == proc.pid and info.network == "demo"
        assert {"alice", "bob", "repeater"} <= set(info.nodes)
        assert info.application("alice-app").node == "alice"
        assert info.application("bob-app").purposes == (7,)
        assert connection.stat().st_mode & 0o077 == 0

        second = subprocess.run(_qnode("demo", "--serve", "--connection", str(connection)),
                                capture_output=True, text=True, timeout=WAIT_S)
        assert second.returncode == 1 and "belongs to a running" in second.stderr

        assert asyncio.run(_keys_from_both_kmes(json.loads(connection.read_text())["kme"]))
        mine, far = asyncio.run(_pairs_over_the_path(info))
        assert len(mine) == 3 and {p.pool for p in mine} == {"alice-bob"}
        assert all(p.remote == "bob" and p.qubit is not None for p in mine)
        # bob's application gets the same pairs (a path pair that never reached bob is the
        # node's to report, not the client's: every pair bob got is one alice got)
        assert far and {(p.pair_id, p.bell_state) for p in far} <= {
            (p.pair_id, p.bell_state) for p in mine}, (mine, far)
        assert all(p.remote_application == "alice-app" for p in far)

        proc.send_signal(signal.SIGINT)
        code = proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:            # a failure above: stop it as Ctrl-C would
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)   # whatever of its group is left
        proc.wait()
    text = out_path.read_text()
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                     for p in sorted((tmp_path / "report" / "logs").glob("*.log")))
    assert code == 0, text + logs
    assert "connection file removed" in text and not connection.exists()
    print(f"alice {[(p.pair_id, p.fidelity) for p in mine]}; bob got {len(far)} of them")
