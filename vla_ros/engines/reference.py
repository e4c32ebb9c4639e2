"""The eager PyTorch engine: the reference every optimised engine is checked against."""

from __future__ import annotations

import numpy as np
import torch

from vla_ros.engines.base import Engine, ModelInputs
from vla_ros.model.gemma import KVCache
from vla_ros.model.pi0 import euler_times, Pi0Model


def batch_tensors(inputs: ModelInputs, device: torch.device) -> dict[str, torch.Tensor]:
    """numpy inputs -> batched (B=1) tensors on `device`."""
    return {
        "images": torch.from_numpy(np.ascontiguousarray(inputs.images))[None].to(device),
        "image_masks": torch.from_numpy(np.asarray(inputs.image_masks, dtype=bool))[None].to(device),
        "tokens": torch.from_numpy(np.asarray(inputs.tokens, dtype=np.int64))[None].to(device),
        "token_masks": torch.from_numpy(np.asarray(inputs.token_masks, dtype=bool))[None].to(device),
    }


class ReferenceEngine(Engine):
    """Eager `embed_prefix` + `denoise_step` (Pi0Model, SmolVLAModel), exactly as the model defines them."""

    name = "reference"

    def __init__(self, model: Pi0Model, num_steps: int = 10):
        self.model = model
        self.num_steps = num_steps
        self.device = next(model.parameters()).device
        self._cache: KVCache | None = None

    @torch.no_grad()
    def encode_prefix(self, inputs: ModelInputs) -> None:
        tensors = batch_tensors(inputs, self.device)
        if getattr(self.model, "state_in_prefix", False):  # SmolVLA: the state is the prefix's last token
            state = np.asarray(inputs.state, dtype=np.float32)
            tensors["state"] = torch.from_numpy(state)[None].to(self.device)
        self._cache = self.model.embed_prefix(**tensors)

    @torch.no_grad()
    def denoise(self, inputs: ModelInputs) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("encode_prefix must run before denoise")
        x = torch.from_numpy(np.asarray(inputs.noise, dtype=np.float32))[None].to(self.device)
        state = torch.from_numpy(np.asarray(inputs.state, dtype=np.float32))[None].to(self.device)
        dt = -1.0 / self.num_steps
        times = getattr(self.model, "flow_times", euler_times)  # the family's own t grid
        for t in times(self.num_steps):
            t_batch = torch.full((1,), t, dtype=torch.float32, device=self.device)
            x = x + dt * self.model.denoise_step(self._cache, x, t_batch, state)
        return x[0].float().cpu().numpy()

    def describe(self) -> dict:
        return {"engine": self.name, "device": str(self.device), "dtype": str(self.model.compute_dtype)}
