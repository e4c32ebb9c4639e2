"""Shared pieces of the config sections: parameter kinds, field declarations and checks."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import difflib
import math
from typing import Any

from vla_ros.errors import ConfigError

# Parameter kinds, as the ROS layer declares them.
STR, BOOL, INT, FLOAT = "str", "bool", "int", "float"
STR_LIST, BOOL_LIST, FLOAT_LIST = "str[]", "bool[]", "float[]"
SECTION = "section"

QOS_PROFILES = ("sensor_data", "reliable", "system_default")
CAMERA_TRANSPORTS = ("raw", "compressed")
INFERENCE_MODES = ("thread", "process", "remote")
TRIGGERS = ("threshold", "rate")


def param(default: Any, doc: str, kind: str, choices: Sequence[str] = ()) -> Any:
    """Declare a dataclass field that is also a ROS parameter (kind, description, choices)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "kind": kind, "choices": tuple(choices)})


def section(cls: type, doc: str) -> Any:
    """Declare a dataclass field holding a nested parameter section."""
    return dataclasses.field(default_factory=cls, metadata={"doc": doc, "kind": SECTION, "cls": cls})


# --------------------------------------------------------------- checks ---


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(name, f"got {value!r}, expected one of {list(choices)}{hint}")


def _positive(name: str, value: float, allow_inf: bool = False) -> None:
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        raise ConfigError(name, f"expected a {'' if allow_inf else 'finite '}number > 0, got {value!r}")


def _topic(name: str, value: str, allow_empty: bool = False) -> None:
    if not value.strip():
        if allow_empty:
            return
        raise ConfigError(name, "expected a topic name, got an empty string")
    if any(c.isspace() for c in value):
        raise ConfigError(name, f"topic names cannot contain whitespace, got {value!r}")


def _coerce(kind: str, value: Any, name: str) -> Any:
    """Check a YAML / ROS parameter value against its kind; ints are accepted for floats."""
    if kind == STR:
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    if kind == BOOL:
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {value!r}")
        return value
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        return int(value)
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"expected a number, got {value!r}")
        return float(value)
    if kind in (STR_LIST, BOOL_LIST, FLOAT_LIST):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            # ROS array parameters arrive as array.array / lists; a lone scalar is a mistake.
            try:
                value = list(value)
            except TypeError:
                raise ConfigError(name, f"expected a list, got {value!r}") from None
        item_kind = kind[:-2]
        return tuple(_coerce(item_kind, v, f"{name}[{i}]") for i, v in enumerate(value))
    raise AssertionError(f"unknown parameter kind {kind}")


def _choices(cls: type, name: str) -> tuple[str, ...]:
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)


def _param_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "kind" in f.metadata]
