"""The two records that cross every layer: what the robot saw, what the policy proposes."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses

import numpy as np

# Camera keys in the order the model consumes them (docs/preprocessing.md, "Cameras").
CAMERA_KEYS: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class RawObservation:
    """One synchronised observation in robot units, before any model preprocessing.

    images: camera key -> uint8 RGB array (H, W, 3) of any size; a key that is
        absent means the camera is missing (the model masks it).
    state: float32 joint positions (D,) in the robot's own order and units.
    prompt: the language instruction.
    timestamp: seconds (ROS time) at which the observation was taken; action
        chunks are indexed from it.
    """

    images: Mapping[str, np.ndarray]
    state: np.ndarray
    prompt: str
    timestamp: float = 0.0


@dataclasses.dataclass(frozen=True)
class ActionChunk:
    """A chunk of future actions in robot units.

    actions: float32 (H, D); action k is meant for time timestamp + k * dt,
        where dt is the robot's control period of the training data.
    timestamp: the observation time the chunk was computed from.
    timings: stage name -> seconds (preprocess, prefix, suffix or decode, postprocess, total).
    tokens: decode models (pi0-FAST): the generated token ids, the stop token included.
    """

    actions: np.ndarray
    timestamp: float
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)
    tokens: np.ndarray | None = None
