"""diagnostic_msgs DiagnosticStatus / DiagnosticArray from plain values.

The controller reports its health as a level, a message and a mapping of
named values (vla_ros.controller.PolicyController.status); this module turns
that into the messages /diagnostics carries, formatting every value the same
compact way (4 significant digits for floats) so that rqt_runtime_monitor
and the replay's recorded diagnostics read alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np

from vla_ros.ros.builtin_time import as_stamp

_DIAGNOSTIC_LEVELS: dict[str, bytes] = {
    "OK": DiagnosticStatus.OK,
    "WARN": DiagnosticStatus.WARN,
    "ERROR": DiagnosticStatus.ERROR,
    "STALE": DiagnosticStatus.STALE,
}


def _format_value(value: object) -> str:
    # bool is an int subclass: check it first so True prints as 'true', not '1'.
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), ".4g")
    return str(value)


def diagnostic_status(
    name: str,
    level: str,
    message: str,
    values: Mapping[str, object] | None = None,
    hardware_id: str = "",
) -> DiagnosticStatus:
    """Build a DiagnosticStatus; values become KeyValue strings in mapping order.

    level: 'OK' | 'WARN' | 'ERROR' | 'STALE'.
    Formatting: bools 'true'/'false', ints as is, floats with 4 significant
    digits ('%.4g': 0.123456 -> '0.1235', 1234567.0 -> '1.235e+06'), anything
    else via str().
    """
    if level not in _DIAGNOSTIC_LEVELS:
        raise ValueError(f"diagnostic level must be one of {list(_DIAGNOSTIC_LEVELS)}, got '{level}'")
    status = DiagnosticStatus()
    status.level = _DIAGNOSTIC_LEVELS[level]
    status.name = name
    status.message = message
    status.hardware_id = hardware_id
    status.values = [KeyValue(key=str(k), value=_format_value(v)) for k, v in (values or {}).items()]
    return status


def diagnostic_array(
    statuses: Sequence[DiagnosticStatus], stamp: Time | float | None = None
) -> DiagnosticArray:
    """A DiagnosticArray of `statuses` stamped `stamp` (a Time, or float seconds >= 0)."""
    array = DiagnosticArray()
    array.header.stamp = as_stamp(stamp)
    array.status = list(statuses)
    return array
