"""What the policy controller reports: diagnostics status, messages and values, timer jitter.

``PolicyController.status`` copies its state into a ``StatusSnapshot``
under its locks; ``build_status`` turns the snapshot into the level, the
one-line message and the ordered key/value pairs of a DiagnosticStatus,
outside the locks. ``PeriodRecorder`` measures the control timer's period
deviation. Nothing here knows about ROS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
import types
from typing import Any

import numpy as np

from vla_ros.actions.limits import CONFLICT, SafetyReport
from vla_ros.actions.watchdog import WatchdogStatus


@dataclasses.dataclass(frozen=True)
class ControllerStatus:
    """A diagnostics snapshot.

    level: 'OK', 'WARN' or 'ERROR'; message: why (empty when OK).
    holding: the last tick sent a hold; hold_reason says why.
    values: ordered key -> value pairs for the DiagnosticStatus.
    """

    level: str
    message: str
    holding: bool
    hold_reason: str
    paused: bool
    values: Mapping[str, object]


class PeriodRecorder:
    """Deviation of successive tick times from the nominal period, in a ring buffer.

    ``record`` is a few float operations (it runs on the control path);
    ``stats`` computes p50 / p99 / max over the last ``size`` periods.
    """

    def __init__(self, period: float, size: int = 1000):
        self.period = float(period)
        self._deviation = np.zeros(size)
        self._count = 0
        self._last: float | None = None
        self._last_sim: float | None = None

    def reset(self) -> None:
        self._count = 0
        self._last = None
        self._last_sim = None

    def record(self, t: float, sim_time: float | None = None) -> None:
        """Record a tick at wall time `t`.

        Under a simulated clock pass its time too: a timer driven by /clock stops
        while the clock stands still (before playback, at a pause) and jumps with
        it, and those gaps say nothing about the control thread's jitter, so a
        tick whose simulated period is off by more than half a period is not
        counted.
        """
        steady = sim_time is None or (
            self._last_sim is not None and abs(sim_time - self._last_sim - self.period) <= 0.5 * self.period
        )
        if self._last is not None and steady:
            self._deviation[self._count % self._deviation.shape[0]] = abs(t - self._last - self.period)
            self._count += 1
        self._last = t
        self._last_sim = sim_time

    @property
    def count(self) -> int:
        return self._count

    def stats(self) -> dict[str, float]:
        """{'p50_ms', 'p99_ms', 'max_ms', 'periods'} over the buffered periods (NaN when none)."""
        n = min(self._count, self._deviation.shape[0])
        if n == 0:
            return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan, "periods": 0}
        d = self._deviation[:n] * 1e3
        return {
            "p50_ms": float(np.percentile(d, 50)),
            "p99_ms": float(np.percentile(d, 99)),
            "max_ms": float(d.max()),
            "periods": int(n),
        }


def _percentiles(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


@dataclasses.dataclass(frozen=True)
class StatusSnapshot:
    """The controller's state at one instant, copied under its locks.

    events: '<reason>:<source>' -> (count, last time, last detail, rejected).
    latency, compute: recent inference latencies (observation to chunk) and
        compute times, seconds.
    decoded_tokens: tokens generated per recent inference, oldest first
        (decode models such as pi0-FAST; empty for the others).
    extra: further key -> value pairs, reported after the chunk counters
        (the boundary jump; the rtc.* values with aggregation.mode rtc).
    """

    now: float
    window: float
    watchdog: WatchdogStatus
    assembly: Any
    paused: bool
    holding: bool
    hold_reason: str
    safety: SafetyReport
    latency: Sequence[float]
    compute: Sequence[float]
    counts: Mapping[str, int]
    obs_time: float | None
    joint_time: float | None
    last_failure: str
    accepted_chunks: int
    ignored_chunks: int
    skipped_actions: int
    prompt: str
    prompt_source: str
    camera_topics: Mapping[str, str]
    events: Mapping[str, tuple[int, float, str, bool]] = dataclasses.field(default_factory=dict)
    decoded_tokens: Sequence[int] = ()
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)


def _decoded_tokens(counts: Sequence[int]) -> dict[str, object]:
    """Tokens per inference of a decode model (the stop token included); nothing for the others."""
    if not counts:
        return {}
    return {
        "inference.decoded_tokens_p50": float(np.percentile(np.asarray(counts, dtype=np.float64), 50)),
        "inference.decoded_tokens_last": int(counts[-1]),
    }


def build_status(snap: StatusSnapshot) -> ControllerStatus:
    """Level, message and values of the diagnostics for one snapshot."""
    watchdog, assembly, report, counts = snap.watchdog, snap.assembly, snap.safety, snap.counts
    paused, holding, hold_reason = snap.paused, snap.holding, snap.hold_reason
    latency, compute = _percentiles(snap.latency), _percentiles(snap.compute)
    errors: list[str] = []
    warnings: list[str] = []
    if paused:
        warnings.append("paused (call ~/resume)")
    elif holding:
        (errors if watchdog.level == "ERROR" else warnings).append(f"holding: {hold_reason}")
    if assembly is not None:
        for key, cam in assembly.cameras.items():
            name = f"camera {key} ({snap.camera_topics.get(key, '?')})"
            if cam.state == "masked":
                warnings.append(f"{name} masked: {cam.detail}")
            elif cam.state != "fresh" and assembly.ok is False:
                warnings.append(f"{name} {cam.detail}")
        if not assembly.ok and not holding:
            warnings.append(f"no observation: {assembly.reason}")
    recent = [e for e in snap.events.values() if 0.0 <= snap.now - e[1] <= snap.window]
    for count, last_time, detail, rejected in sorted(recent, key=lambda e: -e[1]):
        warnings.append(("rejected " if rejected else "") + detail)
    if report.last[CONFLICT]:
        warnings.append(
            "safety conflict on " + ", ".join(report.last[CONFLICT]) + ": the measured position is outside "
            "the position limits or farther than limits.max_distance_from_measured from any command the "
            "velocity limit allows; commanding toward it at the velocity limit"
        )
    elif report.last_clamped and not holding:
        warnings.append("clamped by limits: " + ", ".join(report.last_clamped))
    level = "ERROR" if errors else ("WARN" if warnings else "OK")
    message = "; ".join(errors + warnings) if level != "OK" else "executing policy actions"

    values: dict[str, object] = {
        "state": "PAUSED" if paused else ("HOLDING" if holding else "EXECUTING"),
        "hold_reason": hold_reason if holding else "",
        "watchdog": watchdog.reason or "OK",
        "prompt": snap.prompt,
        "prompt.source": snap.prompt_source,
        "inference.latency_p50_ms": latency[0] * 1e3,
        "inference.latency_p99_ms": latency[1] * 1e3,
        "inference.compute_p50_ms": compute[0] * 1e3,
        "inference.compute_p99_ms": compute[1] * 1e3,
        **_decoded_tokens(snap.decoded_tokens),
        "inference.requests": counts.get("requests", 0),
        "inference.failures": counts.get("failures", 0),
        "inference.last_failure": snap.last_failure,
        "chunks.accepted": snap.accepted_chunks,
        "chunks.ignored_late": snap.ignored_chunks,
        "chunks.dropped_stale": counts.get("stale_results", 0),
        "chunks.skipped_actions": snap.skipped_actions,
        **snap.extra,
        "observation.age_s": math.nan if snap.obs_time is None else snap.now - snap.obs_time,
        "observation.status": (
            "ok"
            if assembly is not None and assembly.ok
            else (assembly.reason if assembly is not None else "not assembled yet")
        ),
        "joint_state.age_s": math.nan if snap.joint_time is None else snap.now - snap.joint_time,
    }
    if assembly is not None:
        for key, cam in assembly.cameras.items():
            values[f"camera.{key}"] = cam.state + (f": {cam.detail}" if cam.detail else "")
            values[f"camera.{key}.topic"] = snap.camera_topics.get(key, "")
            values[f"camera.{key}.age_s"] = math.nan if cam.age is None else cam.age
    for key, (count, _, detail, rejected) in sorted(snap.events.items()):
        prefix = "rejected" if rejected else "warning"
        values[f"{prefix}.{key}"] = count
        values[f"{prefix}.{key}.last"] = detail
    for kind, per_joint in report.counts.items():
        values[f"safety.{kind}_clamps"] = sum(per_joint)
    values["safety.last_clamped"] = ", ".join(report.last_clamped)
    values["ticks.plans"] = counts.get("plans", 0)
    values["ticks.holds"] = counts.get("holds", 0)
    values["clock.backward_jumps"] = counts.get("clock_jumps", 0)
    return ControllerStatus(
        level, message, holding or paused, hold_reason, paused, types.MappingProxyType(values)
    )
