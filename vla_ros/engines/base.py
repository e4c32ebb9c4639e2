"""The interface every inference engine offers to the Policy facade.

An engine turns preprocessed model inputs into normalized actions. It is split
into the two stages the runtimes optimise separately, so that the facade can
time them: the prefix encoder (images + language -> K/V cache) and the suffix
denoiser (Euler steps of the action expert over that cache).
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """One batch element of preprocessed inputs, as numpy (engines move them to their device).

    images uint8 (N, 224, 224, 3), or float32 already in [-1, 1] (LeRobot's
    float resize; exported graphs take uint8 and get it rounded, half a
    level at most); image_masks bool (N,); tokens int32 (L,);
    token_masks bool (L,); state float32 (action_dim,) normalized and padded;
    noise float32 (H, action_dim).
    """

    images: np.ndarray
    image_masks: np.ndarray
    tokens: np.ndarray
    token_masks: np.ndarray
    state: np.ndarray
    noise: np.ndarray


class Engine(abc.ABC):
    """Runs the prefix encoder then the suffix denoiser."""

    name: str = "engine"

    @abc.abstractmethod
    def encode_prefix(self, inputs: ModelInputs) -> None:
        """Build the K/V cache for `inputs` (kept inside the engine for the next denoise)."""

    @abc.abstractmethod
    def denoise(self, inputs: ModelInputs) -> np.ndarray:
        """Normalized actions (H, action_dim) from the cached prefix, starting at inputs.noise."""

    def synchronize(self) -> None:
        """Wait for queued device work, so that stage timings are real (no-op on CPU)."""

    def describe(self) -> dict:
        return {"engine": self.name}
