"""Qwen3 blocks: Llama blocks (model/llama.py) plus an RMSNorm over each query and key head.

The layout and module names are transformers' `Qwen3DecoderLayer` / `Qwen3Model`
(`self_attn.{q,k,v,o}_proj`, `self_attn.{q,k}_norm`, `input_layernorm`,
`post_attention_layernorm`, `mlp.{gate,up,down}_proj`, `norm`, `embed_tokens`).
The one difference from Llama: after q_proj / k_proj, each head's
`head_dim` features go through an RMSNorm (`weight * x / rms(x)`, shared by
the heads) and only then through RoPE. `head_dim` is a free parameter (Qwen3-8B:
32 x 128 = 4096 = width, but Qwen3-0.6B: 16 x 128 = 2048 for width 1024), K/V
heads are grouped (GQA), there are no biases and the RoPE base is 1e6.
"""

from __future__ import annotations

import torch

from vla_ros.model.config import LlamaConfig
from vla_ros.model.llama import LlamaAttention, LlamaDecoderLayer, LlamaRMSNorm, LlamaStack


class Qwen3Attention(LlamaAttention):
    """Llama attention with `q_norm` / `k_norm` over each head before RoPE."""

    def __init__(self, cfg: LlamaConfig, kv_in: int | None = None):
        super().__init__(cfg, kv_in)
        self.q_norm = LlamaRMSNorm(cfg.head_dim, cfg.rms_eps)
        self.k_norm = LlamaRMSNorm(cfg.head_dim, cfg.rms_eps)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_norm(super().query(x))

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = super().key_value(x)
        return self.k_norm(k), v


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_class = Qwen3Attention


class Qwen3Stack(LlamaStack):
    """`layers` + final `norm` (+ `embed_tokens` when `vocab_size` is given), named as Qwen3Model."""

    layer_class = Qwen3DecoderLayer
