"""The prefix encoder in PyTorch, writing its K/V cache into the suffix's static buffers."""

from __future__ import annotations

import numpy as np
import torch

from vla_ros.model.pi0 import Pi0Model


class TorchPrefixRuntime:
    """Eager `Pi0Model.embed_prefix` in the model's own precision (bf16 on AMX CPUs and GPUs)."""

    name = "pytorch"

    def __init__(self, model: Pi0Model):
        self.model = model
        self.device = model.action_in_proj.weight.device

    @torch.no_grad()
    def run(self, images, image_masks, tokens, token_masks, keys, values, pad_mask) -> None:
        def tensor(array, dtype=None):
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype)

        cache = self.model.embed_prefix(
            tensor(images),
            tensor(image_masks, torch.bool),
            tensor(tokens, torch.int64),
            tensor(token_masks, torch.bool),
        )
        keys.copy_(cache.keys)
        values.copy_(cache.values)
        pad_mask.copy_(cache.pad_mask)

    def describe(self) -> dict:
        return {"engine": self.name, "dtype": str(self.model.compute_dtype).replace("torch.", "")}
