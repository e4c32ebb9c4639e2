"""Normalization statistics: files, z-score / quantile maths, dimension mismatches, padding."""

import json

import numpy as np
import pytest

from vla_ros.errors import CheckpointError, ConfigError, ObservationError
from vla_ros.observation.normalize import (
    LEROBOT_NORM_MODES,
    load_norm_stats,
    MODE_STATS,
    Normalizer,
    NormStats,
    OPENPI_NORM_MODES,
    pad_to_dim,
    save_norm_stats,
)


def _stats(dim: int, seed: int = 0) -> NormStats:
    rng = np.random.default_rng(seed)
    q01 = rng.uniform(-2.0, 0.0, dim)
    return NormStats(
        mean=rng.uniform(-1.0, 1.0, dim),
        std=rng.uniform(0.1, 2.0, dim),
        q01=q01,
        q99=q01 + rng.uniform(0.5, 3.0, dim),
    )


def test_zscore_hand_computed_and_extra_dims_untouched():
    stats = NormStats(mean=[1.0, 2.0], std=[2.0, 0.5])
    norm = Normalizer({"state": stats, "actions": stats}, "zscore")
    out = norm.normalize_state(np.array([3.0, 2.5, 9.0, -4.0]))
    np.testing.assert_allclose(out, [2.0 / 2.000001, 0.5 / 0.500001, 9.0, -4.0], rtol=1e-12)


def test_quantile_hand_computed():
    stats = NormStats(mean=[0.0, 0.0], std=[1.0, 1.0], q01=[-1.0, 0.0], q99=[3.0, 10.0])
    norm = Normalizer({"state": stats, "actions": stats}, "quantile")
    out = norm.normalize_state(np.array([1.0, 10.0]))
    np.testing.assert_allclose(
        out, [2.0 / 4.000001 * 2 - 1, 10.0 / 10.000001 * 2 - 1], rtol=1e-12, atol=1e-15
    )
    # Unnormalizing -1 and 1 gives back q01 and q99 (+ the epsilon).
    np.testing.assert_allclose(norm.unnormalize_actions(np.array([-1.0, 1.0])), [-1.0, 10.000001], rtol=1e-12)


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
@pytest.mark.parametrize("stats_dim, vector_dim", [(14, 14), (14, 32), (32, 14)])
def test_action_round_trip(mode, stats_dim, vector_dim):
    stats = {"state": _stats(stats_dim, 1), "actions": _stats(stats_dim, 2)}
    norm = Normalizer(stats, mode)
    actions = np.random.default_rng(3).normal(size=(50, vector_dim))
    normalized = norm.normalize_actions(actions)
    n = min(stats_dim, vector_dim)
    assert not np.allclose(normalized[:, :n], actions[:, :n])
    np.testing.assert_array_equal(normalized[:, n:], actions[:, n:])
    np.testing.assert_allclose(norm.unnormalize_actions(normalized), actions, rtol=1e-12, atol=1e-12)


def test_batched_state_and_dtype_kept():
    stats = NormStats(mean=[1.0], std=[1.0])
    norm = Normalizer({"state": stats, "actions": stats}, "zscore")
    x = np.array([[1.0, 5.0], [3.0, 6.0]], dtype=np.float32)
    out = norm.normalize_state(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 5.0], [2.0 / 1.000001, 6.0]], rtol=1e-6)
    assert x[1, 0] == 3.0  # input not modified


def test_quantile_without_quantiles_is_a_checkpoint_error():
    stats = NormStats(mean=[0.0], std=[1.0])
    with pytest.raises(CheckpointError, match="q01 and q99"):
        Normalizer({"state": stats, "actions": stats}, "quantile")


def test_normalizer_config_errors():
    stats = NormStats(mean=[0.0], std=[1.0])
    # Errors name a real parameter (policy.normalization) or the statistics file, never "mode" / "eps".
    with pytest.raises(ConfigError) as err:
        Normalizer({"state": stats, "actions": stats}, "minmax", source="stats.json")
    assert err.value.parameter == "policy.normalization"
    assert "minmax" in str(err.value) and "stats.json" in str(err.value) and "'lerobot'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Normalizer({"state": stats, "actions": stats}, "zscore", "jax")
    assert err.value.parameter == "policy.normalization"
    both = {"state": stats, "actions": stats}
    with pytest.raises(CheckpointError, match=r"^stats\.json: unknown actions normalization mode 'log'"):
        Normalizer(both, "zscore", "lerobot", action_mode="log", source="stats.json")
    for eps in (0.0, -1e-8, True, "1e-8"):
        with pytest.raises(CheckpointError, match=r"^pre\.json: the normalizer eps must be a positive"):
            Normalizer(both, "zscore", "lerobot", eps=eps, source="pre.json")
    with pytest.raises(CheckpointError, match="actions"):
        Normalizer({"state": stats}, "zscore")
    with pytest.raises(CheckpointError, match=r"^s\.json: quantile normalization"):
        Normalizer({"state": stats, "actions": stats}, "quantile", source="s.json")


def test_one_table_of_the_statistics_each_mode_needs():
    assert MODE_STATS == {
        "zscore": ("mean", "std"), "quantile": ("q01", "q99"), "identity": (),
        "minmax": ("minimum", "maximum"), "quantile10": ("q10", "q90"),
    }
    assert LEROBOT_NORM_MODES == tuple(MODE_STATS) and set(OPENPI_NORM_MODES) < set(MODE_STATS)
    values = {name: [1.0] if name == "std" else [0.0] for pair in MODE_STATS.values() for name in pair}
    every = NormStats(**values)
    for mode, needed in MODE_STATS.items():
        Normalizer({"state": every, "actions": every}, mode, "lerobot")
        if not needed:
            continue
        other = ("q01", "q99") if needed == ("mean", "std") else ("mean", "std")
        lacking = NormStats(**{name: values[name] for name in other})
        with pytest.raises(CheckpointError, match=rf"^{mode} normalization.* needs {' and '.join(needed)}"):
            Normalizer({"state": lacking, "actions": every}, mode, "lerobot")


def test_norm_stats_validation():
    stats = NormStats(mean=[1, 2], std=[3, 4])
    assert stats.mean.dtype == np.float32 and stats.q01 is None
    with pytest.raises(ConfigError) as err:
        NormStats(mean=[1.0, 2.0], std=[1.0])
    assert err.value.parameter == "std"
    with pytest.raises(ConfigError) as err:
        NormStats(mean=[1.0], std=[1.0], q01=[0.0])
    assert err.value.parameter == "q99"
    with pytest.raises(ConfigError) as err:
        NormStats(mean=[np.nan], std=[1.0])
    assert err.value.parameter == "mean"


def test_save_load_round_trip_is_exact(tmp_path):
    stats = {"state": _stats(14, 4), "actions": _stats(14, 5)}
    save_norm_stats(tmp_path / "ckpt" / "assets" / "trossen" / "norm_stats.json", stats)
    loaded = load_norm_stats(tmp_path / "ckpt")
    assert set(loaded) == {"state", "actions"}
    for key in stats:
        for field in ("mean", "std", "q01", "q99"):
            np.testing.assert_array_equal(getattr(loaded[key], field), getattr(stats[key], field))
    raw = json.loads((tmp_path / "ckpt" / "assets" / "trossen" / "norm_stats.json").read_text())
    assert set(raw["norm_stats"]["state"]) == {"mean", "std", "q01", "q99"}


def test_load_picks_asset_dir_and_falls_back_beside_weights(tmp_path):
    one = {"state": NormStats(mean=[1.0], std=[1.0]), "actions": NormStats(mean=[1.0], std=[1.0])}
    two = {"state": NormStats(mean=[2.0], std=[1.0]), "actions": NormStats(mean=[2.0], std=[1.0])}
    ckpt = tmp_path / "ckpt"
    save_norm_stats(ckpt / "norm_stats.json", one)
    assert load_norm_stats(ckpt)["state"].mean[0] == 1.0
    # Asset ids may be nested (openpi uses repo ids like "physical-intelligence/libero").
    save_norm_stats(ckpt / "assets" / "physical-intelligence" / "libero" / "norm_stats.json", two)
    assert load_norm_stats(ckpt)["state"].mean[0] == 2.0
    save_norm_stats(ckpt / "assets" / "trossen" / "norm_stats.json", one)
    with pytest.raises(CheckpointError) as err:
        load_norm_stats(ckpt)
    assert "physical-intelligence/libero" in str(err.value) and "trossen" in str(err.value)
    assert load_norm_stats(ckpt, asset_id="trossen")["state"].mean[0] == 1.0
    assert load_norm_stats(ckpt, asset_id="physical-intelligence/libero")["state"].mean[0] == 2.0
    with pytest.raises(CheckpointError, match="trossen"):
        load_norm_stats(ckpt, asset_id="droid")


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no normalization statistics"):
        load_norm_stats(tmp_path)
    (tmp_path / "norm_stats.json").write_text('{"state": {"mean": [0], "std": [1]}}')
    with pytest.raises(CheckpointError, match="norm_stats"):
        load_norm_stats(tmp_path)
    (tmp_path / "norm_stats.json").write_text('{"norm_stats": {"state": {"mean": [0, 1], "std": [1]}}}')
    with pytest.raises(CheckpointError, match="std"):
        load_norm_stats(tmp_path)
    (tmp_path / "norm_stats.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_norm_stats(tmp_path)


def test_pad_to_dim():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    out = pad_to_dim(x, 5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1, 2, 3, 0, 0], [4, 5, 6, 0, 0]])
    assert pad_to_dim(np.ones(7)).shape == (32,)
    same = np.ones(32)
    np.testing.assert_array_equal(pad_to_dim(same), same)
    with pytest.raises(ObservationError, match="33 dims"):
        pad_to_dim(np.ones(33))
