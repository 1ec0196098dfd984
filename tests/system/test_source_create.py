"""A real source daemon serves its M link's CREATEs (qnode.daemon.roles.source,
qnode.daemon.quantum.feu).

hal_sim's bench serves the iBeam pump and the TC200 oven on ptys; ``qnode run`` drives them
through the real drivers and serves CREATEs on ``cmd`` over a real mosquitto. The test plays an
application at analyzer-a holding the link key: a signed CREATE gets ACK on ``reply/app`` and
the pump twin ends at the power the FEU chooses; an unattainable fidelity gets ERR UNSUPP and
leaves the pump alone; malformed, unsigned and forged requests are counted, never answered,
and the daemon keeps serving.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from qnode.daemon.bus.client import NodeBus
from qnode.daemon.bus.envelope import decode
from qnode.daemon.bus.telemetry import unknown_fields
from qnode.daemon.bus.topics import Topics, parse_topic
from qnode.daemon.linklayer import Create
from qnode.daemon.quantum.feu import FidelityEstimationUnit
from qnode.hal_sim import (
    bench,
)

from support.daemon_harness import Daemon, node_config, running, write_key

KEY = b"0123456789abcdef0123456789abcdef"
START_MW = 10.0
BENCH = f"""
[bench]
name = "source-bench"

[[instrument]]
name = "pump"
kind = "ibeam"
serve = "pty"
startup = ["la on", "ch 2 pow {START_MW * 1000:.0f} mic", "en 2"]
settle_s = 60

[[instrument]]
name = "oven"
kind = "tc200"
serve = "pty"
startup = ["tset=35.0", "ens"]
settle_s = 1200
"""
# the source's calibrated model: 10⁶ pairs/s per mW, 30 % per side, w = 1 ns (τ = 2w + 1 ps)
FEU = FidelityEstimationUnit(brightness_hz_per_mw=1e6, efficiency_a=0.3, efficiency_b=0.3,
                             window_ps=2001, visibility=0.95, max_power_mw=150.0,
                             min_power_mw=1.0, dark_a_hz=1000.0, dark_b_hz=1000.0)
SOURCE = f"""
[source]
pump_power_mw = {START_MW}
oven_temperature_c = 35.0
link = "m-ab"
ends = ["analyzer-a", "analyzer-b"]
hmac_key_file = "{{key}}"
brightness_hz_per_mw = 1e6
efficiency = [0.3, 0.3]
dark_count_rate_hz = [1000.0, 1000.0]
window_ps = 1000
visibility = 0.95
min_pump_mw = 1.0
max_pump_mw = 150.0
"""


def _wait_power(twin, target_mw: float, timeout_s: float = 5.0) -> float:
    deadline = time.monotonic() + timeout_s
    while abs(twin.power_mw - target_mw) > 1e-3 and time.monotonic() < deadline:
        time.sleep(0.05)                              # the pump's power ramp (τ = 50 ms)
    return twin.power_mw


async def _telemetry(port: int, node: str, until, timeout_s: float = 10.0) -> dict:
    """The first telemetry record of ``node`` for which ``until(record)`` holds."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"qnet/v1/t/{node}/telemetry")
        async with asyncio.timeout(timeout_s):
            async for m in client.messages:
                rec = decode(bytes(m.payload), parse_topic(str(m.topic))).body
                if until(rec):
                    return dict(rec)
    raise AssertionError("unreachable")


@pytest.fixture
def tap(broker):
    """The contract tap on the broker (the hostile CREATEs are the app's: not judged)."""
    yield broker.tap("t", ("source",))
    broker.close_taps()


@pytest.mark.asyncio
async def test_a_source_daemon_chooses_the_pump_power_for_a_create(tmp_path, broker, tap):
    (tmp_path / "bench.toml").write_text(BENCH)
    key_file = tmp_path / "m-ab.key"
    write_key(key_file, KEY)
    with bench.Bench.from_file(tmp_path / "bench.toml") as b:
        addr = b.addresses()
        twin = b.devices["pump"]
        cfg = node_config(
            tmp_path / "source.toml", node="source", roles=["source"],
            broker_port=broker.port, state_dir=tmp_path / "state", telemetry_interval_s=0.3,
            body=f"[instruments.pump]\nkind = \"ibeam\"\naddress = \"{addr['pump']}\"\n\n"
                 f"[instruments.oven]\nkind = \"tc200\"\naddress = \"{addr['oven']}\"\n"
                 + SOURCE.format(key=key_file))
        with Daemon(cfg) as src:
            await asyncio.to_thread(src.wait_for_log, "node ready")
            assert await asyncio.to_thread(_wait_power, twin, START_MW) == pytest.approx(START_MW)

            app = NodeBus(Topics("t", "app"), "127.0.0.1", broker.port)
            replies: asyncio.Queue = asyncio.Queue()

            async def on_reply(topic, msg) -> None:
                await replies.put(msg)

            app.on("reply", on_reply)
            app.subscribe("qnet/v1/t/source/reply/app")
            cmd = "qnet/v1/t/source/cmd"
            async with running(app):
                # 1. a signed CREATE the source can serve: ACK, pump at the FEU's power
                app.publish(cmd, "CREATE", Create("analyzer-b", 0.9, 0, 7, 1000, tpe="M")
                            .to_dict(), sign_with=KEY)
                ack = await asyncio.wait_for(replies.get(), 10)
                chosen = FEU.choose_power(0.9)
                assert chosen is not None and 1.0 < chosen < 150.0
                power = await asyncio.to_thread(_wait_power, twin, chosen)
                # 2. beyond the source's own fidelity (1 + 3·0.95)/4 = 0.9625: ERR UNSUPP
                app.publish(cmd, "CREATE", Create("analyzer-b", 0.97, 0, 7, 10, tpe="M")
                            .to_dict(), sign_with=KEY)
                unsupp = await asyncio.wait_for(replies.get(), 10)
                # 3. hostile input: malformed, unsigned, forged, wrong command: no answer
                app.publish(cmd, "CREATE", {"remote_node": "analyzer-b", "number": "many"},
                            sign_with=KEY)
                app.publish(cmd, "CREATE", Create("analyzer-b", 0.5, 0, 7, 1, tpe="M")
                            .to_dict())
                app.publish(cmd, "CREATE", Create("analyzer-b", 0.5, 0, 7, 1, tpe="M")
                            .to_dict(), sign_with=b"not the key" * 3)
                app.publish(cmd, "REBOOT", {}, sign_with=KEY)
                # 4. still serving: a laxer minimum raises the power (highest rate first)
                app.publish(cmd, "CREATE", Create("analyzer-a", 0.8, 0, 7, 1, tpe="M")
                            .to_dict(), sign_with=KEY)
                ack2 = await asyncio.wait_for(replies.get(), 10)
                chosen2 = FEU.choose_power(0.8)
                power2 = await asyncio.to_thread(_wait_power, twin, chosen2)
                # 5. a K request is not this source's business
                app.publish(cmd, "CREATE", Create("analyzer-b", 0.5, 0, 7, 1, tpe="K")
                            .to_dict(), sign_with=KEY)
                not_mine = await asyncio.wait_for(replies.get(), 10)
                await asyncio.sleep(0.3)
                assert replies.empty(), replies.get_nowait()
            # the health check (every 5 s) reads the pump back after its ramp
            tel = await _telemetry(
                broker.port, "source",
                lambda r: (r.get("link_rejected", {}).get("bad_body")
                           and abs(r.get("source_pump_power_mw", 0) - chosen2) < 0.01))
            assert src.proc.poll() is None                  # alive after all of it
            code = src.stop()
        log = src.log()
        broker.check_taps()
    assert code == 0, log[-3000:]
    assert ack.type == "ACK" and isinstance(ack.body["create_id"], int)
    assert power == pytest.approx(chosen, abs=1e-3)          # the twin emits what was chosen
    assert unsupp.type == "ERR" and unsupp.body["code"] == "UNSUPP"
    assert ack2.type == "ACK" and ack2.body["create_id"] != ack.body["create_id"]
    assert chosen2 > chosen and power2 == pytest.approx(chosen2, abs=1e-3)
    assert not_mine.type == "ERR" and not_mine.body["code"] == "UNSUPP"
    # counted by reason; the forged one never passed the bus
    assert tel["link_rejected"] == {"bad_body": 1, "unsigned": 1, "unknown_command": 1}, tel
    assert tel["bus"]["rejected"].get("bad_signature") == 1, tel["bus"]
    assert tel["source_creates_total"] == 4 and tel["source_creates_unsupp_total"] == 2
    assert unknown_fields(tel) == []                        # the schema names every field
    assert tel["source_feu_power_mw"] == pytest.approx(chosen2)
    assert tel["source_pump_set_point_mw"] == pytest.approx(chosen2)
    rate, fid = FEU.predict(chosen2)
    assert tel["source_feu_rate_hz"] == pytest.approx(rate)
    assert tel["source_feu_fidelity"] == pytest.approx(fid) and fid >= 0.8 - 1e-9
    assert tel["source_pump_power_mw"] == pytest.approx(chosen2, abs=0.01)
    # one structured line per decision
    served = [ln for ln in log.splitlines() if 'msg="CREATE served"' in ln]
    assert len(served) == 2 and f"power_mw={round(chosen, 6)}" in served[0], served
    assert "predicted_fidelity=" in served[0] and "predicted_rate_hz=" in served[0]
    assert "code=UNSUPP" in log and "reason=bad_body" in log and "reason=unsigned" in log
    assert json.dumps(tel)  # a JSON record throughout


# ------------------------------------------------------------------ [source] config

SOURCE_NODE = """
[node]
id = "source"
network = "t"
roles = ["source"]

[broker]
url = "mqtt://127.0.0.1:1883"

[instruments.pump]
kind = "ibeam"
address = "/dev/ttyUSB0"

[instruments.oven]
kind = "tc200"
address = "/dev/ttyUSB1"
"""
FEU_KEYS = """[source]
link = "m-ab"
brightness_hz_per_mw = 1e6
efficiency = [0.3, 0.25]
window_ps = 1000
visibility = 0.95
max_pump_mw = 150.0
"""


def test_the_source_table_builds_the_feu():
    from qnode.daemon.runtime.config import parse_config

    cfg = parse_config(SOURCE_NODE + FEU_KEYS + "dark_count_rate_hz = [10.0, 20.0]\n").source
    assert cfg.link == "m-ab" and cfg.ends is None and cfg.hmac_key_file is None
    assert cfg.feu == FidelityEstimationUnit(1e6, 0.3, 0.25, 2001.0, 0.95, 150.0, 0.0, 10.0, 20.0)
    plain = parse_config(SOURCE_NODE + "[source]\npump_power_mw = 30.0\n").source
    assert plain.link is None and plain.feu is None and plain.pump_power_mw == 30.0


@pytest.mark.parametrize("edit, key, problem", [
    (lambda t: t.replace('link = "m-ab"\n', ""), "source.brightness_hz_per_mw",
     "set source.link too"),
    (lambda t: t.replace("visibility = 0.95\n", ""), "source.visibility", "is required"),
    (lambda t: t.replace("[0.3, 0.25]", "[0.3]"), "source.efficiency", "list of 2 numbers"),
    (lambda t: t.replace("[0.3, 0.25]", "[0.0, 0.25]"), "source.efficiency", "must be > 0"),
    (lambda t: t + "dark_count_rate_hz = [-1, 0]\n", "source.dark_count_rate_hz", "list of 2"),
    (lambda t: t + "min_pump_mw = 200.0\n", "source.max_pump_mw", "below min_pump_mw"),
    (lambda t: t + "pump_power_mw = 180.0\n", "source.pump_power_mw", "outside"),
    (lambda t: t.replace("1e6", "0"), "source.brightness_hz_per_mw", "must be > 0"),
    (lambda t: t + 'ends = ["a"]\n', "source.ends", "two analyzer nodes"),
    (lambda t: t + 'hmac_key_file = "/nonexistent/k"\n', "source.hmac_key_file", "does not exist"),
    (lambda t: t + "window_ps = 0\n".replace("window_ps", "windw_ps"), "source.windw_ps",
     "unknown key"),
])
def test_source_config_mistakes_name_the_key(edit, key, problem):
    from qnode.daemon.runtime.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(SOURCE_NODE + edit(FEU_KEYS), "s.toml")
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value)
