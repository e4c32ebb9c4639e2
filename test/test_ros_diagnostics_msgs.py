"""DiagnosticStatus building and value formatting (vla_ros.ros.diagnostics_msgs)."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
import pytest

from vla_ros.ros.diagnostics_msgs import diagnostic_status


def test_diagnostic_status_levels_and_compact_values() -> None:
    status = diagnostic_status(
        "vla_ros: inference",
        "WARN",
        "slow",
        {"rate_hz": 9.87654, "count": 3, "masked": True, "camera": "base_0_rgb", "latency": np.float32(0.5),
         "big": 1234567.0, "n": np.int64(7)},
        hardware_id="gpu0",
    )
    assert status.level == DiagnosticStatus.WARN
    assert (status.name, status.message, status.hardware_id) == ("vla_ros: inference", "slow", "gpu0")
    assert [(kv.key, kv.value) for kv in status.values] == [
        ("rate_hz", "9.877"),
        ("count", "3"),
        ("masked", "true"),
        ("camera", "base_0_rgb"),
        ("latency", "0.5"),
        ("big", "1.235e+06"),
        ("n", "7"),
    ]
    assert diagnostic_status("x", "OK", "").level == DiagnosticStatus.OK
    assert diagnostic_status("x", "ERROR", "").level == DiagnosticStatus.ERROR
    with pytest.raises(ValueError, match="'FATAL'"):
        diagnostic_status("x", "FATAL", "")
