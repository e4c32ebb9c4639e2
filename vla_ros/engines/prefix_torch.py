"""The prefix encoder in PyTorch, writing its K/V cache into the suffix's static buffers.

On eager devices the prefix is compacted first: masked cameras and prompt
padding are dropped before the encoder runs, and the K/V of the real tokens
are scattered back to their slots. This computes the same function: padded
keys are masked for every query, and positions are `cumsum(pad) - 1`, which
is exactly the index in the compacted sequence. A robot with two of the three
cameras saves a third of the vision and language-model work.
"""

from __future__ import annotations

import numpy as np
import torch


class TorchPrefixRuntime:
    """Eager `embed_prefix` of a pi model (model/pi0.py, model/pi0_fast.py) in the model's own precision.

    That is bf16 on CPUs with native bf16 and on GPUs.
    """

    name = "pytorch"

    def __init__(self, model, compact: bool = True):
        self.model = model
        self.compact = compact
        self.device = model.device
        self.tokens_per_camera = model.cfg.vision.num_tokens

    @torch.no_grad()
    def run(self, images, image_masks, tokens, token_masks, keys, values, pad_mask) -> torch.Tensor | None:
        """Fill keys / values / pad_mask; the last prompt token's logits for decode models, else None."""
        def tensor(array, dtype=None):
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype)

        images, image_masks = tensor(images), tensor(image_masks, torch.bool)
        tokens, token_masks = tensor(tokens, torch.int64), tensor(token_masks, torch.bool)
        image_pad = image_masks.repeat_interleave(self.tokens_per_camera, dim=1)
        full_pad = torch.cat([image_pad, token_masks], dim=1)
        if not (self.compact and images.shape[0] == 1 and bool(image_masks.any())):
            cache = self.model.embed_prefix(images, image_masks, tokens, token_masks)
            keys.copy_(cache.keys)
            values.copy_(cache.values)
            pad_mask.copy_(cache.pad_mask)
            return cache.last_logits
        cams, real = image_masks[0], token_masks[0]
        cache = self.model.embed_prefix(
            images[:, cams], image_masks[:, cams], tokens[:, real], token_masks[:, real]
        )
        slots = full_pad[0].nonzero().squeeze(1)
        # Slots of masked tokens keep finite values from earlier calls; they are masked
        # for every query, so they never contribute.
        keys.index_copy_(3, slots, cache.keys)
        values.index_copy_(3, slots, cache.values)
        pad_mask.copy_(full_pad)
        return cache.last_logits

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "dtype": str(self.model.compute_dtype).replace("torch.", ""),
            "compact": self.compact,
        }
