"""Nested parameter mapping <-> config objects, and flat (dotted) names <-> nested mapping."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import difflib
from typing import Any

from vla_ros.config.inputs import CameraConfig, CamerasSection
from vla_ros.config.validate import _coerce, _param_fields, SECTION
from vla_ros.errors import ConfigError
from vla_ros.types import CAMERA_KEYS


def _unknown(name: str, key: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    prefix = name[: len(name) - len(key)]
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known here: {sorted(known)}"
    return ConfigError(name, f"unknown parameter; {hint}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(
            prefix.rstrip(".") or "ros__parameters", f"expected a mapping of parameters, got {data!r}"
        )
    if cls is CamerasSection:
        return _build_cameras(data, prefix)
    fields = {f.name: f for f in _param_fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = prefix + str(key)
        field = fields.get(key)
        if field is None:
            raise _unknown(name, str(key), list(fields))
        if field.metadata["kind"] == SECTION:
            kwargs[key] = _build(field.metadata["cls"], value, name + ".")
        else:
            kwargs[key] = _coerce(field.metadata["kind"], value, name)
    return cls(**kwargs)


def _build_cameras(data: Mapping[str, Any], prefix: str) -> CamerasSection:
    fields = {f.name: f for f in _param_fields(CamerasSection)}
    camera_fields = {f.name: f for f in _param_fields(CameraConfig)}
    kwargs: dict[str, Any] = {}
    streams = []
    for key, value in data.items():
        name = prefix + str(key)
        if key in fields:
            kwargs[key] = _coerce(fields[key].metadata["kind"], value, name)
            continue
        if key not in CAMERA_KEYS:
            raise _unknown(name, str(key), list(fields) + list(CAMERA_KEYS))
        if not isinstance(value, Mapping):
            raise ConfigError(name, f"expected a mapping of camera parameters, got {value!r}")
        camera: dict[str, Any] = {}
        for sub, sub_value in value.items():
            field = camera_fields.get(sub)
            if field is None:
                raise _unknown(f"{name}.{sub}", str(sub), list(camera_fields))
            camera[sub] = _coerce(field.metadata["kind"], sub_value, f"{name}.{sub}")
        streams.append(CameraConfig(key=key, **camera))
    return CamerasSection(streams=tuple(streams), **kwargs)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1, 'a.c': 2} -> {'a': {'b': 1, 'c': 2}}."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        parts = str(name).split(".")
        node = nested
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is a value and also the prefix of '{name}'")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(str(name), "is a value and also a parameter section")
        node[parts[-1]] = value
    return nested


def _flatten_config(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    for field in _param_fields(type(obj)):
        value = getattr(obj, field.name)
        name = prefix + field.name
        if field.metadata["kind"] == SECTION:
            _flatten_config(value, name + ".", out)
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    if isinstance(obj, CamerasSection):
        for stream in obj.streams:
            for field in _param_fields(CameraConfig):
                out[f"{prefix}{stream.key}.{field.name}"] = getattr(stream, field.name)
