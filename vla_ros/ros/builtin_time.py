"""builtin_interfaces Time / Duration <-> float seconds.

Everything past the ROS boundary (buffers, controller, aggregation) works in
float seconds on one clock; headers and `time_from_start` are (sec, nanosec)
pairs. The conversions live in one place so that the node, the bag tools and
the tests round the same way (nearest nanosecond, never a negative nanosec).
"""

from __future__ import annotations

import math

from builtin_interfaces.msg import Duration, Time

NANOSECONDS_PER_SECOND = 1_000_000_000


def _split_seconds(seconds: float, what: str) -> tuple[int, int]:
    """Seconds -> (sec, nanosec) with 0 <= nanosec < 1e9, rounded to the nearest ns.

    The fractional part is taken with floor first, so nanosec can never come
    out negative, and a fraction that rounds up to a full second carries.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite number >= 0 seconds, got {seconds}")
    sec = math.floor(seconds)
    nanosec = round((seconds - sec) * NANOSECONDS_PER_SECOND)
    if nanosec >= NANOSECONDS_PER_SECOND:
        sec += 1
        nanosec -= NANOSECONDS_PER_SECOND
    return int(sec), int(nanosec)


def stamp_to_seconds(stamp: Time | Duration) -> float:
    """builtin_interfaces Time (or Duration) -> float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_stamp(t: float) -> Time:
    """Float seconds (>= 0) -> builtin_interfaces Time, nearest nanosecond."""
    sec, nanosec = _split_seconds(t, "stamp")
    return Time(sec=sec, nanosec=nanosec)


def seconds_to_duration(t: float) -> Duration:
    """Float seconds (>= 0) -> builtin_interfaces Duration, nearest nanosecond."""
    sec, nanosec = _split_seconds(t, "duration")
    return Duration(sec=sec, nanosec=nanosec)


def as_stamp(stamp: Time | float | None) -> Time:
    """A header stamp from a Time (as is), float seconds, or None (zero)."""
    if stamp is None:
        return Time()
    if isinstance(stamp, Time):
        return stamp
    return seconds_to_stamp(float(stamp))
