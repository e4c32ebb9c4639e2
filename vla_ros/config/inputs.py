"""The input sections: prompt.*, joint_states.*, cameras.* and sync.*."""

from __future__ import annotations

import dataclasses

from vla_ros.config.validate import (
    _choice,
    _positive,
    _topic,
    BOOL,
    CAMERA_TRANSPORTS,
    FLOAT,
    INT,
    param,
    QOS_PROFILES,
    STR,
    STR_LIST,
)
from vla_ros.errors import ConfigError
from vla_ros.types import CAMERA_KEYS


@dataclasses.dataclass(frozen=True)
class PromptSection:
    """The language instruction."""

    topic: str = param("/instruction", "std_msgs/String topic carrying the instruction.", STR)
    default: str = param("", "Prompt used until the first instruction arrives ('' = wait for one).", STR)

    def __post_init__(self) -> None:
        _topic("prompt.topic", self.topic)


@dataclasses.dataclass(frozen=True)
class JointStatesSection:
    """The measured joint positions (sensor_msgs/JointState, matched by joint name)."""

    topic: str = param("/joint_states", "sensor_msgs/JointState topic.", STR)
    max_staleness: float = param(0.1, "Seconds a joint state may age before observations pause.", FLOAT)
    qos: str = param("sensor_data", "Subscription QoS profile.", STR, QOS_PROFILES)
    merge_partial: bool = param(
        False,
        "Merge messages that carry only some of joint_names (e.g. a gripper driver beside the arm's): "
        "each message updates the joints it names; a state needs every joint heard within max_staleness "
        "of the newest message.",
        BOOL,
    )

    def __post_init__(self) -> None:
        _topic("joint_states.topic", self.topic)
        _positive("joint_states.max_staleness", self.max_staleness, allow_inf=True)
        _choice("joint_states.qos", self.qos, QOS_PROFILES)


@dataclasses.dataclass(frozen=True)
class CameraConfig:
    """One camera, fed into the model camera slot ``key``."""

    key: str
    topic: str = param(
        "", "Image topic ('' = /<key>/image_raw, or .../compressed for transport 'compressed').", STR
    )
    transport: str = param(
        "raw",
        "'raw' subscribes to sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8); 'compressed' to "
        "sensor_msgs/CompressedImage (jpeg, png).",
        STR,
        CAMERA_TRANSPORTS,
    )
    max_staleness: float = param(0.2, "Seconds a frame may age before the camera counts as stale.", FLOAT)
    width: int = param(0, "Expected image width in pixels; other sizes are rejected (0 = any).", INT)
    height: int = param(0, "Expected image height in pixels; other sizes are rejected (0 = any).", INT)
    qos: str = param("", "Subscription QoS profile ('' = cameras.qos).", STR, ("",) + QOS_PROFILES)

    def __post_init__(self) -> None:
        prefix = f"cameras.{self.key}."
        if self.key not in CAMERA_KEYS:
            _choice("cameras.keys", self.key, CAMERA_KEYS)
        _choice(prefix + "transport", self.transport, CAMERA_TRANSPORTS)
        if not self.topic:
            suffix = "image_raw/compressed" if self.transport == "compressed" else "image_raw"
            object.__setattr__(self, "topic", f"/{self.key}/{suffix}")
        _topic(prefix + "topic", self.topic)
        _positive(prefix + "max_staleness", self.max_staleness, allow_inf=True)
        for name in ("width", "height"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    prefix + name, f"expected 0 (any) or a size in pixels, got {getattr(self, name)}"
                )
        _choice(prefix + "qos", self.qos, ("",) + QOS_PROFILES)

    @property
    def expected_size(self) -> tuple[int, int] | None:
        """(height, width) when both are set, else None."""
        return (self.height, self.width) if self.height and self.width else None


@dataclasses.dataclass(frozen=True)
class CamerasSection:
    """The cameras, by model camera key (base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb)."""

    keys: tuple[str, ...] = param(
        CAMERA_KEYS,
        "Model camera slots to feed, each configured under cameras.<key>; slots not listed " "are masked.",
        STR_LIST,
    )
    qos: str = param("sensor_data", "Default subscription QoS profile of the cameras.", STR, QOS_PROFILES)
    streams: tuple[CameraConfig, ...] = ()

    def __post_init__(self) -> None:
        for i, key in enumerate(self.keys):
            if key not in CAMERA_KEYS:
                _choice(f"cameras.keys[{i}]", key, CAMERA_KEYS)
        if len(set(self.keys)) != len(self.keys):
            raise ConfigError("cameras.keys", f"camera keys must be unique, got {list(self.keys)}")
        _choice("cameras.qos", self.qos, QOS_PROFILES)
        given = {s.key: s for s in self.streams}
        if len(given) != len(self.streams):
            raise ConfigError("cameras", "a camera is configured twice")
        extra = sorted(set(given) - set(self.keys))
        if extra:
            raise ConfigError(
                f"cameras.{extra[0]}",
                f"camera is configured but not listed in cameras.keys {list(self.keys)}",
            )
        object.__setattr__(self, "streams", tuple(given.get(k) or CameraConfig(key=k) for k in self.keys))

    def __getitem__(self, key: str) -> CameraConfig:
        for stream in self.streams:
            if stream.key == key:
                return stream
        raise KeyError(key)

    def qos_of(self, key: str) -> str:
        return self[key].qos or self.qos


@dataclasses.dataclass(frozen=True)
class SyncSection:
    """When buffered inputs form an observation (see vla_ros.observation.buffers.SyncConfig)."""

    max_skew: float = param(
        0.05, "Seconds allowed between the oldest and newest camera stamp of one observation.", FLOAT
    )
    missing_camera_policy: str = param(
        "mask",
        "A stale or missing camera is masked (as the model allows) or pauses the observations "
        "(and so the robot holds).",
        STR,
        ("mask", "pause"),
    )

    def __post_init__(self) -> None:
        _positive("sync.max_skew", self.max_skew, allow_inf=True)
        _choice("sync.missing_camera_policy", self.missing_camera_policy, ("mask", "pause"))
