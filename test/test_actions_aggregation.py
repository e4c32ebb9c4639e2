"""Chunk aggregation: hand-computed values for overlapping, late and missing chunks."""

import math

import numpy as np
import pytest

from vla_ros.actions.aggregation import (
    AggregationConfig,
    Crossfade,
    LatestChunk,
    make_aggregator,
    RealTimeChunks,
    TemporalEnsemble,
)
from vla_ros.errors import ConfigError
from vla_ros.types import ActionChunk


def chunk(timestamp, values):
    """1-D values -> (H, 1) chunk; nested lists -> (H, D)."""
    a = np.asarray(values, dtype=np.float32)
    if a.ndim == 1:
        a = a[:, None]
    return ActionChunk(actions=a, timestamp=timestamp)


def scalar(agg, t):
    v = agg.value_at(t)
    return None if v is None else float(v[0])


# -- temporal ensemble --------------------------------------------------------


def three_chunks(m):
    # dt = 0.1. A: stamps 0.0..0.3 -> 0,1,2,3; B: 0.1..0.5 -> 10; C: 0.2..0.5 -> 20.
    agg = TemporalEnsemble(0.1, m=m)
    assert agg.update(chunk(0.0, [0, 1, 2, 3]), now=0.0)
    assert agg.update(chunk(0.1, [10, 10, 10, 10, 10]), now=0.1)
    assert agg.update(chunk(0.2, [20, 20, 20, 20]), now=0.2)
    return agg


def test_ensemble_weighted_mean_of_three_chunks():
    agg = three_chunks(m=0.5)
    w0, w1, w2 = 1.0, math.exp(-0.5), math.exp(-1.0)
    # t = 0.3: A = 3 (oldest, i = 0), B = 10 (i = 1), C = 20 (i = 2).
    expected = (3 * w0 + 10 * w1 + 20 * w2) / (w0 + w1 + w2)
    assert expected == pytest.approx(8.317874, abs=1e-6)
    assert scalar(agg, 0.3) == pytest.approx(expected, rel=1e-12)
    # t = 0.4: A has ended, so B is now the oldest contributor (i = 0).
    assert scalar(agg, 0.4) == pytest.approx((10 * w0 + 20 * w1) / (w0 + w1), rel=1e-12)
    # t = 0.15: A interpolated between 1 and 2 -> 1.5, B = 10, C not yet.
    assert scalar(agg, 0.15) == pytest.approx((1.5 * w0 + 10 * w1) / (w0 + w1), rel=1e-12)
    # t = 0.05: A alone, interpolated between 0 and 1.
    assert scalar(agg, 0.05) == pytest.approx(0.5, rel=1e-12)


def test_ensemble_weights_count_control_periods_between_observations():
    # ACT's m is per control step. Chunks observed 10 control periods apart
    # (a new chunk every 0.2 s at a 50 Hz control rate) weigh exp(-m * 10)
    # relative to each other, not exp(-m * 1) as if they were one step apart.
    m, period = 0.01, 0.02
    agg = TemporalEnsemble(0.02, m=m, period=period)
    assert agg.update(chunk(0.0, [0.0] * 50), now=0.0)
    assert agg.update(chunk(0.2, [1.0] * 50), now=0.2)
    assert agg.update(chunk(0.4, [2.0] * 50), now=0.4)
    w = [1.0, math.exp(-0.1), math.exp(-0.2)]  # ages 0, 10, 20 periods, by hand
    assert scalar(agg, 0.5) == pytest.approx((0 * w[0] + 1 * w[1] + 2 * w[2]) / sum(w), rel=1e-12)
    assert scalar(agg, 0.5) == pytest.approx(0.933444, abs=1e-6)
    # Where the oldest chunk has ended, the next one is the reference (weight 1).
    assert scalar(agg, 1.1) == pytest.approx((1 + 2 * math.exp(-0.1)) / (1 + math.exp(-0.1)), rel=1e-12)
    # The action period is not the unit: the same chunks on a 100 Hz control
    # timer are 20 and 40 periods apart.
    fast = TemporalEnsemble(0.02, m=m, period=0.01)
    for stamp, value in ((0.0, 0.0), (0.2, 1.0), (0.4, 2.0)):
        fast.update(chunk(stamp, [value] * 50), now=stamp)
    w = [1.0, math.exp(-0.2), math.exp(-0.4)]
    assert scalar(fast, 0.5) == pytest.approx((w[1] + 2 * w[2]) / sum(w), rel=1e-12)


def test_ensemble_weights_do_not_underflow_with_a_large_m():
    agg = TemporalEnsemble(0.1, m=50.0)
    agg.update(chunk(0.0, [1.0] * 100), now=0.0)
    agg.update(chunk(5.0, [3.0] * 100), now=5.0)  # 50 periods later: exp(-2500) underflows
    assert scalar(agg, 5.5) == pytest.approx(1.0)
    assert scalar(agg, 10.5) == pytest.approx(3.0), "the newer chunk alone still counts"


def test_ensemble_m_zero_is_plain_average():
    agg = three_chunks(m=0.0)
    assert scalar(agg, 0.3) == pytest.approx((3 + 10 + 20) / 3, rel=1e-12)


def test_ensemble_multi_joint():
    agg = TemporalEnsemble(0.1, m=0.5)
    agg.update(chunk(0.0, [[0, 100], [2, 200]]), now=0.0)
    agg.update(chunk(0.1, [[4, 0], [6, 0]]), now=0.1)
    w1 = math.exp(-0.5)
    # t = 0.1: first chunk [2, 200], second [4, 0].
    v = agg.value_at(0.1)
    assert v.shape == (2,)
    assert v == pytest.approx([(2 + 4 * w1) / (1 + w1), 200 / (1 + w1)], rel=1e-12)
    # t = 0.05: first chunk only, halfway.
    assert agg.value_at(0.05) == pytest.approx([1, 150], rel=1e-12)


def test_coverage_horizon_and_remaining():
    agg = three_chunks(m=0.5)
    assert agg.value_at(-0.01) is None
    assert agg.value_at(0.55) is None
    assert scalar(agg, 0.5) == pytest.approx((10 + 20 * math.exp(-0.5)) / (1 + math.exp(-0.5)))
    assert agg.horizon_end() == pytest.approx(0.5)
    assert agg.remaining(0.2) == pytest.approx(0.3)
    assert agg.remaining(0.7) == 0.0


def test_values_at_matches_value_at():
    agg = three_chunks(m=0.5)
    times = np.array([-0.1, 0.0, 0.05, 0.15, 0.3, 0.4, 0.5, 0.6])
    values, covered = agg.values_at(times)
    assert covered.tolist() == [False, True, True, True, True, True, True, False]
    for t, v, c in zip(times, values, covered):
        if c:
            assert v[0] == pytest.approx(scalar(agg, t), rel=1e-12)
        else:
            assert agg.value_at(t) is None


def test_ended_chunks_are_pruned():
    agg = three_chunks(m=0.5)
    assert agg.num_chunks == 3
    agg.prune(0.35)  # A ended at 0.3
    assert agg.num_chunks == 2
    agg.remaining(0.6)
    assert agg.num_chunks == 0
    assert agg.horizon_end() is None
    assert agg.remaining(0.6) == 0.0


def test_no_chunk_gives_none_and_reset_clears():
    agg = TemporalEnsemble(0.1)
    assert agg.value_at(0.0) is None
    assert agg.horizon_end() is None
    values, covered = agg.values_at(np.array([0.0, 0.1]))
    assert not covered.any()
    agg.update(chunk(0.0, [1, 2]), now=0.05)
    assert agg.skipped_actions == 1
    agg.reset()
    assert agg.value_at(0.1) is None
    assert agg.num_chunks == 0
    assert agg.skipped_actions == 0


# -- late and missing chunks ----------------------------------------------------


def test_late_chunk_skips_past_actions():
    agg = TemporalEnsemble(0.1)
    # Stamps 1.0, 1.1, 1.2, 1.3, 1.4; at now = 1.25 the first three are past.
    assert agg.update(chunk(1.0, [0, 1, 2, 3, 4]), now=1.25)
    assert agg.skipped_actions == 3
    assert agg.value_at(1.25) is None  # coverage starts at the first kept stamp
    assert scalar(agg, 1.3) == pytest.approx(3.0)
    assert scalar(agg, 1.35) == pytest.approx(3.5)
    assert scalar(agg, 1.4) == pytest.approx(4.0)


def test_action_stamped_exactly_now_is_kept():
    agg = LatestChunk(0.1)
    agg.update(chunk(1.0, [0, 1, 2, 3]), now=1.2)
    assert agg.skipped_actions == 2
    assert scalar(agg, 1.2) == pytest.approx(2.0)


def test_exact_stamp_at_ros_epoch_scale():
    # At 1.7e9 s a float64 resolves ~2.4e-7 s; stamp == now must still be kept.
    t0 = 1_700_000_000.123
    dt = 0.02
    agg = LatestChunk(dt)
    agg.update(chunk(t0, [0, 1, 2, 3]), now=t0 + 2 * dt)
    assert agg.skipped_actions == 2
    assert scalar(agg, t0 + 2 * dt) == pytest.approx(2.0, abs=1e-4)
    assert scalar(agg, t0 + 2.5 * dt) == pytest.approx(2.5, abs=1e-4)


def test_chunk_entirely_in_the_past_is_ignored():
    agg = TemporalEnsemble(0.1)
    # Stamps 0.0, 0.1, 0.2, all < 0.25.
    assert agg.update(chunk(0.0, [1, 2, 3]), now=0.25) is False
    assert agg.skipped_actions == 3
    assert agg.ignored_chunks == 1
    assert agg.num_chunks == 0
    assert agg.value_at(0.25) is None


def test_late_chunk_counter_accumulates():
    agg = TemporalEnsemble(0.1)
    agg.update(chunk(0.0, [0, 1, 2, 3]), now=0.15)  # skips 0.0, 0.1
    agg.update(chunk(0.1, [0, 1, 2, 3]), now=0.31)  # skips 0.1, 0.2, 0.3
    assert agg.skipped_actions == 5
    assert agg.accepted_chunks == 2


def test_dimension_mismatch_rejected():
    agg = TemporalEnsemble(0.1)
    agg.update(chunk(0.0, [[0, 0], [1, 1]]), now=0.0)
    with pytest.raises(ValueError):
        agg.update(chunk(0.05, [[0, 0, 0]]), now=0.05)


# -- latest -------------------------------------------------------------------------


def test_latest_switches_to_newest_chunk():
    agg = LatestChunk(0.1)
    agg.update(chunk(0.0, [0, 1, 2, 3, 4, 5]), now=0.0)  # stamps 0.0..0.5
    # Observation at 0.2 arrives at 0.25: stamp 0.2 is skipped, coverage from 0.3.
    agg.update(chunk(0.2, [100, 101, 102, 103, 104, 105]), now=0.25)
    assert agg.skipped_actions == 1
    assert scalar(agg, 0.25) == pytest.approx(2.5)  # old chunk still in charge
    assert scalar(agg, 0.3) == pytest.approx(101.0)
    assert scalar(agg, 0.55) == pytest.approx(103.5)
    assert scalar(agg, 0.7) == pytest.approx(105.0)  # beyond the old chunk's end
    assert agg.remaining(0.25) == pytest.approx(0.45)
    # From 0.3 on the new chunk hides the old one entirely.
    assert agg.num_chunks == 2
    agg.prune(0.3)
    assert agg.num_chunks == 1


def test_latest_falls_back_to_older_chunk_after_newer_ends():
    agg = LatestChunk(0.1)
    agg.update(chunk(0.0, [0, 1, 2, 3, 4, 5]), now=0.0)  # 0.0..0.5
    agg.update(chunk(0.1, [50, 50]), now=0.1)  # 0.1..0.2
    assert scalar(agg, 0.2) == pytest.approx(50.0)
    assert scalar(agg, 0.3) == pytest.approx(3.0)


# -- crossfade ------------------------------------------------------------------------


def crossfade_pair(new_len=8):
    agg = Crossfade(0.1, overlap=0.2)
    agg.update(chunk(0.0, list(range(10))), now=0.0)  # value 10 * t on 0.0..0.9
    # Observation 0.1, arrives at 0.15: stamp 0.1 skipped, fade starts at 0.2.
    agg.update(chunk(0.1, [10] * new_len), now=0.15)
    return agg


def test_crossfade_alpha_zero_half_one():
    agg = crossfade_pair()
    assert scalar(agg, 0.15) == pytest.approx(1.5)  # before the new chunk: old only
    assert scalar(agg, 0.2) == pytest.approx(2.0)  # alpha 0
    assert scalar(agg, 0.25) == pytest.approx(0.75 * 2.5 + 0.25 * 10)  # alpha 0.25
    assert scalar(agg, 0.3) == pytest.approx(0.5 * 3 + 0.5 * 10)  # alpha 0.5
    assert scalar(agg, 0.4) == pytest.approx(10.0)  # alpha 1
    assert scalar(agg, 0.8) == pytest.approx(10.0)
    assert scalar(agg, 0.85) == pytest.approx(8.5)  # new chunk ended at 0.8: old only


def test_crossfade_new_chunk_alone_is_used_directly():
    agg = Crossfade(0.1, overlap=0.2)
    agg.update(chunk(0.0, [0, 0, 0]), now=0.0)  # 0.0..0.2
    agg.update(chunk(0.2, [10, 10, 10]), now=0.2)  # 0.2..0.4
    assert scalar(agg, 0.2) == pytest.approx(0.0)  # both cover, alpha 0
    assert scalar(agg, 0.3) == pytest.approx(10.0)  # only the new one covers


def test_crossfade_prunes_overridden_chunk_once_fade_is_done():
    agg = crossfade_pair(new_len=10)  # new chunk 0.2..1.0 outlasts the old (0.9)
    agg.prune(0.39)
    assert agg.num_chunks == 2
    agg.prune(0.4)  # fade finished at 0.2 + 0.2
    assert agg.num_chunks == 1
    assert scalar(agg, 0.5) == pytest.approx(10.0)


# -- construction -----------------------------------------------------------------------


def test_make_aggregator_modes_and_params():
    a = make_aggregator("temporal_ensemble", 0.02, m=0.5)
    assert isinstance(a, TemporalEnsemble) and a.m == 0.5 and a.dt == 0.02
    assert isinstance(make_aggregator("latest", 0.02), LatestChunk)
    c = make_aggregator("crossfade", 0.02, overlap=0.3)
    assert isinstance(c, Crossfade) and c.overlap == 0.3


def test_make_aggregator_rejects_unknown_mode_and_param():
    with pytest.raises(ConfigError) as err:
        make_aggregator("average", 0.02)
    assert err.value.parameter == "aggregation.mode"
    for choice in ("temporal_ensemble", "latest", "crossfade", "rtc"):
        assert choice in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_aggregator("latest", 0.02, overlap=0.2)
    assert err.value.parameter == "aggregation.overlap"
    with pytest.raises(ConfigError) as err:
        make_aggregator("latest", 0.0)
    assert err.value.parameter == "aggregation.dt"


def test_aggregation_config_validation_and_build():
    cfg = AggregationConfig()
    assert (cfg.mode, cfg.ensemble_m, cfg.crossfade_overlap) == ("temporal_ensemble", 0.01, 0.2)
    built = AggregationConfig(mode="crossfade", crossfade_overlap=0.5).build(0.05)
    assert isinstance(built, Crossfade) and built.overlap == 0.5 and built.dt == 0.05
    assert AggregationConfig(ensemble_m=0.0).build(0.02).m == 0.0
    with pytest.raises(ConfigError) as err:
        AggregationConfig(ensemble_m=-0.1)
    assert err.value.parameter == "aggregation.ensemble_m"
    with pytest.raises(ConfigError) as err:
        AggregationConfig(crossfade_overlap=0.0)
    assert err.value.parameter == "aggregation.crossfade_overlap"
    with pytest.raises(ConfigError) as err:
        AggregationConfig(mode="nope")
    assert err.value.parameter == "aggregation.mode"


def test_newest_means_latest_observation_not_latest_arrival():
    agg = LatestChunk(0.1)
    agg.update(chunk(0.2, [7, 7, 7]), now=0.0)  # 0.2..0.4
    agg.update(chunk(0.1, [1, 1, 1, 1]), now=0.0)  # older observation, arrives later: 0.1..0.4
    assert scalar(agg, 0.1) == pytest.approx(1.0)
    assert scalar(agg, 0.3) == pytest.approx(7.0)


def test_non_finite_chunk_rejected():
    agg = Crossfade(0.1, overlap=0.2)
    agg.update(chunk(0.0, [1, 1, 1]), now=0.0)
    assert agg.update(chunk(0.1, [2, float("nan"), 2]), now=0.1) is False
    assert agg.non_finite_chunks == 1
    assert agg.num_chunks == 1
    assert scalar(agg, 0.2) == pytest.approx(1.0)


# -- rtc (Real-Time Chunking) --------------------------------------------------------


def rtc_pair(delay=4, now=0.25, new_len=10, agg=None):
    # dt = 0.1. Old: stamps 0.0..0.9 -> 0..9. New: observed at 0.2, rows 100 + k at 0.2 + 0.1 k.
    agg = RealTimeChunks(0.1) if agg is None else agg
    assert agg.update(chunk(0.0, np.arange(10.0)), now=0.0, delay=3)
    assert agg.update(chunk(0.2, 100.0 + np.arange(new_len)), now=now, delay=delay)
    return agg


def test_rtc_new_chunk_takes_over_after_its_delay():
    agg = rtc_pair(delay=4)  # takeover at 0.2 + 4 * 0.1 = 0.6
    # Before the takeover the old chunk still runs, although the new one covers 0.3..
    assert scalar(agg, 0.3) == pytest.approx(3.0)
    assert scalar(agg, 0.5) == pytest.approx(5.0)
    assert scalar(agg, 0.55) == pytest.approx(5.5)
    # From the takeover on, the new chunk's row 4 onward.
    assert scalar(agg, 0.6) == pytest.approx(104.0)
    assert scalar(agg, 0.65) == pytest.approx(104.5)
    assert scalar(agg, 0.9) == pytest.approx(107.0)
    assert scalar(agg, 1.1) == pytest.approx(109.0)  # past the old chunk's end
    assert scalar(agg, 1.2) is None
    # "latest" switches at the new chunk's first kept stamp instead.
    latest = rtc_pair(delay=4, agg=LatestChunk(0.1))
    assert scalar(latest, 0.3) == pytest.approx(101.0)


def test_rtc_with_delay_zero_is_latest():
    times = np.linspace(0.25, 1.1, 35)
    rtc, _ = rtc_pair(delay=0).values_at(times)
    latest, _ = rtc_pair(delay=0, agg=LatestChunk(0.1)).values_at(times)
    np.testing.assert_array_equal(rtc, latest)


def test_rtc_first_chunk_uses_its_delayed_rows():
    agg = RealTimeChunks(0.1)
    assert agg.update(chunk(0.0, [5, 6, 7, 8]), now=0.0, delay=3)
    assert scalar(agg, 0.0) == pytest.approx(5.0)  # nothing older covers 0.0..0.2
    assert scalar(agg, 0.15) == pytest.approx(6.5)
    assert scalar(agg, 0.3) == pytest.approx(8.0)


def test_rtc_late_chunk_takes_over_at_arrival():
    agg = rtc_pair(delay=1, now=0.45)  # takeover 0.3 already past: first kept stamp 0.5
    assert scalar(agg, 0.45) == pytest.approx(4.5)
    assert scalar(agg, 0.5) == pytest.approx(103.0)
    assert agg.skipped_actions == 3


def test_rtc_delayed_rows_fill_a_gap():
    agg = RealTimeChunks(0.1)
    assert agg.update(chunk(0.0, [0, 1, 2]), now=0.0)  # ends at 0.2
    assert agg.update(chunk(0.1, 10.0 + np.arange(8)), now=0.1, delay=5)  # takeover 0.6
    assert scalar(agg, 0.15) == pytest.approx(1.5)  # the old chunk still covers it
    assert scalar(agg, 0.25) == pytest.approx(11.5)  # nothing older covers it: the new rows are used
    assert scalar(agg, 0.4) == pytest.approx(13.0)


def test_rtc_prunes_an_old_chunk_only_after_the_takeover():
    agg = rtc_pair(delay=4)  # new: takeover 0.6, ends 1.1 >= the old end 0.9
    agg.prune(0.55)
    assert agg.num_chunks == 2 and scalar(agg, 0.55) == pytest.approx(5.5)
    agg.prune(0.6)
    assert agg.num_chunks == 1 and scalar(agg, 0.6) == pytest.approx(104.0)
    # A newer chunk that ends first never hides the old one's tail.
    short = rtc_pair(delay=1, new_len=3)  # new: 0.3..0.4, takeover 0.3
    short.prune(0.35)
    assert short.num_chunks == 2
    assert scalar(short, 0.35) == pytest.approx(101.5)
    assert scalar(short, 0.5) == pytest.approx(5.0)


def test_other_modes_ignore_the_delay_and_bad_delays_are_refused():
    for mode, params in (("latest", {}), ("crossfade", {"overlap": 0.2}), ("temporal_ensemble", {})):
        with_delay = rtc_pair(delay=4, agg=make_aggregator(mode, 0.1, **params))
        without = rtc_pair(delay=0, agg=make_aggregator(mode, 0.1, **params))
        times = np.linspace(0.25, 1.1, 35)
        np.testing.assert_array_equal(with_delay.values_at(times)[0], without.values_at(times)[0])
    agg = RealTimeChunks(0.1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="whole number"):
            agg.update(chunk(0.0, [1, 2]), now=0.0, delay=bad)
    assert isinstance(make_aggregator("rtc", 0.1), RealTimeChunks)
    assert isinstance(AggregationConfig(mode="rtc").build(0.1), RealTimeChunks)
