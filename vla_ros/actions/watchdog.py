"""Decide, every control tick, whether the policy may drive the robot.

Inference and sensing run in other threads and can stall silently; the
control timer must notice and hold position instead of executing actions
computed from an old view of the world.
"""

from __future__ import annotations

import dataclasses

from vla_ros.errors import check_positive_finite

LEVELS: tuple[str, ...] = ("OK", "WARN", "ERROR")


@dataclasses.dataclass(frozen=True)
class WatchdogStatus:
    """What the control timer should do now.

    level: "OK" | "WARN" | "ERROR" (diagnostic_msgs style).
    reason: empty when OK.
    hold: True when the robot must hold instead of executing actions.
    """

    level: str
    reason: str
    hold: bool

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")


_OK = WatchdogStatus("OK", "", False)


def _hold(level: str, reason: str) -> WatchdogStatus:
    return WatchdogStatus(level, reason, True)


def _timeout(parameter: str, value: float) -> float:
    return check_positive_finite(parameter, value, "number of seconds")


class Watchdog:
    """Freshness checks on observations and action chunks.

    status(now) takes the first rule that matches:
      1. inference failed since the last chunk      -> ERROR, hold
      2. no observation yet                         -> WARN,  hold
      3. now - last observation > obs_timeout       -> ERROR, hold
      4. no chunk yet                               -> WARN,  hold
      5. now - last chunk > inference_timeout       -> ERROR, hold
      6. now past the chunks' horizon end (if told) -> WARN,  hold
      7. otherwise                                  -> OK
    A failure stays latched until the next ``update_chunk``: one good chunk
    is the evidence that inference works again. Times are seconds on the
    same clock as ``now``.
    """

    def __init__(self, obs_timeout: float, inference_timeout: float):
        self.obs_timeout = _timeout("watchdog.obs_timeout", obs_timeout)
        self.inference_timeout = _timeout("watchdog.inference_timeout", inference_timeout)
        self.reset()

    def reset(self) -> None:
        """Forget everything: back to waiting for the first observation."""
        self._last_obs: float | None = None
        self._last_chunk: float | None = None
        self._horizon_end: float | None = None
        self._failure: str | None = None

    def update_observation(self, t: float) -> None:
        """Record that an observation taken at time t was received."""
        self._last_obs = float(t)

    def update_chunk(self, t: float, horizon_end: float | None = None) -> None:
        """Record that a fresh action chunk arrived at time t.

        ``horizon_end`` is the last time the aggregated chunks cover (None:
        not checked).
        """
        self._last_chunk = float(t)
        self._horizon_end = None if horizon_end is None else float(horizon_end)
        self._failure = None

    def inference_failed(self, reason: str) -> None:
        """Record that inference raised or returned garbage; hold until the next chunk."""
        self._failure = reason or "unknown error"

    def status(self, now: float) -> WatchdogStatus:
        if self._failure is not None:
            return _hold("ERROR", f"inference failed: {self._failure}")
        if self._last_obs is None:
            return _hold("WARN", "waiting for the first observation")
        obs_age = now - self._last_obs
        if obs_age > self.obs_timeout:
            return _hold(
                "ERROR", f"observations stale: last one {obs_age:.3f} s ago (timeout {self.obs_timeout:g} s)"
            )
        if self._last_chunk is None:
            return _hold("WARN", "waiting for the first action chunk")
        chunk_age = now - self._last_chunk
        if chunk_age > self.inference_timeout:
            return _hold(
                "ERROR", f"no action chunk for {chunk_age:.3f} s (timeout {self.inference_timeout:g} s)"
            )
        if self._horizon_end is not None and now > self._horizon_end:
            return _hold(
                "WARN", f"action chunks ran out {now - self._horizon_end:.3f} s ago; inference is too slow"
            )
        return _OK
