"""Reading a node's ``ros__parameters`` from a ROS 2 parameter (YAML) file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vla_ros.errors import ConfigError

DEFAULT_NODE_NAME = "vla_policy"


def load_parameters_file(path: str | Path, node_name: str = DEFAULT_NODE_NAME) -> dict[str, Any]:
    """Return the merged ``ros__parameters`` that a ROS 2 parameter file gives node ``node_name``.

    Sections keyed ``/**`` apply first, then ``<node_name>`` / ``/<node_name>`` /
    ``/<namespace>/<node_name>`` (also written as nested namespace keys).
    """
    import yaml

    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError("params_file", f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("params_file", f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(
            "params_file", f"{path} must hold a mapping of node names, got {type(data).__name__}"
        )
    general: list[Mapping[str, Any]] = []
    specific: list[Mapping[str, Any]] = []

    def visit(mapping: Mapping[str, Any], path_parts: tuple[str, ...]) -> None:
        for key, value in mapping.items():
            if not isinstance(value, Mapping):
                continue
            parts = path_parts + tuple(p for p in str(key).split("/") if p)
            if "ros__parameters" in value:
                params = value["ros__parameters"]
                if not isinstance(params, Mapping):
                    raise ConfigError("ros__parameters", f"{path}: expected a mapping under {key}")
                if parts in (("**",), ("*",)):
                    general.append(params)
                elif parts and parts[-1] == node_name:
                    specific.append(params)
            else:
                visit(value, parts)

    visit(data, ())
    if not general and not specific:
        raise ConfigError("params_file", f"{path} has no '{node_name}: ros__parameters:' section")
    merged: dict[str, Any] = {}
    for params in general + specific:
        _merge(merged, params)
    return merged


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
