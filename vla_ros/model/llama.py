"""Llama-style blocks: RMSNorm (weight * x / rms(x)), grouped-query attention, SiLU-gated MLP.

The layout and module names are transformers' `LlamaDecoderLayer` / `LlamaModel`
(`input_layernorm`, `self_attn.{q,k,v,o}_proj`, `post_attention_layernorm`,
`mlp.{gate,up,down}_proj`, `norm`, `embed_tokens`), so that SmolLM2 weights load by
name. Differences from the Gemma blocks of pi0 (vla_ros/model/gemma.py): the norm
multiplies by `weight` (not `1 + weight`), the MLP is SiLU-gated (not GELU), the
embeddings are not scaled by the stack itself, and the RoPE base is a parameter.

RoPE is split-half ("rotate half") over the full head dimension, in fp32, with the
angles `position / theta ** (2 i / head_dim)` (the form LeRobot's SmolVLA applies).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.model.config import LlamaConfig
from vla_ros.model.layers import attention, linear


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin (B, 1, T, head_dim / 2) in fp32 for integer positions (B, T)."""
    half = head_dim // 2
    exponents = (2.0 / head_dim) * torch.arange(half, dtype=torch.float32, device=positions.device)
    timescale = theta**exponents
    radians = positions.float()[..., None] / timescale
    return radians.cos()[:, None], radians.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Split-half rotation of (B, heads, T, head_dim) by `rope_tables`, computed in fp32."""
    xf = x.float()
    half = xf.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class LlamaRMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + eps), the statistics in fp32 (transformers' LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class LlamaMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.down_proj, F.silu(linear(self.gate_proj, x)) * linear(self.up_proj, x))


class LlamaAttention(nn.Module):
    """q / k / v / o projections without biases; K/V heads shared by num_heads / num_kv_heads queries.

    `kv_in` is the width k_proj / v_proj read (default: the stack's width);
    SmolVLA's cross-attention layers project the backbone's cached keys and
    values (num_kv_heads * head_dim wide) instead of their own hidden state.
    """

    def __init__(self, cfg: LlamaConfig, kv_in: int | None = None):
        super().__init__()
        self.cfg = cfg
        kv_width = cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(kv_in or cfg.width, kv_width, bias=False)
        self.v_proj = nn.Linear(kv_in or cfg.width, kv_width, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.width, bias=False)

    def heads(self, x: torch.Tensor, layer: nn.Module, count: int) -> torch.Tensor:
        """(B, T, in) -> (B, count, T, head_dim) through `layer`."""
        batch, tokens, _ = x.shape
        return linear(layer, x).view(batch, tokens, count, self.cfg.head_dim).transpose(1, 2)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(x, self.q_proj, self.cfg.num_heads)

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = self.cfg.num_kv_heads
        return self.heads(x, self.k_proj, count), self.heads(x, self.v_proj, count)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention and MLP, each with a residual.

    `attention_class`: the attention module (Qwen3's adds q/k norms, model/qwen3.py).
    """

    attention_class = LlamaAttention

    def __init__(self, cfg: LlamaConfig, kv_in: int | None = None):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(cfg.width, cfg.rms_eps)
        self.self_attn = self.attention_class(cfg, kv_in)
        self.post_attention_layernorm = LlamaRMSNorm(cfg.width, cfg.rms_eps)
        self.mlp = LlamaMLP(cfg.width, cfg.mlp_dim)

    def finish(self, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after attention: o_proj + residual, then the MLP + residual.

        attended: (B, T, num_heads * head_dim), the attention output before o_proj.
        """
        h = hidden + linear(self.self_attn.o_proj, attended).to(hidden.dtype)
        return h + self.mlp(self.post_attention_layernorm(h)).to(h.dtype)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention over `hidden` (B, T, W); returns the output and this layer's K (roped) and V."""
        normed = self.input_layernorm(hidden)
        q = apply_rope(self.self_attn.query(normed), cos, sin)
        k, v = self.self_attn.key_value(normed)
        k = apply_rope(k, cos, sin)
        return self.finish(hidden, attention(q, k, v, bias)), k, v


class LlamaStack(nn.Module):
    """`layers` + final `norm` (+ `embed_tokens` when `vocab_size` is given), named as LlamaModel.

    `cross_layers`: layers whose k_proj / v_proj read num_kv_heads * head_dim
    features (SmolVLA's cross-attention layers) instead of the width.
    `layer_class`: the decoder layer (Qwen3's, model/qwen3.py).
    """

    layer_class = LlamaDecoderLayer

    def __init__(self, cfg: LlamaConfig, vocab_size: int | None = None, cross_layers: Collection[int] = ()):
        super().__init__()
        self.cfg = cfg
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, cfg.width)
        kv_width = cfg.num_kv_heads * cfg.head_dim
        self.layers = nn.ModuleList(
            self.layer_class(cfg, kv_width if i in cross_layers else None) for i in range(cfg.depth)
        )
        self.norm = LlamaRMSNorm(cfg.width, cfg.rms_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        bias: torch.Tensor | None,
        theta: float | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Final-normed hidden states (B, T, W) and each layer's (K, V), (B, KV, T, head_dim).

        bias: the additive mask (`layers.attention_bias`) (B, T, T), or None for
        full attention; theta: the RoPE base (default: the config's).
        """
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta if theta is None else theta)
        kv = []
        for layer in self.layers:
            hidden, k, v = layer(hidden, cos, sin, bias)
            kv.append((k, v))
        return self.norm(hidden), kv
