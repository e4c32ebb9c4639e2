"""The eager PyTorch engine: the reference every optimised engine is checked against."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from vla_ros.engines.base import Engine, ModelInputs
from vla_ros.engines.guidance import guided_euler, ModelGuidance
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
    def denoise(self, inputs: ModelInputs, guidance: ModelGuidance | None = None) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("encode_prefix must run before denoise")
        noise = np.asarray(inputs.noise, dtype=np.float32)
        x = torch.from_numpy(noise.reshape(-1, *noise.shape[-2:])).to(self.device)  # (K, H, A)
        samples = x.shape[0]
        state = torch.from_numpy(np.asarray(inputs.state, dtype=np.float32))[None].to(self.device)
        state = state.expand(samples, -1)
        cache = self._cache
        if samples > 1:  # K noise samples over one prefix: the cache is shared, not recomputed
            cache = dataclasses.replace(
                cache,
                keys=cache.keys.expand(-1, samples, -1, -1, -1),
                values=cache.values.expand(-1, samples, -1, -1, -1),
                pad_mask=cache.pad_mask.expand(samples, -1),
            )
        dt = -1.0 / self.num_steps
        times = getattr(self.model, "flow_times", euler_times)(self.num_steps)  # the family's own t grid
        if guidance is not None:
            def velocity(x_t, t):
                return self.model.denoise_step(cache, x_t, t, state)

            x = guided_euler(velocity, x, times, dt, guidance)
        else:
            for t in times:
                t_batch = torch.full((samples,), t, dtype=torch.float32, device=self.device)
                x = x + dt * self.model.denoise_step(cache, x, t_batch, state)
        actions = x.float().cpu().numpy()
        return actions if noise.ndim == 3 else actions[0]

    def describe(self) -> dict:
        return {"engine": self.name, "device": str(self.device), "dtype": str(self.model.compute_dtype)}
