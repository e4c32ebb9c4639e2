"""The prefix encoder in PyTorch, writing its K/V cache into the suffix's static buffers.

On eager devices the prefix is compacted first: masked cameras and prompt
padding are dropped before the encoder runs, and the K/V of the real tokens
are scattered back to their slots. This computes the same function: padded
keys are masked for every query, and positions are `cumsum(pad) - 1`, which
is exactly the index in the compacted sequence. A robot with two of the three
cameras saves a third of the vision and language-model work.

SmolVLA (model/smolvla.py) keeps the state as the prefix's last token: its
runtime takes the state as well, and the pad mask ends with that token's slot.
"""

from __future__ import annotations

import numpy as np
import torch


class TorchPrefixRuntime:
    """Eager `embed_prefix` of a pi model or SmolVLA in the model's own precision.

    The models: model/pi0.py, model/pi0_fast.py, model/smolvla.py. The
    precision is bf16 on CPUs with native bf16 and on GPUs.
    """

    name = "pytorch"

    def __init__(self, model, compact: bool = True):
        self.model = model
        self.compact = compact
        self.device = model.device
        #: SmolVLA: the state is the prefix's last token (`run` needs it).
        self.state_in_prefix = bool(getattr(model, "state_in_prefix", False))
        cfg = model.cfg
        self.tokens_per_camera = cfg.tokens_per_image if self.state_in_prefix else cfg.vision.num_tokens

    @torch.no_grad()
    def run(
        self, images, image_masks, tokens, token_masks, keys, values, pad_mask, state=None
    ) -> torch.Tensor | None:
        """Fill keys / values / pad_mask; the last prompt token's logits for decode models, else None.

        state: (B, action_dim) float32, normalized and padded; SmolVLA only (its last prefix token).
        """
        def tensor(array, dtype=None):
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype)

        images, image_masks = tensor(images), tensor(image_masks, torch.bool)
        tokens, token_masks = tensor(tokens, torch.int64), tensor(token_masks, torch.bool)
        image_pad = image_masks.repeat_interleave(self.tokens_per_camera, dim=1)
        parts = [image_pad, token_masks]
        extra = ()
        if self.state_in_prefix:
            if state is None:
                raise ValueError("this model's prefix ends with the state token: pass `state`")
            extra = (tensor(np.asarray(state, dtype=np.float32)),)
            parts.append(torch.ones_like(token_masks[:, :1]))
        full_pad = torch.cat(parts, dim=1)
        if not (self.compact and images.shape[0] == 1 and bool(image_masks.any())):
            cache = self.model.embed_prefix(images, image_masks, tokens, token_masks, *extra)
            keys.copy_(cache.keys)
            values.copy_(cache.values)
            pad_mask.copy_(cache.pad_mask)
            return cache.last_logits
        cams, real = image_masks[0], token_masks[0]
        cache = self.model.embed_prefix(
            images[:, cams], image_masks[:, cams], tokens[:, real], token_masks[:, real], *extra
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
