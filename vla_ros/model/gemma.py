"""Gemma stacks and the joint ("mixture of two experts") transformer of pi0.

The prefix language model (expert 0) and the action expert (expert 1) keep their
own weights but attend jointly, layer by layer: each projects its own tokens to
q/k/v, the sequences are concatenated, attention runs once over the union, and
each expert takes its own slice back through its o_proj and MLP.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vla_ros.model.config import GemmaConfig
from vla_ros.model.layers import (
    AdaRMSNorm,
    apply_rope,
    attention,
    attention_bias,
    gated_residual,
    GeGLU,
    linear,
    RMSNorm,
    rope_cos_sin,
)


class GemmaSelfAttention(nn.Module):

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.width, bias=False)

    def project(self, x: torch.Tensor, heads: int, layer: nn.Linear) -> torch.Tensor:
        batch, tokens, _ = x.shape  # (B, T, W) -> (B, heads, T, hd)
        return linear(layer, x).view(batch, tokens, heads, self.cfg.head_dim).transpose(1, 2)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        return (
            self.project(x, cfg.num_heads, self.q_proj),
            self.project(x, cfg.num_kv_heads, self.k_proj),
            self.project(x, cfg.num_kv_heads, self.v_proj),
        )

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        return self.project(x, cfg.num_kv_heads, self.k_proj), self.project(x, cfg.num_kv_heads, self.v_proj)


class GemmaLayer(nn.Module):

    def __init__(self, cfg: GemmaConfig, cond_dim: int | None):
        super().__init__()

        def norm() -> nn.Module:
            return RMSNorm(cfg.width) if cond_dim is None else AdaRMSNorm(cfg.width, cond_dim)

        self.input_layernorm = norm()
        self.self_attn = GemmaSelfAttention(cfg)
        self.post_attention_layernorm = norm()
        self.mlp = GeGLU(cfg.width, cfg.mlp_dim)


class GemmaStack(nn.Module):
    """`layers` + final `norm` (+ `embed_tokens` for the language model).

    cond_dim set means AdaRMS norms (pi0.5's action expert).
    """

    def __init__(self, cfg: GemmaConfig, vocab_size: int | None = None, cond_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, cfg.width)
        self.layers = nn.ModuleList(GemmaLayer(cfg, cond_dim) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width) if cond_dim is None else AdaRMSNorm(cfg.width, cond_dim)


@dataclasses.dataclass
class KVCache:
    """Per-layer keys and values of the prefix, RoPE applied.

    keys, values: (L, B, KV, P, hd); pad_mask: bool (B, P), True = real token;
    last_logits: (B, vocab) fp32 of the last real token, for models that decode after the prefix.
    """

    keys: torch.Tensor
    values: torch.Tensor
    pad_mask: torch.Tensor
    last_logits: torch.Tensor | None = None


def joint_forward(
    stacks: list[GemmaStack],
    embeds: list[torch.Tensor | None],
    conds: list[torch.Tensor | None],
    mask: torch.Tensor,
    positions: torch.Tensor,
    past: KVCache | None = None,
    collect_kv: bool = False,
    kv_only: bool = False,
) -> tuple[list[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor] | None]:
    """Run the experts jointly over their tokens.

    embeds[e] (B, T_e, W_e) or None when expert e has no tokens in this pass;
    conds[e] AdaRMS condition (B, C) or None. mask bool (B, T, S) over queries T =
    sum T_e and keys S = past length + T. positions (B, T).
    collect_kv returns the stacked (L, B, KV, T, hd) keys/values of this pass.
    kv_only skips work whose only use is the hidden states after the last layer:
    building a cache needs every layer's K/V, not the final outputs.
    Returns the final-normed outputs per expert (None for absent experts or
    under kv_only) and the collected K/V.
    """
    active = [e for e, h in enumerate(embeds) if h is not None]
    lengths = [embeds[e].shape[1] for e in active]
    head_dim = stacks[active[0]].cfg.head_dim
    cos, sin = rope_cos_sin(positions, head_dim)
    hidden = {e: embeds[e] for e in active}
    mask = attention_bias(mask)
    keys, values = [], []
    depth = stacks[active[0]].cfg.depth
    for index in range(depth):
        last = index == depth - 1
        qs, ks, vs, gates = [], [], [], {}
        for e in active:
            layer = stacks[e].layers[index]
            normed, gates[e] = layer.input_layernorm(hidden[e], conds[e])
            if kv_only and last:
                k, v = layer.self_attn.kv(normed)
            else:
                q, k, v = layer.self_attn.qkv(normed)
                qs.append(q)
            ks.append(k)
            vs.append(v)
        k = apply_rope(torch.cat(ks, dim=2), cos, sin)
        v = torch.cat(vs, dim=2)
        if collect_kv:
            keys.append(k)
            values.append(v)
        if kv_only and last:
            break
        q = apply_rope(torch.cat(qs, dim=2), cos, sin)
        if past is not None:
            k = torch.cat([past.keys[index].to(k.dtype), k], dim=2)
            v = torch.cat([past.values[index].to(v.dtype), v], dim=2)
        out = attention(q, k, v, mask)
        for e, piece in zip(active, out.split(lengths, dim=1)):
            layer = stacks[e].layers[index]
            h = gated_residual(hidden[e], linear(layer.self_attn.o_proj, piece).to(hidden[e].dtype), gates[e])
            normed, gate = layer.post_attention_layernorm(h, conds[e])
            hidden[e] = gated_residual(h, layer.mlp(normed).to(h.dtype), gate)
    kv = (torch.stack(keys), torch.stack(values)) if collect_kv else None
    if kv_only:
        return [None] * len(embeds), kv
    outputs: list[torch.Tensor | None] = [None] * len(embeds)
    for e in active:
        outputs[e] = stacks[e].norm(hidden[e], conds[e])[0]
    return outputs, kv
