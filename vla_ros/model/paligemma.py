"""The PaliGemma prefix shared by every pi family: SigLIP image tokens, Gemma over images and prompt.

`PaliGemmaPrefix` holds the pieces pi0 / pi0.5 (model/pi0.py) and pi0-FAST
(model/pi0_fast.py) have in common: the module tree that mirrors the openpi /
LeRobot key layout (`paligemma_with_expert.paligemma.model.{vision_tower,
multi_modal_projector, language_model}`), the image and language embeddings
and the mixed-precision split. Subclasses set `self.cfg` and build
`self.paligemma_with_expert` with a `paligemma` child.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.model.config import PolicyConfig
from vla_ros.model.gemma import GemmaStack
from vla_ros.model.layers import linear
from vla_ros.model.siglip import SiglipVisionTower


class _Projector(nn.Module):

    def __init__(self, vision_width: int, width: int):
        super().__init__()
        self.linear = nn.Linear(vision_width, width)


class PaliGemmaModel(nn.Module):

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.vision_tower = SiglipVisionTower(cfg.vision)
        self.multi_modal_projector = _Projector(cfg.vision.width, cfg.prefix.width)
        self.language_model = GemmaStack(cfg.prefix, vocab_size=cfg.vocab_size)


class PaliGemma(nn.Module):
    """`model` (vision, projector, language model), and for decoding models the `lm_head`.

    The head starts tied to the token embedding (one Parameter under two
    names), as openpi's PaliGemma is; a checkpoint with its own head (LeRobot
    pi0-FAST saves an untied one) replaces it at load.
    """

    def __init__(self, cfg: PolicyConfig, lm_head: bool = False):
        super().__init__()
        self.model = PaliGemmaModel(cfg)
        if lm_head:
            self.lm_head = nn.Linear(cfg.prefix.width, cfg.vocab_size, bias=False)
            self.lm_head.weight = self.model.language_model.embed_tokens.weight


# Parameters that stay fp32 when the rest runs in bf16 (docs/model.md, "Numerics and mixed precision").
FP32_PARAMETER_MARKERS = (
    "vision_model.embeddings.patch_embedding",
    "vision_model.embeddings.position_embedding",
    "layernorm",
    "layer_norm",
    ".norm.",
    "action_in_proj",
    "action_out_proj",
    "state_proj",
    "action_time_mlp",
    "time_mlp",
)


def mixed_precision(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The reference split: big matmul weights in `dtype`, norms / embeddings / action heads fp32.

    In place (tied parameters stay tied: `param.data` is replaced, not the Parameter); returns `model`.
    """
    for name, param in model.named_parameters():
        keep = any(marker in name for marker in FP32_PARAMETER_MARKERS) or name.endswith("norm.weight")
        param.data = param.data.to(torch.float32 if keep else dtype)
    return model


class PaliGemmaPrefix(nn.Module):
    """Base of the pi models: what runs over images and prompt."""

    cfg: PolicyConfig
    paligemma_with_expert: nn.Module

    @property
    def paligemma(self) -> PaliGemmaModel:
        return self.paligemma_with_expert.paligemma.model

    @property
    def language_model(self) -> GemmaStack:
        return self.paligemma.language_model

    @property
    def compute_dtype(self) -> torch.dtype:
        # The token embedding follows the matmul weights' precision and is never repacked.
        return self.language_model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.embed_tokens.weight.device

    def to_mixed_precision(self, dtype: torch.dtype = torch.bfloat16):
        return mixed_precision(self, dtype)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W, 3) -> image tokens (B, N * 256, W_prefix).

        uint8 images are scaled to [-1, 1] here; float images are taken as
        already in [-1, 1] (LeRobot resizes in float and never rounds to
        uint8, see docs/preprocessing.md, "Resize with pad").
        """
        batch, cams = images.shape[:2]
        pixels = images.flatten(0, 1).permute(0, 3, 1, 2)
        pixels = pixels.float() if pixels.is_floating_point() else pixels.float() / 255.0 * 2.0 - 1.0
        pali = self.paligemma
        tokens = pali.vision_tower(pixels, self.compute_dtype)
        tokens = linear(pali.multi_modal_projector.linear, tokens).to(self.compute_dtype)
        return tokens.reshape(batch, cams * tokens.shape[1], tokens.shape[2])

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Language token embeddings (B, L, W) in the compute dtype, scaled by sqrt(width) as Gemma does."""
        embed = self.language_model.embed_tokens
        emb = F.embedding(tokens.long(), embed.weight) * math.sqrt(embed.weight.shape[1])
        return emb.to(self.compute_dtype)

    def prefix_embeddings(
        self, images, image_masks, tokens, token_masks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings (B, P, W) and pad mask (B, P)."""
        image_emb = self.embed_images(images)
        per_camera = image_emb.shape[1] // images.shape[1]
        image_pad = image_masks.bool().repeat_interleave(per_camera, dim=1)
        # Only language tokens are scaled by sqrt(width); image tokens are not.
        embs = torch.cat([image_emb, self.embed_text(tokens)], dim=1)
        return embs, torch.cat([image_pad, token_masks.bool()], dim=1)
