"""SigLIP vision tower (So400m/14 shape at full size), named like the checkpoints.

Module names mirror `...vision_tower.vision_model.*` in pi0 checkpoints so that
state dicts load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.model.config import VisionConfig
from vla_ros.model.layers import attention, linear

LAYER_NORM_EPS = 1e-6


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.to(norm.weight.dtype), norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class SiglipAttention(nn.Module):

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        head_dim = width // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, W) -> (B, nh, T, hd)
            return t.view(batch, tokens, self.num_heads, head_dim).transpose(1, 2)

        q, k, v = heads(linear(self.q_proj, x)), heads(linear(self.k_proj, x)), heads(linear(self.v_proj, x))
        return linear(self.out_proj, attention(q, k, v, None))


class SiglipMLP(nn.Module):

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, F.gelu(linear(self.fc1, x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=LAYER_NORM_EPS)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=LAYER_NORM_EPS)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(_layer_norm(self.layer_norm1, x)).to(x.dtype)
        return x + self.mlp(_layer_norm(self.layer_norm2, x)).to(x.dtype)


class SiglipEmbeddings(nn.Module):

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_tokens, cfg.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embedding.weight
        patches = F.conv2d(
            pixels.to(weight.dtype), weight, self.patch_embedding.bias, stride=self.patch_embedding.stride
        )
        patches = patches.flatten(2).transpose(1, 2)  # (B, 256, W)
        return patches + self.position_embedding.weight[None].to(patches.dtype)


class SiglipEncoder(nn.Module):

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.depth))


class SiglipVisionModel(nn.Module):

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=LAYER_NORM_EPS)

    def forward(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """pixels (B, 3, H, W) in [-1, 1] -> tokens (B, 256, W) in `dtype`."""
        x = self.embeddings(pixels).to(dtype)
        for layer in self.encoder.layers:
            x = layer(x)
        return _layer_norm(self.post_layernorm, x).to(dtype)


class SiglipVisionTower(nn.Module):
    """Wrapper whose only child is `vision_model`, as in the checkpoint key layout."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.vision_model = SiglipVisionModel(cfg)

    def forward(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.vision_model(pixels, dtype)
