"""The SmolVLA policy network (LeRobot 0.6.1's `smolvla`) in PyTorch: the reference implementation.

The same three steps as pi0 (vla_ros/model/pi0.py), with SmolVLA's pieces
(docs/model.md, "SmolVLA"):

  embed_prefix(images, masks, tokens, token_masks, state) -> KVCache
      SmolVLM2's vision tower, pixel shuffle and connector per camera, the
      prompt, and the state as one last token, through the Llama text model
      cut to its first layers; the cache keeps every layer's K (roped) and V.
  denoise_step(cache, x_t, t)  -> v_t
      the action expert over the 50 action tokens: layer i self-attends over
      [prefix; actions] (actions causal among themselves) when
      i % self_attn_every_n_layers == 0, otherwise cross-attends to the
      text model's cached K/V of layer i, re-projected by the expert's own
      k_proj / v_proj.
  sample_actions(...)  -> actions   (Euler steps from noise at t = 1 to t = 0)

Module names mirror LeRobot's checkpoint keys without their leading `model.`
(`vlm_with_expert.vlm.model.{vision_model,connector,text_model}`,
`vlm_with_expert.lm_expert`, `state_proj`, `action_*`), so weights load by name.
The VLM's `lm_head` is not built: nothing at inference reads it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.model import masks
from vla_ros.model.config import SmolVLAConfig
from vla_ros.model.gemma import KVCache
from vla_ros.model.layers import attention, attention_bias, linear, sincos_time_embedding
from vla_ros.model.llama import apply_rope, LlamaStack, rope_tables
from vla_ros.model.paligemma import mixed_precision
from vla_ros.model.siglip import SiglipVisionModel

__all__ = ["pixel_shuffle", "query_key_value", "SmolVLAModel"]


def pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """SmolVLM's space-to-depth of (B, S, D) patch tokens (S = n * n) -> (B, S / scale^2, D * scale^2).

    Output token (r, c) of the (n / scale)^2 grid holds, at feature
    (h % scale) * scale * D + (w % scale) * D + d, the patch (h, w) =
    (scale * r + h % scale, scale * c + w % scale).
    """
    batch, tokens, dim = x.shape
    side = math.isqrt(tokens)
    x = x.reshape(batch, side, side // scale, dim * scale)
    x = x.permute(0, 2, 1, 3).reshape(batch, side // scale, side // scale, dim * scale * scale)
    return x.permute(0, 2, 1, 3).reshape(batch, tokens // scale**2, dim * scale * scale)


def query_key_value(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v heads of `x`: one fused product where the attention has one (CPU-packed layers), else three."""
    if hasattr(attn, "qkv"):
        return attn.qkv(x)
    return (attn.query(x), *attn.key_value(x))


class _ModalityProjection(nn.Module):

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, width, bias=False)


class SmolVLMConnector(nn.Module):
    """Pixel shuffle, then a bias-free projection to the text width (`modality_projection.proj`)."""

    def __init__(self, cfg: SmolVLAConfig):
        super().__init__()
        self.scale_factor = cfg.scale_factor
        self.modality_projection = _ModalityProjection(cfg.vision.width * cfg.scale_factor**2, cfg.text.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.modality_projection.proj, pixel_shuffle(x, self.scale_factor))


class _SmolVLMModel(nn.Module):

    def __init__(self, cfg: SmolVLAConfig):
        super().__init__()
        self.vision_model = SiglipVisionModel(cfg.vision)
        self.connector = SmolVLMConnector(cfg)
        self.text_model = LlamaStack(cfg.text, vocab_size=cfg.vocab_size)


class _SmolVLM(nn.Module):

    def __init__(self, cfg: SmolVLAConfig):
        super().__init__()
        self.model = _SmolVLMModel(cfg)


class _VLMWithExpert(nn.Module):

    def __init__(self, cfg: SmolVLAConfig):
        super().__init__()
        self.vlm = _SmolVLM(cfg)
        cross = [i for i in range(cfg.expert.depth) if not cfg.is_self_attention(i)]
        self.lm_expert = LlamaStack(cfg.expert, cross_layers=cross)


def flow_times(num_steps: int) -> list[float]:
    """t of each Euler step as LeRobot's flow matching computes it: 1 + k * (-1 / n), k = 0 .. n - 1."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    dt = -1.0 / num_steps
    return [1.0 + k * dt for k in range(num_steps)]


class SmolVLAModel(nn.Module):
    """SmolVLM2 prefix (state token included) + interleaved action expert, with LeRobot's key names."""

    #: The state is a prefix token: engines pass it to `embed_prefix`, not to `denoise_step`.
    state_in_prefix = True

    def __init__(self, cfg: SmolVLAConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.expert.width
        self.vlm_with_expert = _VLMWithExpert(cfg)
        self.state_proj = nn.Linear(cfg.action_dim, cfg.text.width)
        self.action_in_proj = nn.Linear(cfg.action_dim, width)
        self.action_out_proj = nn.Linear(width, cfg.action_dim)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)

    # -- structure ---------------------------------------------------------------------------
    @property
    def vlm(self) -> _SmolVLMModel:
        return self.vlm_with_expert.vlm.model

    @property
    def text_model(self) -> LlamaStack:
        return self.vlm.text_model

    @property
    def expert(self) -> LlamaStack:
        return self.vlm_with_expert.lm_expert

    @property
    def compute_dtype(self) -> torch.dtype:
        # The token embedding follows the matmul weights' precision and is never packed (cpu packing
        # replaces the projections: engines/suffix_smolvla.py).
        return self.text_model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_model.embed_tokens.weight.device

    def to_mixed_precision(self, dtype: torch.dtype = torch.bfloat16):
        """Big matmul weights in `dtype`; norms, embeddings and action heads stay fp32 (pi0's split)."""
        return mixed_precision(self, dtype)

    flow_times = staticmethod(flow_times)

    # -- prefix -----------------------------------------------------------------------------
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W, 3) -> (B, N * tokens_per_image, text width), scaled by sqrt(text width).

        uint8 images are mapped to [-1, 1] here; float images are taken as
        already in [-1, 1] (LeRobot resizes in float and never rounds).
        """
        batch, cams = images.shape[:2]
        pixels = images.flatten(0, 1).permute(0, 3, 1, 2)
        pixels = pixels.float() if pixels.is_floating_point() else pixels.float() / 255.0 * 2.0 - 1.0
        tokens = self.vlm.connector(self.vlm.vision_model(pixels, self.compute_dtype))
        # LeRobot scales image tokens like language tokens, although Llama itself scales neither.
        tokens = tokens * torch.tensor(self.cfg.text.width**0.5, dtype=tokens.dtype)
        return tokens.reshape(batch, cams * tokens.shape[1], tokens.shape[2]).to(self.compute_dtype)

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        weight = self.text_model.embed_tokens.weight
        return (F.embedding(tokens.long(), weight) * math.sqrt(weight.shape[1])).to(self.compute_dtype)

    def prefix_embeddings(self, images, image_masks, tokens, token_masks, state):
        """Prefix embeddings (B, P, W), pad mask (B, P) and ar flags (B, P): images, prompt, state."""
        image_emb = self.embed_images(images)
        image_pad = image_masks.bool().repeat_interleave(self.cfg.tokens_per_image, dim=1)
        state_emb = linear(self.state_proj, state.float())[:, None, :].to(self.compute_dtype)
        embs = torch.cat([image_emb, self.embed_text(tokens), state_emb], dim=1)
        state_pad = torch.ones_like(token_masks[:, :1], dtype=torch.bool)
        pad = torch.cat([image_pad, token_masks.bool(), state_pad], dim=1)
        ar = torch.zeros_like(pad)
        ar[:, -1] = True  # images and prompt attend bidirectionally; the state token sees them all
        return embs, pad, ar

    def embed_prefix(self, images, image_masks, tokens, token_masks, state) -> KVCache:
        """images (B, N, H, W, 3) uint8 or [-1, 1] float; image_masks (B, N); tokens, token_masks (B, L);
        state (B, action_dim) normalized and zero-padded. Masked slots and tokens take no position.
        """
        hidden, pad, ar = self.prefix_embeddings(images, image_masks, tokens, token_masks, state)
        bias = attention_bias(masks.attention_mask(pad, ar))
        cos, sin = rope_tables(masks.prefix_positions(pad), self.cfg.text.head_dim, self.cfg.rope_theta)
        keys, values = [], []
        layers = self.text_model.layers
        for index, layer in enumerate(layers):
            normed = layer.input_layernorm(hidden)
            if index == len(layers) - 1:
                # The cache is all the expert reads: the last layer's output is never used.
                k, v = layer.self_attn.key_value(normed)
                keys.append(apply_rope(k, cos, sin))
                values.append(v)
                break
            q, k, v = query_key_value(layer.self_attn, normed)
            keys.append(apply_rope(k, cos, sin))
            values.append(v)
            q = apply_rope(q, cos, sin)
            hidden = layer.finish(hidden, attention(q, keys[-1], v, bias))
        return KVCache(keys=torch.stack(keys), values=torch.stack(values), pad_mask=pad)

    # -- suffix -----------------------------------------------------------------------------
    def suffix_embeddings(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Action tokens (B, H, E): [action_in_proj(x_t), time embedding] through the action-time MLP."""
        cfg = self.cfg
        action_emb = linear(self.action_in_proj, x_t)
        time_emb = sincos_time_embedding(
            t, cfg.expert.width, cfg.min_period, cfg.max_period, table_dtype=torch.float64
        )
        time_emb = time_emb.to(action_emb.dtype)  # (B, E), or (B, H, E) for a per-token t (B, H)
        time_emb = (time_emb[:, None, :] if time_emb.dim() == 2 else time_emb).expand_as(action_emb)
        hidden = F.silu(linear(self.action_time_mlp_in, torch.cat([action_emb, time_emb], dim=2)))
        return linear(self.action_time_mlp_out, hidden)

    def _cross_kv(self, layer, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's cached (B, KV, P, hd) K (roped) and V through the expert layer's k_proj / v_proj."""
        batch, kv_heads, length, head_dim = keys.shape

        def project(x: torch.Tensor, proj: nn.Module) -> torch.Tensor:
            flat = x.transpose(1, 2).reshape(batch, length, kv_heads * head_dim)
            return linear(proj, flat).view(batch, length, kv_heads, head_dim).transpose(1, 2)

        return project(keys, layer.self_attn.k_proj), project(values, layer.self_attn.v_proj)

    def denoise_step(self, cache: KVCache, x_t: torch.Tensor, t: torch.Tensor, state=None) -> torch.Tensor:
        """v_t (B, H, action_dim) for noisy actions x_t at flow time t (B,); the state is in the cache."""
        cfg = self.cfg
        batch, horizon = x_t.shape[:2]
        device = x_t.device
        hidden = self.suffix_embeddings(x_t.float(), t).to(self.compute_dtype)
        prefix_pad = cache.pad_mask.bool()
        steps = torch.arange(horizon, device=device)[None].expand(batch, horizon)
        # Self-attention layers continue after the valid prefix; cross-attention queries start at 0.
        self_cos, self_sin = rope_tables(
            prefix_pad.sum(dim=1, keepdim=True) + steps, cfg.text.head_dim, cfg.rope_theta
        )
        cross_cos, cross_sin = rope_tables(steps, cfg.text.head_dim, cfg.rope_theta)
        to_prefix = prefix_pad[:, None, :].expand(batch, horizon, prefix_pad.shape[1])
        causal = torch.ones(horizon, horizon, dtype=torch.bool, device=device).tril()
        self_bias = attention_bias(torch.cat([to_prefix, causal.expand(batch, -1, -1)], dim=2))
        cross_bias = attention_bias(to_prefix)
        for index, layer in enumerate(self.expert.layers):
            normed = layer.input_layernorm(hidden)
            if cfg.is_self_attention(index):
                q = apply_rope(layer.self_attn.query(normed), self_cos, self_sin)
                k, v = layer.self_attn.key_value(normed)
                k = torch.cat([cache.keys[index].to(k.dtype), apply_rope(k, self_cos, self_sin)], dim=2)
                v = torch.cat([cache.values[index].to(v.dtype), v], dim=2)
                bias = self_bias
            else:
                q = apply_rope(layer.self_attn.query(normed), cross_cos, cross_sin)
                k, v = self._cross_kv(layer, cache.keys[index], cache.values[index])
                bias = cross_bias
            hidden = layer.finish(hidden, attention(q, k, v, bias))
        return linear(self.action_out_proj, self.expert.norm(hidden).float()).float()

    def joint_velocity(self, images, image_masks, tokens, token_masks, x_t, t, state) -> torch.Tensor:
        """v_t without a cache: the prefix layers and the expert layers run side by side over the whole
        sequence, layer by layer (the training-time graph); a check of the cached path.
        """
        cfg = self.cfg
        prefix, pad, ar = self.prefix_embeddings(images, image_masks, tokens, token_masks, state)
        suffix = self.suffix_embeddings(x_t.float(), t).to(self.compute_dtype)
        batch, horizon = suffix.shape[:2]
        length = prefix.shape[1]
        full_pad = torch.cat([pad, torch.ones(batch, horizon, dtype=torch.bool, device=pad.device)], dim=1)
        full_ar = torch.cat([ar, torch.ones(batch, horizon, dtype=torch.bool, device=pad.device)], dim=1)
        full_mask = masks.attention_mask(full_pad, full_ar)
        positions = masks.prefix_positions(full_pad)
        cos, sin = rope_tables(positions, cfg.text.head_dim, cfg.rope_theta)
        steps = torch.arange(horizon, device=pad.device)[None].expand(batch, horizon)
        cross_cos, cross_sin = rope_tables(steps, cfg.text.head_dim, cfg.rope_theta)
        p_cos, p_sin = cos[:, :, :length], sin[:, :, :length]
        s_cos, s_sin = cos[:, :, length:], sin[:, :, length:]
        prefix_bias = attention_bias(full_mask[:, :length, :length])
        for index, (vlm_layer, layer) in enumerate(zip(self.text_model.layers, self.expert.layers)):
            p_norm = vlm_layer.input_layernorm(prefix)
            s_norm = layer.input_layernorm(suffix)
            pk, pv = vlm_layer.self_attn.key_value(p_norm)
            pk = apply_rope(pk, p_cos, p_sin)
            pq = apply_rope(vlm_layer.self_attn.query(p_norm), p_cos, p_sin)
            if cfg.is_self_attention(index):
                # One attention over the joint sequence: each stack projects its own tokens.
                sk, sv = layer.self_attn.key_value(s_norm)
                q = torch.cat([pq, apply_rope(layer.self_attn.query(s_norm), s_cos, s_sin)], dim=2)
                k = torch.cat([pk, apply_rope(sk, s_cos, s_sin)], dim=2)
                v = torch.cat([pv, sv], dim=2)
                out = attention(q, k, v, attention_bias(full_mask))
                p_out, s_out = out[:, :length], out[:, length:]
            else:
                p_out = attention(pq, pk, pv, prefix_bias)
                sq = apply_rope(layer.self_attn.query(s_norm), cross_cos, cross_sin)
                ck, cv = self._cross_kv(layer, pk, pv)
                s_out = attention(sq, ck, cv, attention_bias(full_mask[:, length:, :length]))
            prefix = vlm_layer.finish(prefix, p_out)
            suffix = layer.finish(suffix, s_out)
        return linear(self.action_out_proj, self.expert.norm(suffix).float()).float()

    def noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        shape = (batch, self.cfg.action_horizon, self.cfg.action_dim)
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

    @torch.no_grad()
    def sample_actions(
        self, images, image_masks, tokens, token_masks, state, noise=None, num_steps: int = 10, generator=None
    ) -> torch.Tensor:
        """Normalized actions (B, H, action_dim) by Euler integration of the flow from t=1 to t=0."""
        cache = self.embed_prefix(images, image_masks, tokens, token_masks, state)
        batch = images.shape[0]
        x = self.noise(batch, generator, images.device) if noise is None else noise.float()
        dt = -1.0 / num_steps
        for t in flow_times(num_steps):
            t_batch = torch.full((batch,), t, dtype=torch.float32, device=x.device)
            x = x + dt * self.denoise_step(cache, x, t_batch)
        return x
