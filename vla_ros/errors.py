"""Typed errors. Each message says what is wrong and what to change."""


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
