"""The suffix denoiser over static buffers: all Euler steps of the action expert as one call.

What straightforward ports do per step, and what this module does instead:
- time embeddings, pi0's time half of the action-time MLP and pi0.5's AdaRMS
  modulation (scale / shift / gate for each of the 2L+1 norms) depend on the
  step's t only: computed once at load for the configured number of steps;
- the mask and RoPE tables depend on the prefix padding only: built once per
  inference, not once per step;
- the prefix K/V cache is never concatenated with the suffix K/V (that copies
  the whole cache every step and layer): prefix and suffix K/V share one static
  buffer per layer, the prefix encoder writes the front part once per
  inference, and each step overwrites only the suffix's few rows at the end.
  With one KV head (every pi0 / pi0.5 config) each layer's front part is one
  dense block, which the ONNX and TensorRT prefix runtimes write by address
  (prefix_graph.output_regions); the front parts of all layers together are not.
  Each layer's block starts on a 256-byte boundary (rows padded, never read),
  as TensorRT requires of the addresses it writes.
Every tensor the loop reads or writes lives in a buffer allocated in __init__,
so the whole `forward` can be captured as one CUDA graph (suffix_cuda_graph.py).

Real-Time Chunking (engines/guidance.py) has two more loops over the same
buffers plus four of its own (target, row weights, per-step guidance weight,
clamped rows), so each captures as a graph of its own and `forward` (the
unguided loop) is untouched: `forward_guided` adds LeRobot's identity-Jacobian
guidance, elementwise on top of each velocity; `forward_trained` clamps the
first d rows and gives them the clean time (per-token time bias for pi0,
per-token AdaRMS modulation for pi0.5).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.engines.guidance import guided_velocity, ModelGuidance
from vla_ros.model import masks
from vla_ros.model.layers import (
    apply_rope,
    attention,
    attention_bias,
    gated_residual,
    linear,
    RMS_EPS,
    rope_cos_sin,
)
from vla_ros.model.pi0 import euler_times, Pi0Model


# TensorRT's setTensorAddress needs 256-byte aligned addresses; the K/V buffers start each layer on one.
KV_ALIGN_BYTES = 256


def aligned_rows(rows: int, kv_heads: int, head_dim: int, element_size: int) -> int:
    """The fewest rows >= `rows` whose (kv_heads, rows, head_dim) block is a multiple of KV_ALIGN_BYTES."""
    stored = rows
    while (kv_heads * stored * head_dim * element_size) % KV_ALIGN_BYTES:
        stored += 1
    return stored


class EulerLoops(nn.Module):
    """The Euler loops every static suffix runs, over its own buffers and `velocity`.

    Subclasses allocate `noise`, `actions` and the RTC buffers (`rtc_target`
    (1, H, A), `rtc_weights` (1, H, 1), `rtc_gain` (steps,), `rtc_clamp`
    (1, H, 1) bool), set `times` (t of each step) and `dt`, and define
    `_begin()` (per inference: what every step shares, e.g. mask and RoPE
    tables) and `velocity(x, step, tables, clean=None)`. Each loop reads and
    writes static buffers only, so each captures as one CUDA graph.

    `__init__` allocates what every static suffix has: `noise` / `actions`
    (K, H, A), `state` (1, A), the K/V buffers (L, K, KV, P + S, hd: the
    prefix rows, then `suffix_rows` rows; every layer on a KV_ALIGN_BYTES
    boundary, as TensorRT binds tensors only at such addresses),
    `prefix_pad` (1, P) and the RTC buffers.
    """

    def __init__(self, model, num_steps: int, device, num_samples: int, times: list[float], suffix_rows: int):
        super().__init__()
        cfg = model.cfg
        self.cfg = cfg
        self.model = model  # shares the weights; nothing is copied
        self.num_steps = num_steps
        self.num_samples = num_samples
        self._device = torch.device(device) if device is not None else model.action_in_proj.weight.device
        self.dtype = model.compute_dtype
        self.times = times
        self.dt = -1.0 / num_steps
        e = cfg.expert
        horizon, adim, plen = cfg.action_horizon, cfg.action_dim, cfg.prefix_len
        self.plen = plen
        self._buffer("noise", num_samples, horizon, adim)
        self._buffer("state", 1, adim)
        self._buffer("actions", num_samples, horizon, adim)
        rows = plen + suffix_rows
        element = torch.empty((), dtype=self.dtype).element_size()
        stored = aligned_rows(rows, e.num_kv_heads, e.head_dim, element)
        for name in ("keys", "values"):
            shape = (e.depth, num_samples, e.num_kv_heads, stored, e.head_dim)
            padded = torch.zeros(shape, dtype=self.dtype, device=self._device)
            self.register_buffer(name, padded[:, :, :, :rows], persistent=False)
        self._buffer("prefix_pad", 1, plen, dtype=torch.bool)
        # Real-Time Chunking inputs (set_guidance): Y, W, g per step, the clamped rows.
        self._buffer("rtc_target", 1, horizon, adim)
        self._buffer("rtc_weights", 1, horizon, 1)
        self._buffer("rtc_gain", num_steps)
        self._buffer("rtc_clamp", 1, horizon, 1, dtype=torch.bool)

    def _buffer(self, name: str, *shape: int, dtype: torch.dtype = torch.float32) -> None:
        self.register_buffer(name, torch.zeros(*shape, dtype=dtype, device=self._device), persistent=False)

    @property
    def prefix_keys(self) -> torch.Tensor:
        """(L, 1, KV, P, hd) view of the static K buffer that the prefix encoder fills (sample 0's).

        Not contiguous as a whole (each layer's suffix rows follow its prefix rows);
        with one KV head each layer's slice prefix_keys[l] is.
        """
        return self.keys[:, :1, :, : self.plen]

    @property
    def prefix_values(self) -> torch.Tensor:
        return self.values[:, :1, :, : self.plen]

    @torch.no_grad()
    def forward(self) -> torch.Tensor:
        """The unguided loop."""
        tables = self._begin()
        x = self.noise
        for step in range(len(self.times)):
            x = x + self.dt * self.velocity(x, step, tables)
        self.actions.copy_(x)
        return self.actions

    # -- Real-Time Chunking -------------------------------------------------------------------
    def set_guidance(self, guidance: ModelGuidance) -> None:
        """Write one inference's guidance into the RTC buffers (on the current stream)."""
        device = self.rtc_target.device
        self.rtc_target.copy_(torch.from_numpy(guidance.target)[None])
        self.rtc_weights.copy_(torch.from_numpy(guidance.weights)[None, :, None])
        self.rtc_gain.copy_(torch.from_numpy(guidance.step_weights(self.times)))
        rows = torch.arange(self.rtc_clamp.shape[1], device=device) < guidance.clamped_rows
        self.rtc_clamp.copy_(rows[None, :, None])

    @torch.no_grad()
    def forward_guided(self) -> torch.Tensor:
        """The Euler loop with LeRobot's guidance toward `rtc_target` (identity Jacobian)."""
        tables = self._begin()
        x = self.noise
        for step, t in enumerate(self.times):
            v = self.velocity(x, step, tables)
            x = x + self.dt * guided_velocity(v, x, t, self.rtc_target, self.rtc_weights, self.rtc_gain[step])
        self.actions.copy_(x)
        return self.actions

    @torch.no_grad()
    def forward_trained(self) -> torch.Tensor:
        """Training-time RTC: the `rtc_clamp` rows set to the target and given the clean time each step."""
        tables = self._begin()
        clean = self.rtc_clamp
        x = self.noise
        for step in range(len(self.times)):
            x = torch.where(clean, self.rtc_target, x)
            x = x + self.dt * self.velocity(x, step, tables, clean)
        self.actions.copy_(torch.where(clean, self.rtc_target, x))
        return self.actions


class StaticSuffixDenoiser(EulerLoops):
    """Runs `num_steps` Euler steps for K noise samples of one observation from static buffers into `actions`.

    Inputs written by the caller before `forward()`: `noise` (K, H, A) fp32,
    `state` (1, A) fp32 (pi0 only), `prefix_keys` / `prefix_values`
    (L, 1, KV, P, hd views of the K/V buffers: sample 0's) in the expert's dtype and
    `prefix_pad` (1, P) bool.
    Output: `actions` (K, H, A) fp32, normalized.
    With K > 1 (policy.num_samples) the loop first copies sample 0's prefix rows to
    the other samples' (once per inference, inside the captured graph), then
    denoises all K as one batch.
    """

    def __init__(self, model: Pi0Model, num_steps: int = 10, device: torch.device | str | None = None,
                 num_samples: int = 1):
        cfg = model.cfg
        super().__init__(model, num_steps, device, num_samples, euler_times(num_steps), cfg.suffix_len)
        device = self._device
        e = cfg.expert
        horizon, suffix_len = cfg.action_horizon, cfg.suffix_len

        ar = masks.suffix_ar_mask(1, horizon, cfg.pi05, device)
        self.register_buffer("suffix_ar", ar, persistent=False)
        self.register_buffer(
            "suffix_offsets", torch.arange(suffix_len, device=device)[None], persistent=False
        )

        with torch.no_grad():
            t = torch.tensor(self.times, dtype=torch.float32, device=device)
            if cfg.pi05:
                self._precompute_modulation(model, t)
                # The clean time (0) of training-time RTC's clamped rows, (2L+1, 1, W) each.
                for name, mod in zip(("scale", "shift", "gate"), self._modulation(model, t.new_zeros(1))):
                    self.register_buffer(f"clean_{name}", mod[0], persistent=False)
            else:
                scales = [1.0 + norm.weight.float() for norm in self._expert_norms(model)]
                self.register_buffer("norm_scale", torch.stack(scales), persistent=False)  # (2L+1, W)
                width = e.width
                weight = model.action_time_mlp_in.weight  # (W, 2W) over cat[action_emb, time_emb]
                self.register_buffer("mlp_action_weight", weight[:, :width].contiguous(), persistent=False)
                time_bias = linear(
                    model.action_time_mlp_in,
                    torch.cat([torch.zeros(num_steps, width, device=device), model.time_embedding(t)], dim=1),
                )  # (steps, W): time half + bias, one row per step
                self.register_buffer("time_bias", time_bias[:, None, :], persistent=False)
                clean_time = model.time_embedding(t.new_zeros(1))
                clean_input = torch.cat([torch.zeros(1, width, device=device), clean_time], dim=1)
                clean = linear(model.action_time_mlp_in, clean_input)
                self.register_buffer("clean_time_bias", clean, persistent=False)  # (1, W): t = 0

    @staticmethod
    def _expert_norms(model: Pi0Model) -> list[nn.Module]:
        """The 2L+1 norms in the order `velocity` indexes them."""
        norms = []
        for layer in model.expert.layers:
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
        return norms + [model.expert.norm]

    def _modulation(self, model: Pi0Model, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(1 + scale, shift, gate) of every norm at each t, (len(t), 2L+1, 1, W) each.

        scale / shift stay fp32 (norm math), the gate is in the stream dtype; the
        scale is stored as (1 + scale), the factor the norm multiplies by.
        """
        cond = model.time_condition(t)  # (steps, W)
        norms = self._expert_norms(model)
        mods = [torch.stack(parts, dim=1) for parts in zip(*(norm.modulation(cond) for norm in norms))]
        return 1.0 + mods[0].float(), mods[1].float(), mods[2].to(self.dtype)

    def _precompute_modulation(self, model: Pi0Model, t: torch.Tensor) -> None:
        for name, mod in zip(("mod_scale", "mod_shift", "mod_gate"), self._modulation(model, t)):
            self.register_buffer(name, mod, persistent=False)

    # -- per-inference setup (depends on the prefix padding only) ---------------------------
    def _layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = self.prefix_pad.sum(dim=1, keepdim=True) + self.suffix_offsets
        cos, sin = rope_cos_sin(positions, self.cfg.expert.head_dim)
        mask = masks.suffix_attention_mask(self.prefix_pad, torch.ones_like(self.suffix_ar), self.suffix_ar)
        return cos, sin, attention_bias(mask)

    def _norm(self, x: torch.Tensor, step: int, index: int, clean: torch.Tensor | None = None):
        # torch's fused rms_norm: the same fp32 statistics as rms_normalize in one kernel
        # (the suffix is dispatch-bound: ~45 small ops per layer and step).
        shape = (x.shape[-1],)
        if not self.cfg.pi05:
            return F.rms_norm(x.float(), shape, self.norm_scale[index], RMS_EPS).to(x.dtype), None
        normed = F.rms_norm(x.float(), shape, None, RMS_EPS)
        scale, shift = self.mod_scale[step, index], self.mod_shift[step, index]
        gate = self.mod_gate[step, index]
        if clean is not None:  # training-time RTC: the clamped rows (clean = 1) are at t = 0
            scale = torch.where(clean, self.clean_scale[index], scale)
            shift = torch.where(clean, self.clean_shift[index], shift)
            gate = torch.where(clean, self.clean_gate[index], gate)
        out = torch.addcmul(shift, normed, scale)
        return out.to(x.dtype), gate

    def velocity(self, x: torch.Tensor, step: int, tables, clean=None) -> torch.Tensor:
        """v at Euler step `step` (tables from `_begin`); `clean` (1, H, 1) bool marks rows at t = 0."""
        state_emb, cos, sin, mask = tables
        model = self.model
        action_emb = linear(model.action_in_proj, x)
        if self.cfg.pi05:
            hidden = action_emb.to(self.dtype)
        else:
            bias = self.time_bias[step] if clean is None else torch.where(clean, self.clean_time_bias,
                                                                          self.time_bias[step])
            mixed = F.silu(F.linear(action_emb, self.mlp_action_weight) + bias)
            hidden = torch.cat([state_emb, linear(model.action_time_mlp_out, mixed)], dim=1).to(self.dtype)
        for index, layer in enumerate(model.expert.layers):
            normed, gate = self._norm(hidden, step, 2 * index, clean)
            q, k, v = layer.self_attn.qkv(normed)
            self.keys[index, :, :, self.plen :].copy_(apply_rope(k, cos, sin))
            self.values[index, :, :, self.plen :].copy_(v)
            attn = attention(apply_rope(q, cos, sin), self.keys[index], self.values[index], mask)
            hidden = gated_residual(hidden, linear(layer.self_attn.o_proj, attn).to(hidden.dtype), gate)
            normed, gate = self._norm(hidden, step, 2 * index + 1, clean)
            hidden = gated_residual(hidden, layer.mlp(normed).to(hidden.dtype), gate)
        out, _ = self._norm(hidden, step, 2 * len(model.expert.layers), clean)
        return linear(model.action_out_proj, out[:, -self.cfg.action_horizon :]).float()

    def _begin(self):
        """Per inference: the other samples' prefix rows (K > 1), the state token, mask and RoPE tables."""
        if self.num_samples > 1:
            for buffer in (self.keys, self.values):
                buffer[:, 1:, :, : self.plen].copy_(buffer[:, :1, :, : self.plen])
        state_emb = None
        if not self.cfg.pi05:
            state_emb = linear(self.model.state_proj, self.state)[:, None, :].expand(self.num_samples, -1, -1)
        return state_emb, *self._layout()
