"""Normalization of state and actions with the statistics a checkpoint was trained with.

The policy works in normalized units: the state is normalized before it goes
in and the actions that come out are unnormalized back to robot units, with
the dataset statistics in the checkpoint's `norm_stats.json` (docs/preprocessing.md,
"Normalization"). pi0 uses z-scores, pi0.5 maps the 1%..99% quantile range to
[-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
from pathlib import Path
from typing import Literal

import numpy as np

from vla_ros.errors import CheckpointError, ConfigError, ObservationError

NormMode = Literal["zscore", "quantile"]
NORM_MODES: tuple[str, ...] = ("zscore", "quantile")
NORM_STATS_FILE = "norm_stats.json"
MODEL_DIM = 32
# Same epsilon as the reference, in both directions, so unnormalize inverts normalize.
_EPS = 1e-6


def _vector(name: str, value: object) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ConfigError(name, f"expected a list of numbers: {exc}") from exc
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(name, f"got shape {array.shape}; expected a non-empty 1-D vector")
    if not np.all(np.isfinite(array)):
        raise ConfigError(name, "contains NaN or inf")
    return array


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Statistics of one quantity (state or actions), one value per dimension.

    mean, std: for z-score normalization (pi0).
    q01, q99: 1% and 99% quantiles for quantile normalization (pi0.5);
        optional, but both or neither.
    """

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Frozen: converting the fields needs object.__setattr__.
        object.__setattr__(self, "mean", _vector("mean", self.mean))
        object.__setattr__(self, "std", _vector("std", self.std))
        if (self.q01 is None) != (self.q99 is None):
            raise ConfigError("q01" if self.q01 is None else "q99", "q01 and q99 must be given together")
        if self.q01 is not None:
            object.__setattr__(self, "q01", _vector("q01", self.q01))
            object.__setattr__(self, "q99", _vector("q99", self.q99))
        dim = self.mean.shape[0]
        for name in ("std", "q01", "q99"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != dim:
                raise ConfigError(name, f"has {value.shape[0]} values; expected {dim} like mean")
        if np.any(self.std < 0):
            raise ConfigError("std", f"must be >= 0, got {self.std.tolist()}")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def has_quantiles(self) -> bool:
        return self.q01 is not None

    def to_json(self) -> dict[str, list[float]]:
        """The `norm_stats.json` entry for this quantity."""
        out = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.q01 is not None and self.q99 is not None:
            out["q01"] = self.q01.tolist()
            out["q99"] = self.q99.tolist()
        return out


def _parse_norm_stats(path: Path) -> dict[str, NormStats]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read normalization statistics '{path}': {exc}") from exc
    expected = (
        '{"norm_stats": {"state": {"mean": [...], "std": [...], "q01": [...], "q99": [...]},'
        ' "actions": {...}}}'
    )
    if not isinstance(data, dict) or not isinstance(data.get("norm_stats"), dict):
        raise CheckpointError(f"'{path}' has no top-level 'norm_stats' object; expected {expected}")
    stats: dict[str, NormStats] = {}
    for key, entry in data["norm_stats"].items():
        if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
            raise CheckpointError(
                f"'{path}': norm_stats['{key}'] needs 'mean' and 'std' lists; expected {expected}"
            )
        try:
            stats[key] = NormStats(
                mean=entry["mean"], std=entry["std"], q01=entry.get("q01"), q99=entry.get("q99")
            )
        except ConfigError as exc:
            raise CheckpointError(f"'{path}': norm_stats['{key}']: {exc}") from exc
    return stats


def find_norm_stats(checkpoint_dir: str | Path, asset_id: str | None = None) -> Path:
    """Locate the `norm_stats.json` of a checkpoint.

    Looks for `assets/<asset_id>/norm_stats.json` (asset ids may contain '/',
    e.g. `physical-intelligence/libero`); without `asset_id` there must be
    exactly one such file. With no `assets/` stats at all, falls back to
    `norm_stats.json` beside the weights.

    Raises:
        CheckpointError: nothing found, or several asset dirs and no `asset_id`.
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory '{root}' does not exist")
    assets = root / "assets"
    found: list[str] = []
    if assets.is_dir():
        found = sorted(p.parent.relative_to(assets).as_posix() for p in assets.rglob(NORM_STATS_FILE))
    if asset_id is not None:
        path = assets / asset_id / NORM_STATS_FILE
        if not path.is_file():
            raise CheckpointError(
                f"no '{path}'; asset ids with normalization statistics in '{root}': {found}"
            )
        return path
    if len(found) == 1:
        return assets / found[0] / NORM_STATS_FILE
    if len(found) > 1:
        raise CheckpointError(
            f"'{assets}' holds several asset dirs with {NORM_STATS_FILE}: {found}; choose one with asset_id"
        )
    beside = root / NORM_STATS_FILE
    if beside.is_file():
        return beside
    raise CheckpointError(
        f"no normalization statistics in '{root}': "
        f"expected assets/<asset_id>/{NORM_STATS_FILE} or {NORM_STATS_FILE}"
    )


def load_norm_stats(checkpoint_dir: str | Path, asset_id: str | None = None) -> dict[str, NormStats]:
    """Load every quantity (usually "state" and "actions") from a checkpoint's stats.

    The file is located as in `find_norm_stats`.
    """
    return _parse_norm_stats(find_norm_stats(checkpoint_dir, asset_id))


def save_norm_stats(path: str | Path, stats: Mapping[str, NormStats]) -> Path:
    """Write `stats` as a `norm_stats.json` file at `path` (parent dirs created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"norm_stats": {key: value.to_json() for key, value in stats.items()}}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return out


def _float_array(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 0:
        raise ObservationError(f"{name}: got a scalar; expected shape (D,) or (..., D)")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


class Normalizer:
    """Normalizes states and unnormalizes actions for one checkpoint.

    Stats and vectors may differ in length (stats for the robot's dims, the
    vector padded to 32, or the other way round): only the leading
    min(len(stats), len(vector)) dims are transformed, the rest pass as is.
    Arrays keep their float dtype; the arithmetic is done in float64.

    Args:
        stats: at least "state" and "actions".
        mode: "zscore" (pi0) or "quantile" (pi0.5).

    Raises:
        ConfigError: unknown mode.
        CheckpointError: "state"/"actions" missing, or quantile mode without q01/q99.
    """

    def __init__(self, stats: Mapping[str, NormStats], mode: NormMode) -> None:
        if mode not in NORM_MODES:
            raise ConfigError("mode", f"got {mode!r}; expected one of {list(NORM_MODES)}")
        for key in ("state", "actions"):
            if key not in stats:
                raise CheckpointError(
                    f"normalization statistics have no '{key}' entry; found {sorted(stats)}"
                )
            if mode == "quantile" and not stats[key].has_quantiles:
                raise CheckpointError(
                    f"quantile normalization (pi0.5) needs q01 and q99, but the '{key}' statistics have"
                    " only mean/std; use stats computed with quantiles or mode='zscore'"
                )
        self._state = stats["state"]
        self._actions = stats["actions"]
        self._mode: NormMode = mode

    @property
    def mode(self) -> NormMode:
        return self._mode

    @property
    def state_dim(self) -> int:
        """Dimensions of the state statistics (the state the checkpoint was trained on)."""
        return self._state.dim

    @property
    def action_dim(self) -> int:
        """Dimensions of the action statistics (the actions the checkpoint was trained on)."""
        return self._actions.dim

    def _offset_scale(self, stats: NormStats) -> tuple[np.ndarray, np.ndarray]:
        # normalized = (x - offset) / scale, for both modes.
        if self._mode == "zscore":
            return stats.mean.astype(np.float64), stats.std.astype(np.float64) + _EPS
        assert stats.q01 is not None and stats.q99 is not None
        q01 = stats.q01.astype(np.float64)
        return q01, stats.q99.astype(np.float64) - q01 + _EPS

    def _normalize(self, x: np.ndarray, stats: NormStats, name: str) -> np.ndarray:
        x = _float_array(x, name)
        offset, scale = self._offset_scale(stats)
        n = min(x.shape[-1], offset.shape[0])
        out = x.copy()
        head = (x[..., :n].astype(np.float64) - offset[:n]) / scale[:n]
        if self._mode == "quantile":
            head = head * 2.0 - 1.0
        out[..., :n] = head
        return out

    def normalize_state(self, x: np.ndarray) -> np.ndarray:
        """Robot-unit state (..., D) -> model units."""
        return self._normalize(x, self._state, "state")

    def normalize_actions(self, a: np.ndarray) -> np.ndarray:
        """Robot-unit actions (..., D) -> model units (for evaluation against recorded actions)."""
        return self._normalize(a, self._actions, "actions")

    def unnormalize_actions(self, a: np.ndarray) -> np.ndarray:
        """Model-unit actions (..., D) -> robot units (exact inverse of `normalize_actions`)."""
        a = _float_array(a, "actions")
        offset, scale = self._offset_scale(self._actions)
        n = min(a.shape[-1], offset.shape[0])
        out = a.copy()
        head = a[..., :n].astype(np.float64)
        if self._mode == "quantile":
            head = (head + 1.0) / 2.0
        out[..., :n] = head * scale[:n] + offset[:n]
        return out


def pad_to_dim(x: np.ndarray, dim: int = MODEL_DIM) -> np.ndarray:
    """Zero-pad the last axis of `x` to `dim` (the model's 32 state/action dims).

    Raises:
        ObservationError: if the last axis is already longer than `dim`.
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise ObservationError(f"pad_to_dim: got a scalar; expected shape (D,) or (..., D) with D <= {dim}")
    if x.shape[-1] > dim:
        raise ObservationError(
            f"vector has {x.shape[-1]} dims, more than the model's {dim}; "
            "the robot has too many joints for this model"
        )
    if x.shape[-1] == dim:
        return x
    out = np.zeros(x.shape[:-1] + (dim,), dtype=x.dtype)
    out[..., : x.shape[-1]] = x
    return out
