"""builtin_interfaces Time / Duration <-> float seconds (vla_ros.ros.builtin_time)."""

from __future__ import annotations

from builtin_interfaces.msg import Time
import pytest

from vla_ros.ros.builtin_time import seconds_to_duration, seconds_to_stamp, stamp_to_seconds


def test_stamp_to_seconds() -> None:
    assert stamp_to_seconds(Time(sec=12, nanosec=500_000_000)) == 12.5
    assert stamp_to_seconds(Time()) == 0.0


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (0.0, (0, 0)),
        (1.5, (1, 500_000_000)),
        (1.999999999, (1, 999_999_999)),
        (2.9999999999, (3, 0)),  # rounds up to a whole second: carried, not nanosec=1e9
        (1_700_000_000.25, (1_700_000_000, 250_000_000)),
    ],
)
def test_seconds_to_stamp(seconds: float, expected: tuple[int, int]) -> None:
    stamp = seconds_to_stamp(seconds)
    assert (stamp.sec, stamp.nanosec) == expected


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_seconds_to_stamp_rejects_negative_and_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        seconds_to_stamp(bad)
    with pytest.raises(ValueError, match="duration"):
        seconds_to_duration(bad)
