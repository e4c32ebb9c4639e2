"""Merge overlapping action chunks into one action per point in time.

A policy returns a chunk of H actions computed from an observation taken at
``chunk.timestamp``; action k is meant for ``chunk.timestamp + k * dt``
(docs/control.md, "Chunk timing": chunks are indexed by the time of their
observation, so a chunk that arrives late is not executed from its first
action). Inference runs again before the current chunk is used up, so at any
time several chunks may predict the same instant. An aggregator keeps the
live chunks and answers "what action for time t?".

Work is split so that the control tick stays cheap: ``update`` (once per
chunk, a few Hz) drops late actions, converts to float64 and precomputes the
per-step differences used for interpolation; ``values_at`` (every tick)
evaluates all requested times with O(live chunks) vectorised numpy calls.

Queries are meant for times at or after the last ``now`` given to
``update`` / ``prune`` / ``remaining``: chunks that cannot contribute from
``now`` on are dropped there, so answers for earlier times are not kept.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import math

import numpy as np

from vla_ros.errors import check_positive_finite, ConfigError
from vla_ros.types import ActionChunk

# Tolerance in seconds when comparing times. ROS time is ~1.7e9 s since the
# epoch, where a float64 resolves only ~2.4e-7 s, so stamps computed as
# timestamp + k * dt cannot be compared exactly; 1 us is far below any
# control period.
TIME_EPS = 1e-6

AGGREGATION_MODES: tuple[str, ...] = ("temporal_ensemble", "latest", "crossfade", "rtc")


@dataclasses.dataclass(frozen=True)
class AggregationConfig:
    """How overlapping chunks are merged.

    mode: "temporal_ensemble" (default, ACT), "latest", "crossfade" or
        "rtc" (Real-Time Chunking: the newest chunk wins from its takeover
        time, see ``RealTimeChunks``).
    ensemble_m: decay of the temporal-ensemble weights exp(-m * age), age
        in control periods between the chunks' observation times, >= 0;
        0.01 is ACT's default (Zhao et al. 2023), where a chunk is made
        every control period.
    crossfade_overlap: seconds over which "crossfade" blends from the
        previous aggregate to a new chunk, > 0.
    """

    mode: str = "temporal_ensemble"
    ensemble_m: float = 0.01
    crossfade_overlap: float = 0.2

    def __post_init__(self) -> None:
        if self.mode not in AGGREGATION_MODES:
            raise ConfigError(
                "aggregation.mode",
                f"unknown mode {self.mode!r}; choose one of {', '.join(AGGREGATION_MODES)}",
            )
        _check_m(self.ensemble_m)
        check_positive_finite("aggregation.crossfade_overlap", self.crossfade_overlap)

    def build(self, dt: float, control_period: float | None = None) -> ChunkAggregator:
        """The aggregator this config describes, for a policy action period dt.

        ``control_period`` (default dt) is the unit of the temporal
        ensemble's chunk ages.
        """
        if self.mode == "temporal_ensemble":
            return TemporalEnsemble(dt, m=self.ensemble_m, period=control_period)
        if self.mode == "crossfade":
            return Crossfade(dt, overlap=self.crossfade_overlap)
        if self.mode == "rtc":
            return RealTimeChunks(dt)
        return LatestChunk(dt)


def _check_m(m: float) -> float:
    try:
        m = float(m)
    except (TypeError, ValueError):
        raise ConfigError("aggregation.ensemble_m", f"must be a number, got {m!r}") from None
    if not math.isfinite(m) or m < 0.0:
        raise ConfigError("aggregation.ensemble_m", f"must be a finite number >= 0, got {m!r}")
    return m


class _Chunk:
    """One accepted chunk, reduced to the actions still in the future.

    Action j is stamped ``start + j * dt``. ``table[j]`` stacks
    (actions[j], actions[j + 1] - actions[j]) so that interpolation is one
    gather and one multiply-add per sample; the last row has a zero
    difference, so u == last needs no special case.

    ``takeover`` (>= start) is where the chunk starts to win over older
    chunks in "rtc" mode (``RealTimeChunks``); the other modes ignore it.
    """

    __slots__ = ("stamp", "start", "end", "dt", "last", "table", "takeover")

    def __init__(
        self, stamp: float, start: float, dt: float, actions: np.ndarray, takeover: float | None = None
    ):
        self.stamp = stamp
        self.start = start
        self.takeover = start if takeover is None else max(start, takeover)
        self.dt = dt
        self.last = actions.shape[0] - 1
        self.end = start + self.last * dt
        diffs = np.zeros_like(actions)
        diffs[:-1] = actions[1:] - actions[:-1]
        self.table = np.stack([actions, diffs], axis=1)  # (K, 2, D)

    def sample(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Linear interpolation between stamped actions at ``times``.

        Returns (values (N, D), covered (N,) bool); values outside
        [start, end] are clamped to the nearest end and must be masked out.
        """
        covered = (times >= self.start - TIME_EPS) & (times <= self.end + TIME_EPS)
        u = (times - self.start) / self.dt
        # np.clip costs ~3x two ufuncs on arrays this small.
        np.maximum(u, 0.0, out=u)
        np.minimum(u, self.last, out=u)
        k = u.astype(np.intp)
        rows = self.table[k]
        u -= k
        return rows[:, 0] + u[:, None] * rows[:, 1], covered


class ChunkAggregator(abc.ABC):
    """Common store of live chunks; subclasses say how to merge them.

    update(chunk, now, delay=0):
      0. a chunk with any non-finite action is rejected (``non_finite_chunks``);
      1. action k is stamped ``chunk.timestamp + k * dt``; those with stamp
         < now are skipped (latency compensation) and counted in
         ``skipped_actions``; a chunk with nothing left is ignored
         (``ignored_chunks``);
      2. the rest is stored, ordered by observation timestamp (ties: arrival
         order), and chunks that can no longer contribute at or after
         ``now`` are dropped.
    A chunk covers t in [first kept stamp, last stamp], interpolating
    linearly between its stamps. ``delay`` (whole actions, >= 0) is the
    Real-Time Chunking inference delay d: only "rtc" uses it (the chunk takes
    over at ``timestamp + delay * dt``); the other modes accept and ignore it.
    """

    #: Keep a chunk's actions stamped before its arrival (never executed: every query is for
    #: times >= now) so that `values_at` can answer for a recent past time.
    keeps_past_actions = False

    def __init__(self, dt: float):
        self.dt = check_positive_finite("aggregation.dt", dt)
        self._chunks: list[_Chunk] = []
        self._stamps: list[float] = []
        self._dim: int | None = None
        self.skipped_actions = 0
        self.ignored_chunks = 0
        self.accepted_chunks = 0
        self.non_finite_chunks = 0

    # -- state -----------------------------------------------------------

    def reset(self) -> None:
        """Forget every chunk and zero the counters (new episode)."""
        self._chunks.clear()
        self._stamps.clear()
        self._dim = None
        self.skipped_actions = 0
        self.ignored_chunks = 0
        self.accepted_chunks = 0
        self.non_finite_chunks = 0

    @property
    def num_chunks(self) -> int:
        """Chunks currently stored (live)."""
        return len(self._chunks)

    def update(self, chunk: ActionChunk, now: float, delay: int = 0) -> bool:
        """Add ``chunk`` at time ``now``; False if rejected or nothing of it was left.

        ``delay``: actions of the chunk that older chunks keep covering ("rtc" only).
        """
        if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)) or delay < 0:
            raise ValueError(f"the chunk delay must be a whole number of actions >= 0, got {delay!r}")
        actions = np.asarray(chunk.actions)
        if actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] == 0:
            raise ValueError(f"action chunk must be a non-empty (H, D) array, got shape {actions.shape}")
        if self._dim is not None and actions.shape[1] != self._dim and self._chunks:
            raise ValueError(
                f"action chunk has {actions.shape[1]} dimensions but earlier chunks have {self._dim}"
            )
        stamp = float(chunk.timestamp)
        now = float(now)
        if not (math.isfinite(stamp) and math.isfinite(now)):
            raise ValueError(f"chunk timestamp {stamp} and now {now} must be finite")
        if not np.isfinite(actions).all():
            # One NaN would poison every merged value the chunk touches (and
            # 0 * NaN leaks into times it does not cover); drop it whole.
            self.non_finite_chunks += 1
            return False
        horizon = actions.shape[0]
        # Number of stamps strictly before now (with TIME_EPS slack).
        skip = math.ceil((now - stamp - TIME_EPS) / self.dt)
        skip = min(max(skip, 0), horizon)
        self.skipped_actions += skip
        if skip == horizon:
            self.ignored_chunks += 1
            self.prune(now)
            return False
        # Past actions are dropped, except where a mode keeps them to answer for times before now
        # ("rtc": the plan at a lagging observation's time, the next guidance target).
        first = 0 if self.keeps_past_actions else skip
        kept = np.array(actions[first:], dtype=np.float64)
        takeover = stamp + max(skip, int(delay)) * self.dt
        entry = _Chunk(stamp, stamp + first * self.dt, self.dt, kept, takeover)
        at = bisect.bisect_right(self._stamps, stamp)
        self._stamps.insert(at, stamp)
        self._chunks.insert(at, entry)
        self._dim = actions.shape[1]
        self.accepted_chunks += 1
        self.prune(now)
        return True

    def prune(self, now: float) -> None:
        """Drop chunks that cannot contribute at any time >= now."""
        keep = [i for i in range(len(self._chunks)) if not self._droppable(i, now)]
        if len(keep) != len(self._chunks):
            self._chunks = [self._chunks[i] for i in keep]
            self._stamps = [self._stamps[i] for i in keep]

    def _droppable(self, index: int, now: float) -> bool:
        return self._chunks[index].end < now - TIME_EPS

    def _taken_over(self, index: int, now: float, delay: float = 0.0) -> bool:
        """Whether a newer chunk that lasts at least as long took over by ``now``.

        A newer chunk takes over ``delay`` seconds after its start; where the
        newest chunk wins, it then hides chunk ``index`` at every t >= now.
        """
        old = self._chunks[index]
        return any(
            c.start + delay <= now + TIME_EPS and c.end >= old.end - TIME_EPS
            for c in self._chunks[index + 1 :]
        )

    # -- queries ---------------------------------------------------------

    def horizon_end(self) -> float | None:
        """Last time any stored chunk covers, or None without chunks."""
        if not self._chunks:
            return None
        return max(c.end for c in self._chunks)

    def remaining(self, now: float) -> float:
        """Seconds from ``now`` to the horizon end (0 when none); prunes first.

        Used to trigger the next inference early enough. Gaps inside the
        covered span (a late chunk starting after the previous one ended)
        are not subtracted.
        """
        self.prune(now)
        end = self.horizon_end()
        if end is None:
            return 0.0
        return max(0.0, end - float(now))

    def value_at(self, t: float) -> np.ndarray | None:
        """Aggregated action (D,) float64 at time t, or None if no chunk covers t."""
        values, covered = self.values_at(np.array([t], dtype=np.float64))
        if not covered[0]:
            return None
        return values[0]

    def values_at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Aggregated actions at many times in one pass (the per-tick path).

        Returns (values (N, D) float64, covered (N,) bool); rows that are not
        covered hold zeros and must be ignored.
        """
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        dim = self._dim or 0
        if not self._chunks or times.shape[0] == 0:
            return np.zeros((times.shape[0], dim)), np.zeros(times.shape[0], dtype=bool)
        t_min = times.min()
        t_max = times.max()
        live = [
            c for c in self._chunks if c.start - TIME_EPS <= t_max and c.end + TIME_EPS >= t_min
        ]
        return self._combine(live, times, dim)

    @abc.abstractmethod
    def _combine(
        self, chunks: list[_Chunk], times: np.ndarray, dim: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merge ``chunks`` (oldest first) at ``times``."""


class TemporalEnsemble(ChunkAggregator):
    """ACT temporal ensembling.

    Zhao et al. 2023, "Learning Fine-Grained Bimanual Manipulation with
    Low-Cost Hardware" (ACT). At time t every chunk c covering t contributes
    its action a_c(t) with weight

        w_c = exp(-m * (s_c - s_0) / period)

    where s_c is the chunk's observation time, s_0 that of the oldest chunk
    covering t, and ``period`` the control period, so the exponent counts
    control periods between the two observations. The action is
    sum_c w_c a_c(t) / sum_c w_c. ACT makes a chunk every control period
    and weights the i-th prediction for a step by exp(-m * i), oldest first:
    with one chunk per period this is exactly that, and with fewer chunks
    (one every n periods) a chunk's weight is what ACT's would be at its
    age, so m = 0.01 (ACT's default) keeps its meaning: chunks 10 periods
    apart weigh exp(-0.1) relative to each other. Larger m favours older
    predictions; m = 0 is the plain average. Note: the pi0 paper found
    ensembling hurt its policies (it ran chunks open-loop); "latest" or
    "crossfade" reproduce that.
    """

    def __init__(self, dt: float, m: float = 0.01, period: float | None = None):
        super().__init__(dt)
        self.m = _check_m(m)
        self.period = self.dt if period is None else check_positive_finite("control period", period)

    def _combine(self, chunks, times, dim):
        n = times.shape[0]
        total = np.zeros((n, dim))
        weight_sum = np.zeros(n)
        oldest = np.full(n, np.nan)  # s_0 per time: the first (oldest) covering chunk's stamp
        scale = self.m / self.period
        for chunk in chunks:
            values, covered = chunk.sample(times)
            first = covered & np.isnan(oldest)
            oldest[first] = chunk.stamp
            # Chunks are sorted oldest first, so the exponent is <= 0 and the
            # oldest covering chunk has weight 1 (no overflow, no 0 / 0).
            age = chunk.stamp - np.where(covered, oldest, chunk.stamp)
            w = np.where(covered, np.exp(-scale * age), 0.0)
            total += w[:, None] * values
            weight_sum += w
        covered = weight_sum > 0.0
        # Uncovered rows have weight_sum 0; divide by 1 there to keep zeros.
        total /= np.where(covered, weight_sum, 1.0)[:, None]
        return total, covered


class LatestChunk(ChunkAggregator):
    """The newest chunk (latest observation timestamp) covering t wins.

    This is open-loop chunk execution with latency compensation, what the
    pi0 paper does; switching to a new chunk can jump if the new prediction
    disagrees with the old one (the safety filter bounds the step).
    """

    def _combine(self, chunks, times, dim):
        out = np.zeros((times.shape[0], dim))
        covered = np.zeros(times.shape[0], dtype=bool)
        for chunk in chunks:
            values, cov = chunk.sample(times)
            out = np.where(cov[:, None], values, out)
            covered |= cov
        return out, covered

    def _droppable(self, index, now):
        # Fully hidden: a newer chunk already started by now and lasts at
        # least as long, so it wins at every t >= now this one covers.
        return super()._droppable(index, now) or self._taken_over(index, now)


class Crossfade(ChunkAggregator):
    """Blend linearly from the previous aggregate into each new chunk.

    Folding the chunks oldest to newest at time t: the aggregate so far is
    ``old``; a chunk that covers t with first kept stamp ``start`` gives
        alpha = clip((t - start) / overlap, 0, 1)
        value = (1 - alpha) * old + alpha * new
    and where only one of them covers t that one is used. So the output is
    continuous when a chunk arrives and has fully switched ``overlap``
    seconds later (the "weighted_average" idea of LeRobot's async client,
    with the weight ramped over time instead of fixed).
    """

    def __init__(self, dt: float, overlap: float = 0.2):
        super().__init__(dt)
        self.overlap = check_positive_finite("aggregation.crossfade_overlap", overlap)

    def _combine(self, chunks, times, dim):
        out = np.zeros((times.shape[0], dim))
        covered = np.zeros(times.shape[0], dtype=bool)
        for chunk in chunks:
            values, cov = chunk.sample(times)
            alpha = np.minimum(np.maximum((times - chunk.start) / self.overlap, 0.0), 1.0)
            # Not covered by older chunks: take the new one outright (out is 0 there).
            alpha[~covered] = 1.0
            # Not covered by this chunk: leave the old aggregate alone.
            alpha *= cov
            out += alpha[:, None] * (values - out)
            covered |= cov
        return out, covered

    def _droppable(self, index, now):
        # A newer chunk whose fade-in finished by now and that lasts at least
        # as long overrides this one (alpha = 1) at every t >= now.
        return super()._droppable(index, now) or self._taken_over(index, now, self.overlap)


class RealTimeChunks(ChunkAggregator):
    """Real-Time Chunking's merge: the newest chunk wins, from its takeover time.

    Black et al. 2025, "Real-Time Execution of Action Chunking Flow
    Policies"; LeRobot's ActionQueue in RTC mode. An inference that started
    from an observation at ``s`` and took d actions' time (``delay``) cannot
    change what the robot executes before ``s + d * dt``: those actions still
    come from the current plan, and the new chunk (whose first d rows were
    guided toward that plan) replaces the plan from there on. So a chunk
    wins at t (as in ``LatestChunk``) only where t >= its takeover time,
    ``max(first kept stamp, s + delay * dt)``; before that it is used only
    where no older chunk covers t (the first chunk, or a gap). A chunk that
    arrives after its takeover time takes over at its first action not yet
    past, as "latest" would. With delay 0 it executes exactly as "latest".

    A chunk keeps its rows from its observation time on, also those already
    past when it arrived (never executed), so that the plan still answers for
    the next observation's time when that observation is older than the
    arrival (camera stamps lag): the controller's guidance target starts
    there, and a plan pruned up to the arrival would leave it uncovered.
    """

    keeps_past_actions = True

    def _combine(self, chunks, times, dim):
        out = np.zeros((times.shape[0], dim))
        covered = np.zeros(times.shape[0], dtype=bool)
        for chunk in chunks:
            values, cov = chunk.sample(times)
            use = cov & ((times >= chunk.takeover - TIME_EPS) | ~covered)
            out = np.where(use[:, None], values, out)
            covered |= cov
        return out, covered

    def _droppable(self, index, now):
        # Hidden from now on: a newer chunk that took over by now and lasts
        # at least as long wins at every t >= now this one covers.
        if super()._droppable(index, now):
            return True
        old = self._chunks[index]
        return any(
            c.takeover <= now + TIME_EPS and c.end >= old.end - TIME_EPS for c in self._chunks[index + 1 :]
        )


_PARAMS: dict[str, tuple[str, ...]] = {
    "temporal_ensemble": ("m", "period"),
    "latest": (),
    "crossfade": ("overlap",),
    "rtc": (),
}


def make_aggregator(mode: str, dt: float, **params: float) -> ChunkAggregator:
    """Build an aggregator by name.

    "temporal_ensemble" (params: m, period: the control period, default dt),
    "latest" (none), "crossfade" (params: overlap) or "rtc" (none); anything
    else is a ConfigError.
    """
    if mode not in _PARAMS:
        raise ConfigError(
            "aggregation.mode",
            f"unknown mode {mode!r}; choose one of {', '.join(AGGREGATION_MODES)}",
        )
    for name in params:
        if name not in _PARAMS[mode]:
            allowed = ", ".join(_PARAMS[mode]) or "none"
            raise ConfigError(
                f"aggregation.{name}", f"not a parameter of mode {mode!r} (accepted: {allowed})"
            )
    if mode == "temporal_ensemble":
        return TemporalEnsemble(dt, **params)
    if mode == "crossfade":
        return Crossfade(dt, **params)
    if mode == "rtc":
        return RealTimeChunks(dt)
    return LatestChunk(dt)
