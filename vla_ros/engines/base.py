"""The interface every inference engine offers to the Policy facade.

An engine turns preprocessed model inputs into normalized actions. It is split
into the stages the runtimes optimise separately, so that the facade can time
them: the prefix encoder (images + language -> K/V cache), then either the
suffix denoiser (Euler steps of the action expert over that cache: pi0, pi0.5)
or the autoregressive decode (the language model writes tokens after the
prompt: pi0-FAST's action tokens).
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
    """Runs the prefix encoder, then the suffix denoiser or the decode stage."""

    name: str = "engine"
    #: "denoise" (flow matching: `denoise`) or "decode" (autoregressive: `decode`).
    stage: str = "denoise"

    @abc.abstractmethod
    def encode_prefix(self, inputs: ModelInputs) -> None:
        """Build the K/V cache for `inputs` (kept inside the engine for the next denoise)."""

    @abc.abstractmethod
    def denoise(self, inputs: ModelInputs, guidance=None) -> np.ndarray:
        """Normalized actions (H, action_dim) from the cached prefix, starting at inputs.noise.

        `guidance` (an `engines.guidance.ModelGuidance`) runs the Real-Time
        Chunking loop toward the previous chunk instead of the plain one.
        """

    def decode(self, stop_ids=(), max_new_tokens: int | None = None):
        """Token ids after the cached prefix (a `engines.decode.DecodeResult`); decode engines only."""
        raise NotImplementedError(f"the {self.name} engine has no decode stage")

    def synchronize(self) -> None:
        """Wait for queued device work, so that stage timings are real (no-op on CPU).

        Engines that run on a torch device keep it as `self.device`.
        """
        device = getattr(self, "device", None)
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)

    def describe(self) -> dict:
        return {"engine": self.name}
