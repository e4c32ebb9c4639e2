"""ROS parameters of the policy node, declared from the NodeConfig dataclasses.

Every field of vla_ros.config.NodeConfig is declared with its description
(``ros2 param describe``), its default and, where it has them, its choices.
Numbers and number lists are declared with dynamic typing so that a YAML
``control_rate: 50`` (an integer) is accepted for a float; vla_ros.config
checks the values, so the error names the parameter either way.

Per-camera parameters (``cameras.<key>.*``) exist for the keys listed in
``cameras.keys``; that list is declared (and read) first.
"""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from vla_ros.config import (
    BOOL,
    BOOL_LIST,
    FLOAT,
    FLOAT_LIST,
    INT,
    parameter_specs,
    ParameterSpec,
    STR,
    STR_LIST,
)

CAMERA_KEYS_PARAMETER = "cameras.keys"

_STATIC_TYPES = {
    STR: Parameter.Type.STRING,
    BOOL: Parameter.Type.BOOL,
    INT: Parameter.Type.INTEGER,
    STR_LIST: Parameter.Type.STRING_ARRAY,
    BOOL_LIST: Parameter.Type.BOOL_ARRAY,
}
_DYNAMIC = (FLOAT, FLOAT_LIST)

# Parameters every rclpy node may get that are not ours.
_FOREIGN_PREFIXES = ("qos_overrides.",)
_FOREIGN_NAMES = ("use_sim_time", "start_type_description_service")


def _descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    text = spec.description
    constraints = ""
    if spec.choices:
        constraints = "one of: " + ", ".join(repr(c) for c in spec.choices)
    return ParameterDescriptor(
        name=spec.name,
        description=text,
        additional_constraints=constraints,
        dynamic_typing=spec.kind in _DYNAMIC,
    )


def _declare(node: Any, spec: ParameterSpec) -> None:
    if node.has_parameter(spec.name):
        return
    descriptor = _descriptor(spec)
    default = spec.default
    if spec.kind in _DYNAMIC:
        value = default if default != [] else None
    elif default == []:
        value = _STATIC_TYPES[spec.kind]  # statically typed, no value until the YAML gives one
    else:
        value = default
    node.declare_parameter(spec.name, value, descriptor)


def declare_parameters(node: Any) -> None:
    """Declare every NodeConfig parameter on ``node`` (cameras for the keys in cameras.keys)."""
    specs = parameter_specs(())
    keys_spec = next(s for s in specs if s.name == CAMERA_KEYS_PARAMETER)
    _declare(node, keys_spec)
    for spec in parameter_specs(_camera_keys(node)):
        _declare(node, spec)


def _camera_keys(node: Any) -> list[str]:
    try:
        value = node.get_parameter(CAMERA_KEYS_PARAMETER).value
    except ParameterUninitializedException:
        return []
    return [str(k) for k in (value or [])]


def _plain(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return list(value)  # array.array / tuple -> list


def read_parameters(node: Any) -> dict[str, Any]:
    """Flat {name: value} of the node's parameters, for NodeConfig.from_flat.

    Camera parameters for keys added to cameras.keys after construction are
    declared first. Parameters that are set (parameter file, -p) but not
    declared are included as well, so that NodeConfig reports them as unknown
    (with a "did you mean") instead of silently ignoring a typo.
    """
    declare_parameters(node)
    flat: dict[str, Any] = {}
    for spec in parameter_specs(_camera_keys(node)):
        try:
            value = node.get_parameter(spec.name).value
        except ParameterUninitializedException:
            continue
        if value is not None:
            flat[spec.name] = _plain(value)
    overrides = getattr(node, "_parameter_overrides", {}) or {}
    for name, parameter in overrides.items():
        if name in flat or node.has_parameter(name) or name in _FOREIGN_NAMES:
            continue
        if name.startswith(_FOREIGN_PREFIXES):
            continue
        flat[name] = _plain(parameter.value)
    return flat
