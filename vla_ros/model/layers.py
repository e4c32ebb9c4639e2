"""Building blocks shared by the Gemma stacks and the suffix runtimes.

Numerics follow (docs/model.md, "Numerics and mixed precision"): RMS statistics and softmax in fp32,
rotate-half RoPE over the full head dimension, multi-query attention with an
additive mask value rather than -inf (so fully masked rows stay finite).
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

MASK_VALUE = -2.3819763e38
RMS_EPS = 1e-6
ROPE_THETA = 10000.0


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a Linear in its own weight dtype.

    The reference keeps some layers fp32 while the stream runs in bf16, so
    inputs are cast at each layer boundary. CPU runtimes swap in packed layers
    (engines/cpu_packed.py), which cast for themselves.
    """
    if isinstance(layer, nn.Linear):
        return F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias)
    return layer(x)


def rms_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / rms(x) with the statistics in fp32; returns fp32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS)


class RMSNorm(nn.Module):
    """Gemma RMSNorm: normalized * (1 + weight). The weight is stored zero-centred."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        out = rms_normalize(x) * (1.0 + self.weight.float())
        return out.to(x.dtype), None


class AdaRMSNorm(nn.Module):
    """pi0.5's adaptive RMSNorm: scale, shift and a residual gate from the time condition.

    The dense layer is zero-initialised so that a fresh layer is the bare RMS
    normalization with a zero gate.
    """

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.dense = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scale, shift, gate), each (B, 1, dim): depends on t only, so runtimes precompute it.

        A per-token condition (B, H, C) (training-time RTC's clean rows) gives (B, H, dim) each.
        """
        out = linear(self.dense, cond.float())
        scale, shift, gate = (out[:, None, :] if cond.dim() == 2 else out).chunk(3, dim=-1)
        return scale, shift, gate

    def forward(self, x: torch.Tensor, cond: torch.Tensor):
        return modulated_rms(x, *self.modulation(cond))


def modulated_rms(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, gate: torch.Tensor):
    out = rms_normalize(x) * (1.0 + scale.float()) + shift.float()
    return out.to(x.dtype), gate.to(x.dtype)


def gated_residual(residual: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return residual + y if gate is None else residual + y * gate


class GeGLU(nn.Module):
    """Gemma MLP: down(gelu_tanh(gate(x)) * up(x)), no biases."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(linear(self.gate_proj, x), approximate="tanh") * linear(self.up_proj, x)
        return linear(self.down_proj, hidden)


def rope_cos_sin(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (B, 1, T, head_dim) in fp32 for integer positions (B, T)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim
    inv_freq = 1.0 / (ROPE_THETA**exponent)
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on (B, heads, T, head_dim), computed in fp32."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def use_fused_attention(q: torch.Tensor) -> bool:
    """Whether torch's fused SDPA kernel beats explicit matmuls for this query.

    Measured on an AMX CPU (2 threads, 816 tokens): fused is 2-5x faster in fp32
    and for small heads in bf16, but explicit bf16 matmuls (AMX tiles) win at
    head_dim 256, the full-size Gemma. ONNX export always takes the explicit
    form, which every exporter and provider handles.
    """
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False
    return q.dtype == torch.float32 or q.shape[-1] < 128


def attention_bias(mask: torch.Tensor) -> torch.Tensor:
    """The additive fp32 form (0 or MASK_VALUE) of a bool attention mask, True = may attend.

    Built once per pass and shared by every layer: one add per layer instead of
    inverting the mask and filling. Results are bit-identical: a logit plus
    MASK_VALUE rounds to MASK_VALUE in fp32.
    """
    return torch.where(mask, 0.0, MASK_VALUE)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-query attention.

    q (B, H, T, Dh); k, v (B, KV, S, Dh); mask (B, T, S): the `attention_bias` of a
    bool mask (built once per pass), or None for full attention. Returns (B, T, H * Dh)
    in v's dtype.
    Every query row must see at least one key (true of every pi0 layout).
    """
    batch, heads, tokens, head_dim = q.shape
    if use_fused_attention(q):
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if mask is None else mask[:, None], enable_gqa=k.shape[1] != heads
        )
        return out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    kv_heads = k.shape[1]
    group = heads // kv_heads
    # Group query heads over their shared kv head: (B * KV, H/KV * T, Dh). 3-D bmm takes the
    # transposed keys as they are; the 4-D broadcasting matmul copied them first.
    qg = q.reshape(batch * kv_heads, group * tokens, head_dim)
    keys = k.reshape(batch * kv_heads, -1, head_dim)
    logits = torch.bmm(qg, keys.transpose(1, 2)).view(batch, kv_heads, group, tokens, -1)
    scale = head_dim**-0.5
    if mask is None:
        logits = logits.float() * scale
    else:
        logits = torch.add(mask[:, None, None], logits, alpha=scale)
    probs = torch.softmax(logits, dim=-1).to(v.dtype)
    values = v.reshape(batch * kv_heads, -1, head_dim)
    out = torch.bmm(probs.view(batch * kv_heads, group * tokens, -1), values)
    return out.view(batch, heads, tokens, head_dim).transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def sincos_time_embedding(
    t: torch.Tensor,
    dim: int,
    min_period: float = 4e-3,
    max_period: float = 4.0,
    table_dtype: torch.dtype | None = None,
):
    """Sine-cosine embedding of the flow-matching time t (B,) -> (B, dim), fp32; t (B, H) -> (B, H, dim).

    The pi0 reference computes the table in float64 on GPUs and float32 on the CPU;
    we do the same so CPU results match it bit for bit. `table_dtype` forces
    one (SmolVLA's reference computes in float64 everywhere).
    """
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    dtype = table_dtype or (torch.float64 if t.device.type == "cuda" else torch.float32)
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2.0 * math.pi / period) * t.to(dtype)[..., None]
    return torch.cat([angle.sin(), angle.cos()], dim=-1).float()
