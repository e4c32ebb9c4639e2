"""Reading a node's ``ros__parameters`` from a ROS 2 parameter (YAML) file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vla_ros.errors import ConfigError

DEFAULT_NODE_NAME = "vla_policy"


# YAML tags of the scalars rcl accepts, by the parameter type they become.
_SCALAR_TYPES = {
    "tag:yaml.org,2002:bool": "booleans",
    "tag:yaml.org,2002:int": "integers",
    "tag:yaml.org,2002:float": "floats",
    "tag:yaml.org,2002:str": "strings",
}


def _loader() -> type:
    """PyYAML's SafeLoader, reading numbers as rcl does.

    rcl's parameter parser reads plain scalars with strtol, then strtod, so
    ``1e-3`` is a float there, where YAML 1.1 (PyYAML) would make it a string.
    """
    import re

    import yaml

    class ParamsLoader(yaml.SafeLoader):
        pass

    ParamsLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return ParamsLoader


def read_parameters_file(path: str | Path) -> Any:
    """Parse a ROS 2 parameter file as rcl would, with one-line errors that name the file and key.

    rcl refuses a whole file (and the node never starts) for a YAML syntax
    error, a missing file, or a list that mixes types (``[1, 2.0]``: an
    integer and a float); this finds the same problems first and says where
    they are and what to write instead.

    Raises:
        ConfigError: naming ``params_file`` (unreadable, not YAML) or the
            parameter key (a mixed list), with the file and line.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("params_file", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        loader = _loader()
        root = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)  # a SafeLoader: no code runs
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("params_file", f"{where} is not valid YAML: {problem}") from None
    if root is not None:
        _check_lists(root, None, path)
    return data


def _check_lists(node: Any, keys: tuple[str, ...] | None, path: Path) -> None:
    # keys: None above a ros__parameters section (node names), else the parameter's key path.
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value)
            if keys is None:
                _check_lists(value, () if name == "ros__parameters" else None, path)
            else:
                _check_lists(value, keys + (name,), path)
    elif isinstance(node, yaml.SequenceNode) and keys is not None:
        kinds = {_SCALAR_TYPES.get(item.tag, "other values") for item in node.value}
        if len(kinds) > 1:
            name = ".".join(keys)
            items = [item.value if isinstance(item, yaml.ScalarNode) else "..." for item in node.value]
            fix = (
                "write every number with a decimal point (1.0, not 1)"
                if kinds == {"integers", "floats"}
                else "use one type for every entry"
            )
            raise ConfigError(
                name or "params_file",
                f"{path}:{node.start_mark.line + 1}: the list [{', '.join(map(str, items))}] mixes "
                f"{' and '.join(sorted(kinds, reverse=True))}; ROS 2 parameter lists hold one type, so {fix}",
            )
        for item in node.value:
            _check_lists(item, keys, path)


def params_files_in_args(args: list[str]) -> list[str]:
    """The files given with ``--params-file`` after ``--ros-args`` (ROS 2 command-line rules)."""
    files, in_ros_args = [], False
    for i, arg in enumerate(args):
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg == "--params-file" and i + 1 < len(args):
            files.append(args[i + 1])
    return files


def load_parameters_file(path: str | Path, node_name: str = DEFAULT_NODE_NAME) -> dict[str, Any]:
    """Return the merged ``ros__parameters`` that a ROS 2 parameter file gives node ``node_name``.

    Sections keyed ``/**`` apply first, then ``<node_name>`` / ``/<node_name>`` /
    ``/<namespace>/<node_name>`` (also written as nested namespace keys).
    """
    path = Path(path)
    data = read_parameters_file(path)
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
