"""Polarisation drift of the M link's fibres and the analyzers' compensation (issue 6 item 7).

* hal_sim's drift model: the random walk's statistics (variance σ²·t about a fixed axis,
  E[D] = e^(−σ²t)·I isotropic), steps that apply the rotation they name, determinism from the
  seed, the bench file's keys (errors name them) and the truth's visibility with a compensator.
* The controller's search on a synthetic V(θ) (no instruments): it finds the plate angle, locks,
  reports the time; a drift a rotator cannot undo ends "unlocked".
* End to end: the bench serving the instruments (in this process, so the test can step a fibre),
  two ``qnode run`` analyzers over mosquitto; after a 40° step of the peer's fibre the counter
  reports calibrating, then locked, with the visibility back within 1 % of its value before the
  step, against the simulator's truth; with the controller off it stays low.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from qnode.daemon.acquisition.polarisation_control import (
    MIN_SIFTED,
    Measurement,
    PolarisationController,
    fit_sinusoid,
    required_coincidences,
)
from qnode.daemon.bus.envelope import decode
from qnode.daemon.bus.topics import parse_topic
from qnode.daemon.runtime.config import CompensationConfig, ConfigError, parse_config
from qnode.hal_sim import (
    bench,
)
from qnode.hal_sim.physics.coupling import compensator_rotation
from qnode.hal_sim.physics.polarisation import (
    BellDiagonalState,
    FibreDrift,
    PolarisationDrift,
    PolarisationStep,
    rotation_about,
    rotation_angle_rad,
)

from support.daemon_harness import Daemon, identity_lines, node_config, write_key

BENCHES = bench.BENCHES


# ------------------------------------------------------------------ the drift model

def _z_score_of_variance(sample: np.ndarray, variance: float) -> float:
    """(S² − σ²)/sd(S²) for M normal samples: sd(S²) = σ²·√(2/(M − 1))."""
    m = sample.size
    return (float(np.var(sample, ddof=1)) - variance) / (variance * math.sqrt(2 / (m - 1)))


def test_random_walk_variance_grows_linearly_in_time():
    """Walk about Y at σ = 0.2 rad/√s: at t = 1, 4, 16 s the angle's variance over 600 seeds is
    σ²·t; each of the three z-scores within 3.4 (family-wise α ≈ 0.002, normal approximation
    of the χ² with 599 degrees of freedom), and the mean within 3.4 standard errors of 0."""
    sigma, times = 0.2, (1.0, 4.0, 16.0)
    cfg = PolarisationDrift(sigma, grid_s=0.05)
    angles = np.zeros((600, len(times)))
    for seed in range(600):
        d = FibreDrift(cfg, seed)
        for j, t in enumerate(times):
            d.advance_to(t)
            angles[seed, j] = d.walk_angle_rad
            # the walk is a rotation about Y by that angle
            assert np.allclose(d.rotation, rotation_about((0, 1, 0), d.walk_angle_rad),
                               atol=1e-9)
    for j, t in enumerate(times):
        z = _z_score_of_variance(angles[:, j], sigma**2 * t)
        assert abs(z) < 3.4, (t, z, np.var(angles[:, j]), sigma**2 * t)
        assert abs(angles[:, j].mean()) < 3.4 * sigma * math.sqrt(t / 600)


def test_isotropic_walk_decays_the_mean_rotation_as_exp_minus_sigma2_t():
    """Isotropic Brownian rotation: E[D(t)] = e^(−σ²t)·I. 400 seeds, t = 2 s, σ = 0.4 rad/√s:
    the mean of D's diagonal within 4 standard errors of e^(−0.32), off-diagonal of 0."""
    sigma, t, n = 0.4, 2.0, 400
    cfg = PolarisationDrift(sigma, walk_axis=None, grid_s=0.05)
    rs = np.array([FibreDrift(cfg, seed).advance_to(t) for seed in range(n)])
    for r in rs:
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-12) and np.linalg.det(r) > 0
    mean, se = rs.mean(axis=0), rs.std(axis=0, ddof=1) / math.sqrt(n)
    expected = math.exp(-sigma**2 * t) * np.eye(3)
    assert np.all(np.abs(mean - expected) < 4 * se + 1e-9), (mean, expected, se)


def test_steps_apply_their_rotation_at_their_time_and_the_path_is_deterministic():
    step = PolarisationStep(at_s=1.25, angle_deg=40.0, axis=(0.0, 0.0, 2.0))
    cfg = PolarisationDrift(0.0, steps=(step,))
    d = FibreDrift(cfg, 1)
    assert np.allclose(d.advance_to(1.2), np.eye(3))
    after = d.advance_to(1.3)
    assert np.allclose(after, rotation_about((0, 0, 1), math.radians(40.0)))
    assert math.degrees(rotation_angle_rad(after)) == pytest.approx(40.0)
    assert d.applied_steps == [(1.25, 40.0, (0.0, 0.0, 1.0))]
    # a triggered step composes after what was there: D ← R·D
    d.step(-30.0)
    assert np.allclose(d.rotation, rotation_about((0, 1, 0), math.radians(-30.0)) @ after)
    # the walk's path depends on the seed only, not on how often it is sampled
    walk = PolarisationDrift(0.1, steps=(PolarisationStep(0.7, 25.0),))
    fine, coarse = FibreDrift(walk, 9), FibreDrift(walk, 9)
    for t in np.arange(0.0, 3.0, 0.013):
        fine.advance_to(float(t))
    assert np.allclose(fine.advance_to(3.0), coarse.advance_to(3.0), atol=1e-12)
    assert not np.allclose(FibreDrift(walk, 10).advance_to(3.0), coarse.rotation)
    with pytest.raises(ValueError, match="time runs forwards"):
        coarse.advance_to(1.0)


def test_a_compensator_undoes_a_y_rotation_of_either_fibre_and_nothing_else():
    """For Φ+ the correlations depend on the two fibres' relative rotation: a rotator at one end
    (R_Y(4θ)) restores E_ZZ = E_XX = V after a Y step at the other; a Z step it cannot."""
    t = BellDiagonalState.werner(0.95).correlation_matrix
    z, x = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])

    def e(ca: np.ndarray, db: np.ndarray) -> tuple[float, float]:
        ra, rb = ca.T, db.T                # the simulator's rotations: (C·D)ᵀ per node
        return float((ra @ z) @ t @ (rb @ z)), float((ra @ x) @ t @ (rb @ x))

    step = rotation_about((0, 1, 0), math.radians(40.0))
    assert e(np.eye(3), step) == pytest.approx((0.95 * math.cos(math.radians(40)),) * 2)
    assert e(compensator_rotation(10.0), step) == pytest.approx((0.95, 0.95))
    assert e(compensator_rotation(32.0, zero_deg=22.0), step) == pytest.approx((0.95, 0.95))
    z_step = rotation_about((0, 0, 1), math.radians(90.0))
    best = max(sum(e(compensator_rotation(a), z_step)) / 2 for a in np.arange(0, 90, 0.5))
    assert best < 0.5 * 0.95 + 1e-9      # E_XX = 0 whatever θ: at most half the visibility


DRIFT_NODE = """
[[link]]
name = "m"
type = "M"
seed = 3
[[link.node]]
name = "a"
channels = [1, 2]
[[link.node]]
name = "b"
channels = [1, 2]
polarisation_drift = {drift}
[[instrument]]
name = "comp"
kind = "elliptec"
serve = "tcp"
[instrument.options]
link = "m"
node = "a"
mount = "{mount}"
"""


def _bench_text(drift: str = "{walk_rad_per_sqrt_s = 0.01}", mount: str = "compensator") -> str:
    return DRIFT_NODE.replace("{drift}", drift).replace("{mount}", mount)


@pytest.mark.parametrize("drift, mount, key", [
    ("{walk_rad_per_sqrt_s = -1}", "compensator", "link[0].node[1].polarisation_drift."
                                                  "walk_rad_per_sqrt_s"),
    ("{walk_axis = [0, 0, 0]}", "compensator", "link[0].node[1].polarisation_drift.walk_axis"),
    ("{walk_axis = 'sideways'}", "compensator", "link[0].node[1].polarisation_drift.walk_axis"),
    ("{wobble = 1}", "compensator", "link[0].node[1].polarisation_drift.wobble"),
    ("{steps = [{at_s = 1.0}]}", "compensator",
     "link[0].node[1].polarisation_drift.steps[0].angle_deg"),
    ("{steps = [{at_s = 1.0, angle_deg = 5, axis = [1, 2]}]}", "compensator",
     "link[0].node[1].polarisation_drift.steps[0].axis"),
    ("{steps = [{at_s = -1.0, angle_deg = 5}]}", "compensator",
     "link[0].node[1].polarisation_drift.steps[0].at_s"),
    ("{}", "ceiling", "instrument[0].options.mount"),
])
def test_bench_drift_and_compensator_mistakes_name_the_key(tmp_path, drift, mount, key):
    f = tmp_path / "b.toml"
    f.write_text(_bench_text(drift, mount))
    with pytest.raises(bench.BenchConfigError, match=rf"b.toml: {re_escape(key)}:"):
        bench.Bench.from_file(f)


def re_escape(key: str) -> str:
    import re
    return re.escape(key)


def test_bench_steps_a_fibre_and_the_truth_follows_the_compensator(tmp_path):
    """A scheduled step from the file, a triggered one from the test, and the truth's
    visibility with the compensator's ELL14 turned through its real driver."""
    from qnode.drivers.elliptec import Elliptec

    f = tmp_path / "b.toml"
    f.write_text(_bench_text("{steps = [{at_s = 0.1, angle_deg = 20.0}]}"))
    with bench.Bench.from_file(f) as b:
        rt = b.links["m"]
        rt.fanout.locked(rt._before_step)           # what the bench does before every slice
        pol = b.truth()["links"]["m"]["polarisation"]
        assert pol["relative_rotation_deg"] == pytest.approx(0.0)
        for _ in range(3):                          # 50 ms slices: past at_s = 0.1 s
            rt.fanout.locked(lambda sim: sim.step())
        rt.fanout.locked(rt._before_step)
        truth = b.truth()["links"]["m"]
        assert truth["polarisation"]["nodes"]["b"]["steps"][0]["angle_deg"] == 20.0
        assert truth["polarisation"]["relative_rotation_deg"] == pytest.approx(20.0)
        # one H/V analyzer per node: |E_zz| = V·cos 20°
        assert truth["polarisation"]["visibility"] == pytest.approx(
            0.95 * math.cos(math.radians(20.0)))
        at = rt.polarisation_step("b", 20.0)        # triggered: from the next slice on
        assert at == pytest.approx(rt.sim.time_ps * 1e-12)
        rt.fanout.locked(rt._before_step)
        assert b.truth()["links"]["m"]["polarisation"]["relative_rotation_deg"] == \
            pytest.approx(40.0)
        with Elliptec(b.addresses()["comp"], timeout_s=2.0) as comp:
            comp.move_absolute_deg(10.0)            # R_Y(40°) at a: the same turn as b's
        rt.fanout.locked(rt._before_step)
        pol = b.truth()["links"]["m"]["polarisation"]
    assert pol["nodes"]["a"]["compensator_angle_deg"] == pytest.approx(10.0, abs=0.01)
    assert pol["relative_rotation_deg"] == pytest.approx(0.0, abs=0.05)
    assert pol["visibility"] == pytest.approx(0.95, abs=1e-5)


def test_shipped_polarisation_bench_parses_with_a_compensator_per_node():
    spec = bench.parse((BENCHES / "polarisation.toml").read_text(), "polarisation.toml")
    link = spec.links[0]
    assert [n.polarisation_drift.walk_rad_per_sqrt_s for n in link.nodes] == [0.002, 0.002]
    assert link.nodes[1].polarisation_drift.steps == (PolarisationStep(20.0, 40.0),)
    mounts = [i.options.get("mount") for i in spec.instruments if i.kind == "elliptec"]
    assert mounts == [None, None, "compensator", "compensator"]


# ------------------------------------------------------------------ the controller, synthetic

class SyntheticLink:
    """The counter's view of a link with a rotator: V(θ) = V₀·cos 4(θ − θ₀) (θ the plate angle,
    deg) plus ``floor`` (a part no plate angle changes), measured as a correlation of N
    coincidences (binomial), N from the precision asked, at ``rate_hz``; time is virtual."""

    def __init__(self, v0: float = 0.95, theta0_deg: float = 0.0, rate_hz: float = 25_000,
                 seed: int = 1):
        self.v0, self.theta0, self.rate = v0, theta0_deg, rate_hz
        self.floor = 0.0
        self.angle = 0.0
        self.t = 0.0
        self.restarts = 0
        self.rng = np.random.default_rng(seed)

    def true_visibility(self, angle: float | None = None) -> float:
        a = self.angle if angle is None else angle
        return self.floor + self.v0 * math.cos(math.radians(4 * (a - self.theta0)))

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.t += s

    async def move(self, angle: float) -> float:
        self.t += abs(angle - self.angle) / 360.0         # an ELL14 turns at 360 °/s
        self.angle = round(angle * 398.2) / 398.2 % 360.0  # to the encoder's pulse
        return self.angle

    async def wait_ready(self) -> None:
        return None

    async def measure(self, *, sigma: float | None = None, span_s: float | None = None,
                      skip_s: float = 0.0, timeout_s: float = 60.0) -> Measurement:
        v = self.true_visibility()
        n = required_coincidences(sigma, v) if sigma is not None else MIN_SIFTED
        if span_s is not None:
            n = max(n, int(self.rate * span_s))
        agree = self.rng.binomial(n, (1 + v) / 2)
        e = 2 * agree / n - 1
        self.t += skip_s + n / self.rate
        return Measurement(e, math.sqrt(max(1 - e * e, 0.02) / n), n, n / self.rate)

    async def restart(self) -> None:
        self.restarts += 1


def _controller(link: SyntheticLink, **cfg) -> PolarisationController:
    return PolarisationController(CompensationConfig("comp", True, **cfg), move=link.move,
                                  meter=link, link="m", clock=link.clock, sleep=link.sleep)


def test_fit_sinusoid_finds_the_maximum_of_v_theta():
    angles = list(np.arange(0.0, 90.0, 15.0))
    values = [0.1 + 0.8 * math.cos(math.radians(4 * (a - 33.0))) for a in angles]
    c0, amp, best, _ = fit_sinusoid(angles, values, [0.01] * len(angles))
    assert (c0, amp, best) == pytest.approx((0.1, 0.8, 33.0))


@pytest.mark.parametrize("theta0, seed", [(10.0, 1), (-20.0, 2), (37.0, 3), (80.0, 4)])
def test_controller_detects_a_drop_and_finds_the_plate_angle_again(theta0, seed):
    link = SyntheticLink(seed=seed)
    ctl = _controller(link)

    async def run() -> tuple[bool, bool, bool]:
        await ctl.take_reference()
        quiet = await ctl.monitor_once()               # no drift: no alarm
        link.theta0 = theta0                           # the step
        drop = await ctl.monitor_once()
        return quiet, drop, await ctl.recalibrate()

    quiet, drop, ok = asyncio.run(run())
    assert not quiet and drop and ok
    assert ctl.state == "locked" and not ctl.calibrating and ctl.recalibrations == 1
    # the plate sits where V(θ) peaks (mod 90°), within 1° (V within 0.2 % of V₀)
    off = (ctl.angle_deg - theta0 + 45.0) % 90.0 - 45.0
    assert abs(off) < 1.0, (ctl.angle_deg, theta0)
    assert link.true_visibility() >= 0.99 * ctl.reference.visibility
    assert ctl.window.visibility >= 0.99 * ctl.reference.visibility
    assert 0 < ctl.last_recalibration_s < 10 and link.restarts == 1
    t = ctl.telemetry()
    assert t["polarisation_state"] == "locked" and t["recalibration_s"] == ctl.last_recalibration_s
    assert t["calibrating"] is False and t["recalibrations_total"] == 1
    # the last search: six coarse points over one period (15° apart), then three fine ones
    steps = np.diff([p.angle_deg for p in ctl.points[:6]]) % 360.0
    assert len(ctl.points) == 9 and np.allclose(steps, 15.0, atol=0.01)
    assert max(p.sigma for p in ctl.points[6:]) < 0.006 < min(p.sigma for p in ctl.points[:6])


def test_a_drift_the_rotator_cannot_undo_ends_unlocked_and_says_so():
    link = SyntheticLink(seed=7)
    ctl = _controller(link, max_attempts=2)

    async def run() -> bool:
        await ctl.take_reference()
        link.v0, link.floor = 0.0, 0.5       # e.g. a Z step: no plate angle brings it back
        assert await ctl.monitor_once()
        return await ctl.recalibrate()

    assert asyncio.run(run()) is False
    assert ctl.state == "unlocked" and ctl.failures == 1 and ctl.recalibrations == 0
    assert link.restarts == 0


def test_compensation_keys_are_checked_and_named():
    head = ('[node]\nid = "a"\nnetwork = "n"\nroles = ["analyzer"]\n' + identity_lines("a")
            + '[broker]\n'
            'url = "mqtt://127.0.0.1"\n[instruments.tagger]\nkind = "id900"\naddress = "x"\n'
            '[instruments.hwp]\nkind = "elliptec"\naddress = "/dev/null"\n'
            '[instruments.comp]\nkind = "elliptec"\naddress = "/dev/null"\n'
            '[[links]]\nid = "m"\npeer = "b"\ntype = "M"\n'
            '[analyzer]\nchannels = [1, 2, 3, 4]\nwaveplate = "hwp"\n')
    cfg = parse_config(head + 'compensator = "comp"\ncompensate = true\n').analyzer
    assert cfg.waveplate == "hwp" and cfg.compensation == CompensationConfig("comp", True)
    assert parse_config(head).analyzer.compensation is None
    for extra, key in (("compensate = true\n", "analyzer.compensator"),
                       ('compensate = "yes"\n', "analyzer.compensate"),
                       ("compensate_threshold = 0.05\n", "analyzer.compensate_threshold"),
                       ('compensator = "hwp"\n', "analyzer.compensator"),
                       ('compensator = "tagger"\n', "analyzer.compensator"),
                       ('compensator = "comp"\ncompensate_threshold = 0.9\n',
                        "analyzer.compensate_threshold"),
                       ('compensator = "comp"\ncompensate_tolerance = 0.05\n',
                        "analyzer.compensate_tolerance"),
                       ('compensator = "comp"\ncompensate_scan_points = 2\n',
                        "analyzer.compensate_scan_points")):
        with pytest.raises(ConfigError) as err:
            parse_config(head + extra)
        assert err.value.key == key, (extra, str(err.value))


# ------------------------------------------------------------------ end to end

NETWORK = "pol"
STEP_DEG = 40.0
#: the shipped bench without its scheduled step: the test triggers one when the link is locked
SCHEDULED = ", steps = [{at_s = 20.0, angle_deg = 40.0, axis = [0.0, 1.0, 0.0]}]"


def _analyzer_config(tmp: Path, node: str, peer: str, addresses: dict[str, str], port: int,
                     key: Path, compensate: bool) -> Path:
    def elliptec(name: str, bench_name: str) -> str:
        return (f"[instruments.{name}]\nkind = \"elliptec\"\n"
                f"address = {json.dumps(addresses[bench_name])}\ntimeout_s = 2.0\n\n")
    body = (f"[instruments.tagger]\nkind = \"id900\"\n"
            f"address = {json.dumps(addresses[f'{node}-tagger.scpi'])}\ntimeout_s = 2.0\n"
            f"[instruments.tagger.options]\ndlt = {json.dumps(addresses[f'{node}-tagger.dlt'])}\n"
            f"inputs = [1, 2, 3, 4]\nchunk_interval_s = 0.1\n\n"
            + elliptec("hwp", f"{node}-hwp") + elliptec("comp", f"{node}-comp")
            + f"[analyzer]\nchannels = [1, 2, 3, 4]\nbases = [\"Z\", \"X\"]\nwindow_ps = 1000\n"
              f"align_s = 1.0\nwaveplate = \"hwp\"\ncompensator = \"comp\"\n"
              f"compensate = {'true' if compensate else 'false'}\n"
              f"compensate_window_s = 0.5\n\n"
              f"[[links]]\nid = \"m-ab\"\npeer = \"{peer}\"\ntype = \"M\"\n"
              f"hmac_key_file = \"{key}\"\n")
    return node_config(tmp / f"{node}.toml", node=node, roles=["analyzer"], broker_port=port,
                       state_dir=tmp / "state" / node, network=NETWORK, body=body)


class Telemetry:
    """analyzer-a's link telemetry as it arrives (every 0.5 s)."""

    def __init__(self, client: aiomqtt.Client):
        self.client = client
        self.records: list[tuple[float, dict]] = []

    async def until(self, predicate, timeout_s: float, what: str) -> dict:
        try:
            async with asyncio.timeout(timeout_s):
                async for m in self.client.messages:
                    msg = decode(bytes(m.payload), parse_topic(str(m.topic)))
                    link = msg.body.get("links", {}).get("m-ab", {})
                    self.records.append((time.monotonic(), link))
                    if predicate(link):
                        return link
        except TimeoutError:
            pass
        last = self.records[-1][1] if self.records else None
        raise AssertionError(f"no telemetry with {what} within {timeout_s} s; last: {last}")


async def _step_and_recover(port: int, rt: bench.LinkRuntime) -> dict:
    """Lock, step analyzer-b's fibre, watch the counter recalibrate; the figures."""
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"qnet/v1/{NETWORK}/analyzer-a/telemetry")
        tm = Telemetry(client)
        await tm.until(lambda t: t.get("polarisation_state") == "locked", 45.0, "locked")
        before = await tm.until(lambda t: t.get("visibility") is not None, 5.0, "visibility")
        truth_before = rt.truth()["polarisation"]
        t_step = time.monotonic()
        at_s = rt.polarisation_step("analyzer-b", STEP_DEG)
        truth_stepped = None
        while truth_stepped is None or truth_stepped["relative_rotation_deg"] < 1:
            await asyncio.sleep(0.05)                  # the step is in from the next slice
            truth_stepped = rt.truth()["polarisation"]
        calibrating = await tm.until(lambda t: t.get("calibrating") is True, 15.0,
                                     "calibrating")
        locked = await tm.until(lambda t: t.get("polarisation_state") == "locked"
                                and t.get("recalibrations_total") == 1, 45.0, "locked again")
        t_locked = time.monotonic()
        # the cumulative figures restarted at the lock: let them gather 3 s of counts
        after = await tm.until(lambda t: time.monotonic() > t_locked + 3.0, 10.0, "3 s more")
        return {"before": before, "calibrating": calibrating, "locked": locked, "after": after,
                "truth_before": truth_before, "truth_stepped": truth_stepped,
                "truth_after": rt.truth()["polarisation"], "step_at_s": at_s,
                "step_to_lock_s": t_locked - t_step, "records": tm.records}


def test_analyzers_restore_visibility_after_a_polarisation_step(tmp_path, broker):
    text = (BENCHES / "polarisation.toml").read_text()
    assert SCHEDULED in text
    spec = bench.parse(text.replace(SCHEDULED, ""), "polarisation.toml")
    key = tmp_path / "m-ab.key"
    write_key(key, "ab" * 32)
    with bench.Bench(spec, "polarisation.toml") as b:
        addresses = b.addresses()
        rt = b.links["source-pair"]
        configs = {n: _analyzer_config(tmp_path, n, p, addresses, broker.port, key, True)
                   for n, p in (("analyzer-a", "analyzer-b"), ("analyzer-b", "analyzer-a"))}
        daemons = {n: Daemon(c) for n, c in configs.items()}
        try:
            for d in daemons.values():
                d.start()
            got = asyncio.run(_step_and_recover(broker.port, rt))
        finally:
            codes = {n: d.stop() for n, d in daemons.items()}
    logs = {n: d.log() for n, d in daemons.items()}
    assert codes == {"analyzer-a": 0, "analyzer-b": 0}, (codes, logs["analyzer-a"][-3000:])
    before, after, locked = got["before"], got["after"], got["locked"]
    tb, ts, ta = got["truth_before"], got["truth_stepped"], got["truth_after"]
    print(f"\nV before {before['visibility']:.4f} (truth {tb['visibility']:.4f}); "
          f"after the step: window {got['calibrating']['visibility_window']:.4f} "
          f"(truth {ts['visibility']:.4f}); recovered {after['visibility']:.4f} "
          f"(truth {ta['visibility']:.4f}); recalibration {locked['recalibration_s']:.2f} s, "
          f"step → locked {got['step_to_lock_s']:.2f} s; compensator "
          f"{locked['compensator_angle_deg']:.2f} deg")

    # the step hit the measurement: the simulator's visibility fell to V·cos 40°, and the
    # window that started the recalibration saw it (without the controller it stays there)
    assert tb["visibility"] == pytest.approx(0.95, abs=0.005)
    assert ts["relative_rotation_deg"] == pytest.approx(STEP_DEG, abs=2.0)
    assert ts["visibility"] == pytest.approx(0.95 * math.cos(math.radians(STEP_DEG)), abs=0.01)
    low = got["calibrating"]["visibility_window"]
    assert low < (1 - 0.03) * before["visibility"], got["calibrating"]
    assert "polarisation drop" in logs["analyzer-a"] and "calibrating" in logs["analyzer-a"]
    # calibrating, then locked again, with the time reported
    assert got["calibrating"]["polarisation_state"] == "calibrating"
    assert locked["calibrating"] is False and locked["recalibration_s"] > 0
    assert "polarisation locked again" in logs["analyzer-a"]
    # the visibility is back within 1 % (relative) of its value before the step ...
    assert abs(after["visibility"] - before["visibility"]) <= 0.01 * before["visibility"], got
    # ... and so is the truth: the compensator undid the peer fibre's turn (R_Y(4θ) = 40°)
    assert ta["relative_rotation_deg"] < 3.0, ta
    assert ta["visibility"] >= 0.99 * tb["visibility"]
    assert abs(after["visibility"] - ta["visibility"]) < 0.01
    assert locked["compensator_angle_deg"] % 90 == pytest.approx(STEP_DEG / 4, abs=0.75)
    # the streamer only set its compensator: one end compensates the relative turn
    assert "compensation of m-ab runs at its counter" in logs["analyzer-b"]
    assert "polarisation drop" not in logs["analyzer-b"]
