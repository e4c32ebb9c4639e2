"""Normalization of state and actions with the statistics a checkpoint was trained with.

The policy works in normalized units: the state is normalized before it goes
in and the actions that come out are unnormalized back to robot units, with
the dataset statistics in the checkpoint's `norm_stats.json` (docs/preprocessing.md,
"Normalization"). pi0 uses z-scores, pi0.5 maps the 1%..99% quantile range to
[-1, 1].

Two conventions exist for the same modes. "openpi" (the default) adds 1e-6 to
the scale in both directions and computes in float64. "lerobot" follows
LeRobot's `NormalizerProcessorStep` exactly: z-score divides by std + eps
(eps 1e-8, from the processor file) only on the way in and multiplies by the
bare std on the way out; the ranges (quantiles, min/max) replace a zero width
by eps instead of adding it; the arithmetic is done in the input's float
dtype, as LeRobot casts its statistics to the tensor's. LeRobot also has
"identity", "minmax" (MIN_MAX) and "quantile10" (QUANTILE10) modes.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
from pathlib import Path
from typing import Literal

import numpy as np

from vla_ros.errors import CheckpointError, ConfigError, ObservationError

NormMode = Literal["zscore", "quantile", "identity", "minmax", "quantile10"]
# The one table of which statistics (NormStats fields) each mode needs: (offset / low, scale / high).
MODE_STATS: Mapping[str, tuple[str, ...]] = {
    "zscore": ("mean", "std"),
    "quantile": ("q01", "q99"),
    "identity": (),
    "minmax": ("minimum", "maximum"),
    "quantile10": ("q10", "q90"),
}
# The modes openpi uses; "lerobot" adds the others.
OPENPI_NORM_MODES: tuple[str, ...] = ("zscore", "quantile")
LEROBOT_NORM_MODES: tuple[str, ...] = tuple(MODE_STATS)
NormConvention = Literal["openpi", "lerobot"]
NORM_CONVENTIONS: tuple[str, ...] = ("openpi", "lerobot")
# LeRobot's NormalizerProcessorStep default (the processor files record theirs).
LEROBOT_EPS = 1e-8
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
    q10, q90, minimum, maximum: LeRobot's QUANTILE10 and MIN_MAX modes;
        optional, in pairs.

    openpi's norm_stats.json always has mean and std; LeRobot statistics may
    have any pairs, at least one.
    """

    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None
    q10: np.ndarray | None = None
    q90: np.ndarray | None = None
    minimum: np.ndarray | None = None
    maximum: np.ndarray | None = None

    _PAIRS = (("mean", "std"), ("q01", "q99"), ("q10", "q90"), ("minimum", "maximum"))

    def __post_init__(self) -> None:
        # Frozen: converting the fields needs object.__setattr__.
        dim = None
        for low, high in self._PAIRS:
            if (getattr(self, low) is None) != (getattr(self, high) is None):
                missing = low if getattr(self, low) is None else high
                raise ConfigError(missing, f"{low} and {high} must be given together")
            for name in (low, high):
                if getattr(self, name) is None:
                    continue
                value = _vector(name, getattr(self, name))
                object.__setattr__(self, name, value)
                if dim is None:
                    dim = (name, value.shape[0])
                elif value.shape[0] != dim[1]:
                    raise ConfigError(name, f"has {value.shape[0]} values; expected {dim[1]} like {dim[0]}")
        if dim is None:
            raise ConfigError("mean", "no statistics given: expected mean/std, q01/q99, q10/q90 or min/max")
        if self.std is not None and np.any(self.std < 0):
            raise ConfigError("std", f"must be >= 0, got {self.std.tolist()}")

    @property
    def dim(self) -> int:
        for name in ("mean", "q01", "q10", "minimum"):
            value = getattr(self, name)
            if value is not None:
                return int(value.shape[0])
        raise AssertionError("NormStats without statistics")  # __post_init__ refuses those

    @property
    def has_quantiles(self) -> bool:
        return self.q01 is not None

    def has(self, *names: str) -> bool:
        """Whether every statistic in `names` is present."""
        return all(getattr(self, name) is not None for name in names)

    def to_json(self) -> dict[str, list[float]]:
        """The `norm_stats.json` entry for this quantity (the statistics present)."""
        out = {}
        for low, high in self._PAIRS:
            if getattr(self, low) is not None:
                out[low] = getattr(self, low).tolist()
                out[high] = getattr(self, high).tolist()
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
    Arrays keep their float dtype.

    Args:
        stats: at least "state" and "actions".
        mode: the state's mode, "zscore" (pi0) or "quantile" (pi0.5); with
            the "lerobot" convention also "identity", "minmax", "quantile10".
        convention: "openpi" (1e-6 added to the scale both ways, float64
            arithmetic) or "lerobot" (LeRobot's formulas, module docstring).
        action_mode: the actions' mode (default: `mode`); LeRobot's
            normalization_mapping may give state and actions different ones.
        eps: LeRobot's epsilon (the processor file's `eps`); "lerobot" only.
        source: where the statistics and modes come from (a file or files),
            for the error messages.

    Raises:
        ConfigError("policy.normalization", ...): an unknown convention, or
            "openpi" with a mode only LeRobot has.
        CheckpointError: "state"/"actions" missing, an unknown mode, a mode
            without its statistics (quantile without q01/q99, ...) or an eps
            that is not a positive number; each names `source`.
    """

    def __init__(
        self,
        stats: Mapping[str, NormStats],
        mode: NormMode,
        convention: NormConvention = "openpi",
        *,
        action_mode: NormMode | None = None,
        eps: float = LEROBOT_EPS,
        source: str | Path = "",
    ) -> None:
        if convention not in NORM_CONVENTIONS:
            raise ConfigError(
                "policy.normalization", f"got {convention!r}; expected one of {list(NORM_CONVENTIONS)}"
            )
        where = f"{source}: " if str(source) else ""
        action_mode = mode if action_mode is None else action_mode
        for key, key_mode in (("state", mode), ("actions", action_mode)):
            if key_mode not in MODE_STATS:
                raise CheckpointError(
                    f"{where}unknown {key} normalization mode {key_mode!r}; expected one of "
                    f"{list(MODE_STATS)}"
                )
            if convention == "openpi" and key_mode not in OPENPI_NORM_MODES:
                raise ConfigError(
                    "policy.normalization",
                    f"the openpi convention has no formula for the {key_mode} mode of the {key} statistics"
                    f"{f' ({source})' if str(source) else ''}, only for {list(OPENPI_NORM_MODES)}; "
                    "use 'auto' or 'lerobot'",
                )
            if key not in stats:
                raise CheckpointError(
                    f"{where}normalization statistics have no '{key}' entry; found {sorted(stats)}"
                )
            needed = MODE_STATS[key_mode]
            if not stats[key].has(*needed):
                raise CheckpointError(
                    f"{where}{key_mode} normalization{' (pi0.5)' if key_mode == 'quantile' else ''} needs "
                    f"{' and '.join(needed)}, but the '{key}' statistics have only "
                    f"{'/'.join(stats[key].to_json())}; use stats computed with "
                    f"{'quantiles' if key_mode == 'quantile' else ' and '.join(needed)} or another mode"
                    + (" (mode='zscore')" if convention == "openpi" else "")
                )
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise CheckpointError(f"{where}the normalizer eps must be a positive number, got {eps!r}")
        self._state = stats["state"]
        self._actions = stats["actions"]
        self._mode: NormMode = mode
        self._action_mode: NormMode = action_mode
        self._convention: NormConvention = convention
        self._eps = float(eps)

    @property
    def mode(self) -> NormMode:
        """The state's mode (the actions' is `action_mode`)."""
        return self._mode

    @property
    def action_mode(self) -> NormMode:
        return self._action_mode

    @property
    def convention(self) -> NormConvention:
        return self._convention

    @property
    def eps(self) -> float:
        """LeRobot's epsilon (unused by the openpi convention, which adds 1e-6)."""
        return self._eps

    def describe(self) -> str:
        """One line: modes and convention, e.g. 'state zscore, actions zscore (lerobot formulas)'."""
        return f"state {self._mode}, actions {self._action_mode} ({self._convention} formulas)"

    @property
    def state_dim(self) -> int:
        """Dimensions of the state statistics (the state the checkpoint was trained on)."""
        return self._state.dim

    @property
    def action_dim(self) -> int:
        """Dimensions of the action statistics (the actions the checkpoint was trained on)."""
        return self._actions.dim

    def _offset_scale(self, stats: NormStats, mode: NormMode) -> tuple[np.ndarray, np.ndarray]:
        # openpi: normalized = (x - offset) / scale, for both modes.
        if mode == "zscore":
            return stats.mean.astype(np.float64), stats.std.astype(np.float64) + _EPS
        assert stats.q01 is not None and stats.q99 is not None
        q01 = stats.q01.astype(np.float64)
        return q01, stats.q99.astype(np.float64) - q01 + _EPS

    def _transform(self, x: np.ndarray, stats: NormStats, mode: NormMode, name: str, inverse: bool):
        x = _float_array(x, name)
        out = x.copy()
        if mode == "identity":
            return out
        n = min(x.shape[-1], stats.dim)
        if self._convention == "lerobot":
            out[..., :n] = _lerobot_transform(x[..., :n], stats, mode, self._eps, n, inverse)
            return out
        offset, scale = self._offset_scale(stats, mode)
        head = x[..., :n].astype(np.float64)
        if inverse:
            if mode == "quantile":
                head = (head + 1.0) / 2.0
            out[..., :n] = head * scale[:n] + offset[:n]
        else:
            head = (head - offset[:n]) / scale[:n]
            out[..., :n] = head * 2.0 - 1.0 if mode == "quantile" else head
        return out

    def normalize_state(self, x: np.ndarray) -> np.ndarray:
        """Robot-unit state (..., D) -> model units."""
        return self._transform(x, self._state, self._mode, "state", inverse=False)

    def normalize_actions(self, a: np.ndarray) -> np.ndarray:
        """Robot-unit actions (..., D) -> model units (for evaluation against recorded actions)."""
        return self._transform(a, self._actions, self._action_mode, "actions", inverse=False)

    def unnormalize_actions(self, a: np.ndarray) -> np.ndarray:
        """Model-unit actions (..., D) -> robot units.

        The exact inverse of `normalize_actions` for "openpi"; for "lerobot"
        LeRobot's inverse, which drops the z-score eps (so it is not exact).
        """
        return self._transform(a, self._actions, self._action_mode, "actions", inverse=True)


def _lerobot_transform(
    x: np.ndarray, stats: NormStats, mode: str, eps: float, n: int, inverse: bool
) -> np.ndarray:
    """LeRobot's `_NormalizationMixin._apply_transform`, op for op, in x's float dtype."""
    dtype = x.dtype.type
    if mode == "zscore":
        mean, std = stats.mean[:n].astype(dtype), stats.std[:n].astype(dtype)
        if inverse:
            return x * std + mean
        return (x - mean) / (std + dtype(eps))
    low_name, high_name = MODE_STATS[mode]
    low = getattr(stats, low_name)[:n].astype(dtype)
    width = getattr(stats, high_name)[:n].astype(dtype) - low
    width = np.where(width == 0, dtype(eps), width).astype(dtype)
    if mode == "minmax":
        if inverse:
            return (x + dtype(1)) / dtype(2) * width + low
        return dtype(2) * (x - low) / width - dtype(1)
    if inverse:
        return (x + dtype(1.0)) * width / dtype(2.0) + low
    return dtype(2.0) * (x - low) / width - dtype(1.0)


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
