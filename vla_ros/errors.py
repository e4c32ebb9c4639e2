"""Typed errors. Each message says what is wrong and what to change."""

import math


class VlaRosError(Exception):
    """Base class for every error vla_ros raises on purpose."""


class ConfigError(VlaRosError, ValueError):
    """A configuration value (YAML key, ROS parameter, CLI flag) is invalid.

    The message names the parameter and the value that was expected.
    """

    def __init__(self, parameter: str, problem: str):
        self.parameter = parameter
        super().__init__(f"parameter '{parameter}': {problem}")


class CheckpointError(VlaRosError):
    """A checkpoint directory is missing files or its tensors do not fit the model."""


class ObservationError(VlaRosError, ValueError):
    """An input (image, joint state, prompt) cannot be turned into an observation."""


class EngineError(VlaRosError, RuntimeError):
    """An inference backend could not be built or run."""


class ActionDecodeError(EngineError):
    """Generated action tokens do not decode to an action chunk (pi0-FAST).

    An inference failure, not a crash: the caller holds the last command and
    reports the one-line message, it never sends a made-up (e.g. all-zero) chunk.
    """


def check_positive_finite(parameter: str, value: float, what: str = "number") -> float:
    """Return ``value`` as a float if it is a finite number > 0.

    Raises:
        ConfigError(parameter, ...): not a number, not finite or <= 0; the
            message calls the expected value a ``what`` (e.g. "number of
            seconds").
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(parameter, f"must be a {what}, got {value!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ConfigError(parameter, f"must be a finite {what} > 0, got {value!r}")
    return value
