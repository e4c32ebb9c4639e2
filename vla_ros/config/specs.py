"""The ROS parameters of NodeConfig, with kinds, defaults, descriptions and choices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from vla_ros.config.inputs import CameraConfig, CamerasSection
from vla_ros.config.node import NodeConfig
from vla_ros.config.validate import _param_fields, SECTION
from vla_ros.types import CAMERA_KEYS


class ParameterSpec(NamedTuple):
    """One ROS parameter: dotted name, kind (str, bool, int, float, str[], bool[], float[]), default, text."""

    name: str
    kind: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()


def parameter_specs(camera_keys: Sequence[str] = CAMERA_KEYS) -> list[ParameterSpec]:
    """Every parameter of NodeConfig, with per-camera parameters for ``camera_keys``."""
    specs: list[ParameterSpec] = []

    def walk(cls: type, prefix: str) -> None:
        for field in _param_fields(cls):
            kind = field.metadata["kind"]
            if kind == SECTION:
                walk(field.metadata["cls"], prefix + field.name + ".")
                continue
            default = field.default
            specs.append(
                ParameterSpec(
                    prefix + field.name,
                    kind,
                    list(default) if isinstance(default, tuple) else default,
                    field.metadata["doc"],
                    field.metadata["choices"],
                )
            )
        if cls is CamerasSection:
            for key in camera_keys:
                if key not in CAMERA_KEYS:
                    continue  # reported by NodeConfig with the parameter name
                for field in _param_fields(CameraConfig):
                    specs.append(
                        ParameterSpec(
                            f"{prefix}{key}.{field.name}",
                            field.metadata["kind"],
                            field.default,
                            f"Camera {key}: {field.metadata['doc']}",
                            field.metadata["choices"],
                        )
                    )

    walk(NodeConfig, "")
    return specs
