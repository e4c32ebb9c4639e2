"""The pi0 / pi0.5 policy network in PyTorch: the reference implementation.

Three steps, matching the prefix-encoder / suffix-denoiser split of the runtimes:
  embed_prefix(images, masks, tokens)  -> KVCache   (SigLIP + Gemma over the prefix)
  denoise_step(cache, x_t, t, state)   -> v_t       (action expert over the suffix)
  sample_actions(...)                  -> actions   (10 Euler steps from noise)
Module names mirror the openpi / LeRobot checkpoint keys (docs/model.md, "Checkpoint key layout").
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.model import masks
from vla_ros.model.config import PolicyConfig
from vla_ros.model.gemma import GemmaStack, joint_forward, KVCache
from vla_ros.model.layers import linear, sincos_time_embedding
from vla_ros.model.paligemma import FP32_PARAMETER_MARKERS, PaliGemma, PaliGemmaPrefix

__all__ = ["euler_times", "FP32_PARAMETER_MARKERS", "Pi0Model"]


class _Expert(nn.Module):

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.model = GemmaStack(cfg.expert, cond_dim=cfg.expert.width if cfg.pi05 else None)


class _PaliGemmaWithExpert(nn.Module):

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.paligemma = PaliGemma(cfg)
        self.gemma_expert = _Expert(cfg)


def euler_times(num_steps: int) -> list[float]:
    """t for each Euler step: 1, 1 - 1/n, ..., 1/n (integration from noise at t=1 to data at t=0)."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    return [1.0 - k / num_steps for k in range(num_steps)]


class Pi0Model(PaliGemmaPrefix):

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.expert.width
        self.paligemma_with_expert = _PaliGemmaWithExpert(cfg)
        self.action_in_proj = nn.Linear(cfg.action_dim, width)
        self.action_out_proj = nn.Linear(width, cfg.action_dim)
        if cfg.pi05:
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
        else:
            self.state_proj = nn.Linear(cfg.action_dim, width)
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)

    # -- structure ---------------------------------------------------------------------------
    @property
    def expert(self) -> GemmaStack:
        return self.paligemma_with_expert.gemma_expert.model

    @property
    def stacks(self) -> list[GemmaStack]:
        return [self.language_model, self.expert]

    # -- prefix -----------------------------------------------------------------------------
    def embed_prefix(self, images, image_masks, tokens, token_masks) -> KVCache:
        """images uint8 (B, N, 224, 224, 3); image_masks (B, N); tokens (B, L); token_masks (B, L)."""
        embs, pad = self.prefix_embeddings(images, image_masks, tokens, token_masks)
        mask = masks.attention_mask(pad, torch.zeros_like(pad))
        _, kv = joint_forward(
            self.stacks,
            [embs, None],
            [None, None],
            mask,
            masks.prefix_positions(pad),
            collect_kv=True,
            kv_only=True,
        )
        return KVCache(keys=kv[0], values=kv[1], pad_mask=pad)

    # -- suffix -----------------------------------------------------------------------------
    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        return sincos_time_embedding(t, self.cfg.expert.width)

    def time_condition(self, t: torch.Tensor) -> torch.Tensor:
        """pi0.5's AdaRMS condition (B, W): depends on t only."""
        hidden = F.silu(linear(self.time_mlp_in, self.time_embedding(t)))
        return F.silu(linear(self.time_mlp_out, hidden))

    def suffix_embeddings(self, state, x_t, t) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Suffix tokens (B, S, W) and the AdaRMS condition (pi0.5) or None (pi0)."""
        action_emb = linear(self.action_in_proj, x_t)
        if self.cfg.pi05:
            return action_emb, self.time_condition(t)
        time_emb = self.time_embedding(t)  # (B, W), or (B, H, W) for a per-token t (B, H)
        time_emb = (time_emb[:, None, :] if time_emb.dim() == 2 else time_emb).expand_as(action_emb)
        hidden = F.silu(linear(self.action_time_mlp_in, torch.cat([action_emb, time_emb], dim=2)))
        action_time = linear(self.action_time_mlp_out, hidden)
        state_emb = linear(self.state_proj, state)[:, None, :]
        return torch.cat([state_emb, action_time], dim=1), None

    def _suffix_layout(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        ar = masks.suffix_ar_mask(batch, self.cfg.action_horizon, self.cfg.pi05, device)
        return torch.ones_like(ar), ar

    def denoise_step(self, cache: KVCache, x_t: torch.Tensor, t: torch.Tensor, state: torch.Tensor | None):
        """v_t (B, H, action_dim) for noisy actions x_t at flow time t ((B,) or (B, H)), given the cache."""
        batch = x_t.shape[0]
        embs, cond = self.suffix_embeddings(state, x_t, t)
        pad, ar = self._suffix_layout(batch, x_t.device)
        mask = masks.suffix_attention_mask(cache.pad_mask, pad, ar)
        positions = masks.suffix_positions(cache.pad_mask, pad)
        outputs, _ = joint_forward(
            self.stacks, [None, embs.to(self.compute_dtype)], [None, cond], mask, positions, past=cache
        )
        return linear(self.action_out_proj, outputs[1][:, -self.cfg.action_horizon :]).float()

    def joint_velocity(self, images, image_masks, tokens, token_masks, x_t, t, state) -> torch.Tensor:
        """v_t from one joint pass over prefix + suffix without a cache (the training-time graph)."""
        prefix, prefix_pad = self.prefix_embeddings(images, image_masks, tokens, token_masks)
        suffix, cond = self.suffix_embeddings(state, x_t, t)
        suffix_pad, suffix_ar = self._suffix_layout(x_t.shape[0], x_t.device)
        pad = torch.cat([prefix_pad, suffix_pad], dim=1)
        ar = torch.cat([torch.zeros_like(prefix_pad), suffix_ar], dim=1)
        positions = torch.cumsum(pad.to(torch.int64), dim=1) - 1
        outputs, _ = joint_forward(
            self.stacks,
            [prefix, suffix.to(self.compute_dtype)],
            [None, cond],
            masks.attention_mask(pad, ar),
            positions,
        )
        return linear(self.action_out_proj, outputs[1][:, -self.cfg.action_horizon :]).float()

    def noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        shape = (batch, self.cfg.action_horizon, self.cfg.action_dim)
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

    @torch.no_grad()
    def sample_actions(
        self, images, image_masks, tokens, token_masks, state, noise=None, num_steps: int = 10, generator=None
    ) -> torch.Tensor:
        """Normalized actions (B, H, action_dim) by Euler integration of the flow from t=1 to t=0."""
        cache = self.embed_prefix(images, image_masks, tokens, token_masks)
        batch = images.shape[0]
        x = self.noise(batch, generator, images.device) if noise is None else noise.float()
        dt = -1.0 / num_steps
        for t in euler_times(num_steps):
            t_batch = torch.full((batch,), t, dtype=torch.float32, device=x.device)
            x = x + dt * self.denoise_step(cache, x, t_batch, state)
        return x
