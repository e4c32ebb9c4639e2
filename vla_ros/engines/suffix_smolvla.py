"""SmolVLA on the optimised engine: its static-buffer suffix, the engine that feeds it, its CPU packing.

The same plan as pi0's StaticSuffixDenoiser (engines/suffix.py), for SmolVLA's
interleaved expert (model/smolvla.py, docs/model.md "SmolVLA"):
- the time half of the action-time MLP (sine-cosine embedding of t through
  `action_time_mlp_in`, plus its bias) depends on the step's t only: computed
  once at load for the configured steps, and once for the clean time t = 0 of
  training-time Real-Time Chunking;
- the cross-attention layers (i % self_attn_every_n_layers != 0) read the
  backbone's cached K/V of layer i through the expert's own k_proj / v_proj.
  That does not depend on x: it is computed once per inference, into static
  buffers, not once per Euler step as the model's `denoise_step` does;
- the self-attention layers attend over one static buffer per layer holding
  the prefix's K/V (written by the prefix runtime once per inference) and the
  actions' K/V, whose rows each step overwrites in place; nothing is
  concatenated;
- masks and RoPE tables depend on the prefix padding only: built once per
  inference (the cross-attention queries' positions 0..H-1 once at load).
With K samples (policy.num_samples) the self-attention layers get sample 0's
prefix rows copied to the other samples once per inference; the
cross-attention layers run the K x H action tokens as one batch of queries
against the one shared projected cache. Every tensor the loops read or write is
a buffer allocated in __init__, so each loop captures as one CUDA graph.

The OptimizedEngine runs it (its prefix runtime also takes the state, SmolVLA's
last prefix token). `pack_smolvla` packs the bf16 layers for
oneDNN (engines/cpu_packed.py): SigLIP and the connector at the vision tower's
rows, the Llama text model's fused q/k/v and its SiLU-gated MLP (SiLU and the
gate product fused into the GEMMs), and the expert at the suffix's rows.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.engines.cpu_packed import PackedGatedMLP, PackedLinear, PackedSiglipAttention, PackedSiglipMLP
from vla_ros.engines.suffix import EulerLoops
from vla_ros.model.layers import attention, attention_bias, linear, sincos_time_embedding
from vla_ros.model.llama import LlamaAttention, LlamaRMSNorm, rope_tables
from vla_ros.model.smolvla import flow_times, SmolVLAModel


def rms(norm: LlamaRMSNorm, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`norm(x)`: one fused kernel in the fp32 stream; in the bf16 stream LlamaRMSNorm's arithmetic.

    That is the statistics in fp32, the normalized value rounded to bf16, times
    the fp32 weight; with `out` (bf16) the product is rounded there, as the next
    product's input would be anyway. Written out rather than F.rms_norm, which
    on the CPU decomposes a bf16 input into more ops and casts than this.
    """
    shape = (x.shape[-1],)
    if x.dtype == torch.float32:
        return F.rms_norm(x, shape, norm.weight, norm.eps)
    xf = x.float()
    scale = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(norm.eps))
    normed = (xf * scale).to(x.dtype)
    return norm.weight * normed if out is None else torch.mul(normed, norm.weight, out=out)


def rope_into(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor,
              scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Split-half RoPE of (..., head_dim) rows `x` in fp32 (llama.apply_rope), written into `out`.

    cos / sin broadcast against x's halves (fp32); `out` takes x's shape in the
    stream's dtype. Two products and two fused multiply-adds, whatever the
    heads; a bf16 `out` gets the fp32 result through `scratch` (fp32, x's
    shape) and one rounding copy.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    target = out if out.dtype == torch.float32 or scratch is None else scratch
    torch.addcmul(x1 * cos, x2, sin, value=-1, out=target[..., :half])
    torch.addcmul(x2 * cos, x1, sin, out=target[..., half:])
    if target is not out:
        out.copy_(target)
    return out


class SmolVLASuffixDenoiser(EulerLoops):
    """Runs `num_steps` Euler steps of SmolVLA's expert for K noise samples from static buffers.

    The interface of StaticSuffixDenoiser (OptimizedEngine runs either):
    inputs written before `forward()`: `noise` (K, H, A) fp32, `prefix_keys` /
    `prefix_values` (L, 1, KV, P, hd views of the K/V buffers) in the model's
    dtype and `prefix_pad` (1, P) bool; `state` (1, A) is written too but not
    read (SmolVLA's state is a prefix token: the prefix runtime takes it).
    Output: `actions` (K, H, A) fp32, normalized.
    """

    def __init__(self, model: SmolVLAModel, num_steps: int = 10, device: torch.device | str | None = None,
                 num_samples: int = 1):
        cfg = model.cfg
        # Self-attention layers: the prefix rows, then the H action rows; cross-attention layers
        # use only the prefix rows.
        super().__init__(model, num_steps, device, num_samples, flow_times(num_steps), cfg.action_horizon)
        device = self._device
        e = cfg.expert
        horizon, plen = cfg.action_horizon, cfg.prefix_len
        buffer = self._buffer
        self.self_layers = [i for i in range(e.depth) if cfg.is_self_attention(i)]
        self.cross_layers = [i for i in range(e.depth) if not cfg.is_self_attention(i)]

        for name in ("keys", "values"):
            # The cross-attention layers' projected prefix K/V (once per inference).
            shape = (len(self.cross_layers), 1, e.num_kv_heads, plen, e.head_dim)
            buffer(f"cross_{name}", *shape, dtype=self.dtype)
        # Scratch rows of the loop: normed hidden states, roped q (and k), in the stream's dtype.
        tokens = num_samples * horizon
        buffer("normed", tokens, e.width, dtype=self.dtype)
        buffer("roped", tokens, e.num_heads + e.num_kv_heads, e.head_dim, dtype=self.dtype)
        buffer("roped_fp32", tokens, e.num_heads + e.num_kv_heads, e.head_dim)  # bf16 stream: RoPE's fp32

        steps = torch.arange(horizon, device=device)
        self.register_buffer("suffix_offsets", steps[None], persistent=False)
        self.register_buffer("causal", torch.ones(horizon, horizon, dtype=torch.bool, device=device).tril(),
                             persistent=False)
        # Cross-attention queries take positions 0..H-1 whatever the prefix: one table, all K samples.
        cross_cos, cross_sin = rope_tables(steps.repeat(num_samples)[None], e.head_dim, cfg.rope_theta)
        # (1, K * H, 1, hd / 2): rows of tokens, broadcast over heads (the projections' own layout).
        self.register_buffer("cross_cos", cross_cos.transpose(1, 2).contiguous(), persistent=False)
        self.register_buffer("cross_sin", cross_sin.transpose(1, 2).contiguous(), persistent=False)

        with torch.no_grad():
            width = e.width
            weight = model.action_time_mlp_in.weight  # (W, 2W) over cat[action_emb, time_emb]
            action_weight = weight[:, :width].float().contiguous()
            self.register_buffer("mlp_action_weight", action_weight, persistent=False)
            t = torch.tensor([*self.times, 0.0], dtype=torch.float32, device=device)
            time_emb = sincos_time_embedding(
                t, width, cfg.min_period, cfg.max_period, table_dtype=torch.float64
            )  # the model's float64 table, as fp32
            time_bias = F.linear(time_emb, weight[:, width:].float(), model.action_time_mlp_in.bias.float())
            self.register_buffer("time_bias", time_bias[:-1].contiguous(), persistent=False)  # (steps, W)
            self.register_buffer("clean_time_bias", time_bias[-1].contiguous(), persistent=False)  # t = 0

    # -- per-inference setup (depends on the prefix only) ---------------------------------------
    def _project_cache(self) -> None:
        """The cross-attention layers' K/V: the cached prefix K (roped) / V through the expert's k/v_proj."""
        e = self.cfg.expert
        width = e.num_kv_heads * e.head_dim
        for slot, index in enumerate(self.cross_layers):
            attn = self.model.expert.layers[index].self_attn
            for source, proj, target in ((self.keys, attn.k_proj, self.cross_keys),
                                         (self.values, attn.v_proj, self.cross_values)):
                flat = source[index, :1, :, : self.plen].transpose(1, 2).reshape(1, self.plen, width)
                projected = linear(proj, flat).view(1, self.plen, e.num_kv_heads, e.head_dim)
                target[slot].copy_(projected.transpose(1, 2))

    def _begin(self):
        """Per inference: the other samples' prefix rows (K > 1), the cross-attention K/V, masks, tables."""
        if self.num_samples > 1:
            for buffer in (self.keys, self.values):
                for index in self.self_layers:
                    buffer[index, 1:, :, : self.plen].copy_(buffer[index, :1, :, : self.plen])
        self._project_cache()
        pad = self.prefix_pad
        horizon = self.cfg.action_horizon
        cos, sin = rope_tables(pad.sum(dim=1, keepdim=True) + self.suffix_offsets, self.cfg.expert.head_dim,
                               self.cfg.rope_theta)
        to_prefix = pad[:, None, :].expand(1, horizon, self.plen)
        # Additive masks in the stream's dtype (0 or MASK_VALUE: the same softmax as fp32 masks).
        self_bias = attention_bias(torch.cat([to_prefix, self.causal[None]], dim=2)).to(self.dtype)
        cross_bias = attention_bias(pad[:, None, :].expand(1, self.num_samples * horizon, self.plen))
        return cos.transpose(1, 2), sin.transpose(1, 2), self_bias, cross_bias.to(self.dtype)

    def _self_attention(self, index: int, attn: nn.Module, normed: torch.Tensor, tables) -> torch.Tensor:
        """Layer `index`'s attention over [prefix; actions]; its action K/V written into the static buffer."""
        cos, sin, bias = tables
        e = self.cfg.expert
        samples, horizon = normed.shape[:2]
        heads, kv_heads, head_dim = e.num_heads, e.num_kv_heads, e.head_dim
        roped = self.roped.view(samples, horizon, heads + kv_heads, head_dim)
        scratch = self.roped_fp32.view(samples, horizon, heads + kv_heads, head_dim)
        if isinstance(attn, PackedLlamaAttention):  # q, k, v from one product; q and k roped together
            qkv = attn.qkv_proj(normed)
            q_and_k = qkv[..., : (heads + kv_heads) * head_dim].view(samples, horizon, -1, head_dim)
            rope_into(q_and_k, cos, sin, roped, scratch)
            v = qkv[..., (heads + kv_heads) * head_dim :].view(samples, horizon, kv_heads, head_dim)
        else:
            q = linear(attn.q_proj, normed).view(samples, horizon, heads, head_dim)
            k = linear(attn.k_proj, normed).view(samples, horizon, kv_heads, head_dim)
            v = linear(attn.v_proj, normed).view(samples, horizon, kv_heads, head_dim)
            rope_into(q, cos, sin, roped[:, :, :heads], scratch[:, :, :heads])
            rope_into(k, cos, sin, roped[:, :, heads:], scratch[:, :, heads:])
        self.keys[index, :, :, self.plen :].copy_(roped[:, :, heads:].transpose(1, 2))
        self.values[index, :, :, self.plen :].copy_(v.transpose(1, 2))
        return attention(roped[:, :, :heads].transpose(1, 2), self.keys[index], self.values[index], bias)

    def _cross_attention(self, slot: int, attn: nn.Module, normed: torch.Tensor, bias) -> torch.Tensor:
        """Attention of the K x H action rows (one batch) to the projected cache of cross layer `slot`."""
        e = self.cfg.expert
        rows = normed.shape[0] * normed.shape[1]
        q = linear(attn.q_proj, normed).view(1, rows, e.num_heads, e.head_dim)
        roped = self.roped[:, : e.num_heads].view(1, rows, -1, e.head_dim)
        scratch = self.roped_fp32[:, : e.num_heads].view(1, rows, -1, e.head_dim)
        q = rope_into(q, self.cross_cos, self.cross_sin, roped, scratch)
        out = attention(q.transpose(1, 2), self.cross_keys[slot], self.cross_values[slot], bias)
        return out.view(normed.shape[0], normed.shape[1], -1)

    def velocity(self, x: torch.Tensor, step: int, tables, clean: torch.Tensor | None = None) -> torch.Tensor:
        """v (K, H, A) at Euler step `step`; `clean` (1, H, 1) bool: rows at t = 0 (training-time RTC)."""
        model, cfg = self.model, self.cfg
        cos, sin, self_bias, cross_bias = tables
        samples, horizon = x.shape[:2]
        action_emb = linear(model.action_in_proj, x)
        if clean is None:
            mixed = F.linear(action_emb, self.mlp_action_weight, self.time_bias[step])
        else:
            bias = torch.where(clean, self.clean_time_bias, self.time_bias[step])
            mixed = F.linear(action_emb, self.mlp_action_weight) + bias
        hidden = linear(model.action_time_mlp_out, F.silu(mixed)).to(self.dtype)
        normed_rows = self.normed.view(samples, horizon, -1)
        slot = 0
        for index, layer in enumerate(model.expert.layers):
            attn = layer.self_attn
            normed = rms(layer.input_layernorm, hidden, normed_rows)
            if index % cfg.self_attn_every_n_layers == 0:
                out = self._self_attention(index, attn, normed, (cos, sin, self_bias))
            else:
                out = self._cross_attention(slot, attn, normed, cross_bias)
                slot += 1
            hidden = residual(attn.o_proj, out, hidden)
            hidden = mlp_residual(layer.mlp, rms(layer.post_attention_layernorm, hidden, normed_rows), hidden)
        return linear(model.action_out_proj, rms(model.expert.norm, hidden).float()).float()


def residual(proj: nn.Module, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """hidden + proj(x): the add fused into the packed GEMM, else as LlamaDecoderLayer.finish adds it."""
    if isinstance(proj, PackedLinear):
        return torch.ops.mkldnn._linear_pointwise(x.to(proj.dtype), hidden, proj.packed, proj.bias, "add")
    return hidden + linear(proj, x).to(hidden.dtype)


def mlp_residual(mlp: nn.Module, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """hidden + mlp(x), the residual add fused into the packed MLP's last GEMM."""
    if isinstance(mlp, PackedLlamaMLP):
        return residual(mlp.down_proj, mlp.gated(x), hidden)
    return hidden + mlp(x).to(hidden.dtype)


# -- oneDNN packing (CPU, bf16) ------------------------------------------------------------------

VISION_ROWS = 1024  # patches per 512 px image
TEXT_ROWS = 256  # 3 x 64 image tokens, the prompt and the state
SUFFIX_ROWS = 50


class PackedLlamaAttention(nn.Module):
    """A self-attention LlamaAttention with q, k and v as one packed product (`qkv`)."""

    def __init__(self, attn: LlamaAttention, rows: int):
        super().__init__()
        cfg = attn.cfg
        self.cfg = cfg
        self.qkv_proj = PackedLinear.of(attn.q_proj, attn.k_proj, attn.v_proj, rows=rows)
        self.o_proj = PackedLinear.of(attn.o_proj, rows=rows)
        kv_width = cfg.num_kv_heads * cfg.head_dim
        self.widths = [cfg.num_heads * cfg.head_dim, kv_width, kv_width]

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv_proj(x).split(self.widths, dim=-1)
        head_dim = self.cfg.head_dim
        return tuple(t.view(batch, tokens, -1, head_dim).transpose(1, 2) for t in (q, k, v))

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)[0]

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The unused q costs one product, once per inference (the prefix's last layer).
        return self.qkv(x)[1:]


class PackedLlamaMLP(PackedGatedMLP):
    """Llama's MLP: SiLU ("swish") on the gate."""

    activation = ("swish",)


class PackedSiglipLayer(nn.Module):
    """A SiglipEncoderLayer on packed products, its LayerNorms and residual adds fused.

    Each LayerNorm is one mixed-precision kernel (bf16 rows, fp32 statistics
    and parameters: the fp32 norm rounded once, as the next product's input
    is); the residual adds run inside the out_proj / fc2 GEMMs.
    """

    def __init__(self, layer: nn.Module, rows: int):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = layer.layer_norm1, layer.layer_norm2
        self.self_attn = PackedSiglipAttention(layer.self_attn, rows)
        self.mlp = PackedSiglipMLP(layer.mlp, rows)

    @staticmethod
    def _norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn
        batch, tokens, width = x.shape
        qkv = attn.qkv_proj(self._norm(self.layer_norm1, x))
        q, k, v = qkv.view(batch, tokens, 3, attn.num_heads, width // attn.num_heads).permute(2, 0, 3, 1, 4)
        x = residual(attn.out_proj, attention(q, k, v, None), x)
        return residual(self.mlp.fc2, self.mlp.fc1(self._norm(self.layer_norm2, x), "gelu", "tanh"), x)


def _packable(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) and layer.weight.dtype == torch.bfloat16 \
        and layer.weight.device.type == "cpu"


def _pack_llama(stack: nn.Module, rows: int, cross_layers=()) -> None:
    for index, layer in enumerate(stack.layers):
        attn = layer.self_attn
        if index in cross_layers:
            # k / v_proj read the backbone's cache (once per inference), q_proj the actions.
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                if _packable(getattr(attn, name)):
                    setattr(attn, name, PackedLinear.of(getattr(attn, name), rows=rows))
        elif _packable(attn.q_proj):
            layer.self_attn = PackedLlamaAttention(attn, rows)
        if _packable(layer.mlp.gate_proj):
            layer.mlp = PackedLlamaMLP(layer.mlp, rows)


def pack_smolvla(model: SmolVLAModel, expert: bool = True, inplace: bool = False) -> SmolVLAModel:
    """`cpu_packed.pack_model` for SmolVLA: a copy (or, inplace, the model itself) with bf16 layers packed.

    expert=False leaves the action expert plain (a torch.compile'd suffix).
    """
    if inplace:
        packed = model
    else:
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        packed = copy.deepcopy(model, memo=shared)
    vlm = packed.vlm
    layers = vlm.vision_model.encoder.layers
    for index, layer in enumerate(layers):
        if _packable(layer.self_attn.q_proj) and _packable(layer.mlp.fc1):
            layers[index] = PackedSiglipLayer(layer, VISION_ROWS)
    projection = vlm.connector.modality_projection
    if _packable(projection.proj):
        projection.proj = PackedLinear.of(projection.proj, rows=VISION_ROWS // packed.cfg.scale_factor**2)
    _pack_llama(packed.text_model, TEXT_ROWS)
    if expert:
        cross = [i for i in range(packed.cfg.expert.depth) if not packed.cfg.is_self_attention(i)]
        _pack_llama(packed.expert, SUFFIX_ROWS, cross)
    return packed
