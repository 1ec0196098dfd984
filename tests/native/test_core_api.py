"""The tag model and the core's contract: bad input gets a clear error and loses nothing."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qnode import native
from qnode.native import reference
from qnode.native.tags import TagType

BACKENDS = [native, reference]


def test_tag_record_is_swabians_16_byte_layout():
    dt = native.TAG_DTYPE
    assert dt.itemsize == 16
    assert {name: dt.fields[name][1] for name in dt.names} == {
        "type": 0, "reserved": 1, "missed": 2, "channel": 4, "time": 8}
    assert dt["time"] == np.int64 and dt["channel"] == np.int32
    assert [t.value for t in TagType] == [0, 1, 2, 3, 4]


def test_tag_block_refuses_float_timestamps():
    with pytest.raises(native.TagBlockError, match="integer picoseconds"):
        native.tag_block(np.array([1.5, 2.0]), np.array([1, 2]))


def test_check_block_names_the_problem():
    with pytest.raises(native.TagBlockError, match="dtype"):
        native.check_block(np.zeros(3, np.int64))
    with pytest.raises(native.TagBlockError, match="C-contiguous"):
        native.check_block(native.empty_block(10)[::2])
    block = native.tag_block(np.array([0, 10, 5]), np.array([1, 1, 1]))
    with pytest.raises(native.TagBlockError, match="record 2 at 5 ps follows 10 ps"):
        native.check_block(block)


def test_sort_block_orders_ties_by_channel():
    block = native.sort_block(native.tag_block(np.array([5, 1, 5]), np.array([3, 9, 2])))
    assert block["time"].tolist() == [1, 5, 5] and block["channel"].tolist() == [9, 2, 3]


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_out_of_order_record_raises_after_counting_the_ordered_prefix(mod):
    good = native.tag_block(np.array([0, 5, 10, 12]), np.array([1, 2, 1, 2]))
    bad = native.tag_block(np.array([20, 26, 3, 40]), np.array([1, 2, 1, 2]))
    c = mod.Coincidences([(1, 2)], 6)
    c.process(good)
    with pytest.raises(native.StreamOrderError, match="record 2 at 3 ps follows 26 ps") as err:
        c.process(bad)
    assert err.value.index == 2
    # (0,5), (10,5), (10,12) from the first chunk, (20,26) from the second chunk's ordered prefix
    assert c.totals.coincidences.tolist() == [4]
    assert err.value.partial.coincidences.tolist() == [1]
    assert c.stats.records == 6 and c.stats.last_time == 26
    with pytest.raises(native.StreamOrderError, match="record 0 at 1 ps follows 26 ps"):
        c.process(native.tag_block(np.array([1]), np.array([1])))


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_overflow_and_missed_records_are_dead_time_not_tags(mod):
    block = native.tag_block(
        np.array([0, 10, 100, 150, 160, 400, 410]),
        np.array([1, 2, 0, 1, 0, 1, 2]),
        type=np.array([0, 0, TagType.OVERFLOW_BEGIN, TagType.MISSED_EVENTS, TagType.OVERFLOW_END,
                       0, TagType.ERROR]),
        missed=np.array([0, 0, 0, 42, 0, 0, 0]))
    c = mod.Coincidences([(1, 2)], 20)
    c.process(block)
    assert c.totals.coincidences.tolist() == [1]
    assert c.totals.singles.tolist() == [2, 1]
    s = c.stats
    assert (s.records, s.tags, s.overflows, s.missed_events, s.dead_time_ps, s.errors) == \
        (7, 3, 1, 42, 60, 1)


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_tags_on_other_channels_are_counted_as_other(mod):
    block = native.tag_block(np.array([0, 1, 2]), np.array([1, 7, 2]))
    c = mod.Coincidences([(1, 2)], 5)
    c.process(block)
    assert c.stats.other_tags == 1 and c.totals.coincidences.tolist() == [1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(pairs=[(1, 1)], window_ps=10), "two different channels"),
    (dict(pairs=[(1, 2)], window_ps=-1), "window_ps must be >= 0"),
    (dict(pairs=[(1, 2)], window_ps=1.5), "window_ps must be an integer"),
    (dict(pairs=[(1, 2)], window_ps=10, accidental_offset_ps=15), "must exceed the full window"),
    (dict(pairs=[(1, 2)], window_ps=10, delays_ps={3: 5}), r"delays_ps names channels \[3\]"),
    (dict(pairs=[], window_ps=10), "at least one channel pair"),
    (dict(pairs=[(1, 2)], window_ps=10, channels=[1]), r"channels \[2\] that are not in channels"),
])
@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_bad_parameters_name_the_parameter(mod, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mod.Coincidences(**kwargs)


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_nfold_parameter_errors(mod):
    with pytest.raises(ValueError, match="min_fold"):
        mod.NFold([1, 2], 10, min_fold=3)
    with pytest.raises(ValueError, match="distinct"):
        mod.NFold([1, 1], 10)
    with pytest.raises(ValueError, match="at most 64"):
        mod.NFold(range(65), 10)
    nf = mod.NFold(range(20), 10)
    assert nf.histogram is None  # 2**20 patterns: events only


def test_nfold_mask_of_names_channels_not_indices():
    nf = native.NFold([10, 20, 30], 5)
    assert nf.mask_of([30, 10]) == 0b101


def test_correlation_bin_edges_are_centred_by_default():
    corr = native.Correlation(1, 2, 10, 4)
    assert corr.bin_edges_ps.tolist() == [-20, -10, 0, 10, 20]
    assert corr.bin_centers_ps.tolist() == [-15, -5, 5, 15]


def test_missing_extension_raises_an_error_that_says_how_to_build():
    """In a fresh interpreter where the extension cannot be imported: importing the core raises
    NativeCoreMissing naming the build command; the numpy reference still works by name."""
    code = textwrap.dedent("""
        import sys
        sys.modules["qnode.native._qcore"] = None  # makes `import qnode.native._qcore` fail
        import numpy as np
        import qnode.native as native
        from qnode.native import reference
        assert not native.native_available()
        c = reference.Coincidences([(1, 2)], 10)
        c.process(native.tag_block(np.array([0, 5]), np.array([1, 2])))
        assert c.totals.coincidences.tolist() == [1]
        try:
            from qnode.native import Coincidences
        except native.NativeCoreMissing as err:
            print("MISSING:", err)
        try:
            import qnode.native.core
        except ImportError as err:
            print("CORE:", type(err).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "MISSING:" in out.stdout and "pip install -e ." in out.stdout
    assert "CORE: NativeCoreMissing" in out.stdout


def test_cli_info_reports_the_native_core(capsys):
    from qnode.daemon.cli import main

    assert main(["info"]) == 0
    assert "native core: built" in capsys.readouterr().out
