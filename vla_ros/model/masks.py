"""Attention masks and RoPE positions of the pi0 token layout.

The layout is described in (docs/model.md, "Token layout, masks and positions").
"""

from __future__ import annotations

import torch


def attention_mask(pad_mask: torch.Tensor, ar_mask: torch.Tensor) -> torch.Tensor:
    """Block-causal mask from padding and autoregressive flags.

    pad_mask, ar_mask: (B, N). With c = cumsum(ar), query i may attend key j iff
    c[j] <= c[i] and key j is real. Returns bool (B, N, N) indexed [query, key].
    """
    cumsum = torch.cumsum(ar_mask.to(torch.int32), dim=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    return causal & pad_mask[:, None, :].bool()


def suffix_attention_mask(
    prefix_pad: torch.Tensor, suffix_pad: torch.Tensor, suffix_ar: torch.Tensor
) -> torch.Tensor:
    """Mask of suffix queries over [prefix keys, suffix keys]: (B, S, P + S).

    The prefix's ar flags are all zero, so every suffix query sees every real
    prefix key; within the suffix the usual block-causal rule applies.
    """
    batch, suffix_len = suffix_pad.shape
    to_prefix = prefix_pad[:, None, :].bool().expand(batch, suffix_len, prefix_pad.shape[1])
    return torch.cat([to_prefix, attention_mask(suffix_pad, suffix_ar)], dim=2)


def prefix_positions(prefix_pad: torch.Tensor) -> torch.Tensor:
    """Masked cameras and padding take no positions: cumsum(pad) - 1."""
    return torch.cumsum(prefix_pad.to(torch.int64), dim=1) - 1


def suffix_positions(prefix_pad: torch.Tensor, suffix_pad: torch.Tensor) -> torch.Tensor:
    offset = prefix_pad.to(torch.int64).sum(dim=1, keepdim=True)
    return offset + torch.cumsum(suffix_pad.to(torch.int64), dim=1) - 1


def suffix_ar_mask(batch: int, horizon: int, pi05: bool, device: torch.device | None = None) -> torch.Tensor:
    """pi0: [state=1, first action=1, rest 0]; pi0.5: [first action=1, rest 0]."""
    ar = torch.zeros(batch, horizon + (0 if pi05 else 1), dtype=torch.bool, device=device)
    ar[:, 0] = True
    if not pi05:
        ar[:, 1] = True
    return ar
