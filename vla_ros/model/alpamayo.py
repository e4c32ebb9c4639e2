"""The "reason, then act" design of the notes (Alpamayo-R1): a Qwen3 backbone, then an expert over its cache.

Data flow (docs/model.md, "Expert designs from the notes"):

  prefill(tokens, masks, image_embeds)  -> KVCache + last logits  (backbone, causal over the prompt)
  reason(cache)                         -> reasoning ids, KVCache (greedy decode to the stop token or
                                                                   the token budget; engines/decode.py's
                                                                   ConcatCacheDecoder; the last token
                                                                   is fed too, so it ends the cache)
  velocity(cache, x_t, t)               -> v_t                    (the expert over the frozen cache)
  sample_actions(...)                   -> K trajectories         (Euler from noise, K samples as one
                                                                   batch over the one cache)
  joint_velocity(...)                   -> v_t                    (prompt + reasoning + actions in one
                                                                   pass without a cache: the reference)

The expert is a Qwen3 stack with the backbone's depth and head space (the notes
copy the backbone's text configuration) and no token embedding. Its layer i
attends over the backbone's cached K/V of layer i plus the action tokens' own
K/V, the action tokens at RoPE positions continuing after the cache's real
tokens, and, unlike the causal backbone, the action tokens attend to each other
in both directions (`non_causal_actions`; the notes' `is_causal=False`). Time
conditioning: added to each action embedding, `action_in_proj(x_t) +
time_mlp_out(silu(time_mlp_in(sincos(t))))`, the same for every token (the
notes' `action_in_proj(x, t)`; AdaRMS was the alternative, not taken).

The vision tower is outside this module: the caller passes image embeddings
already in the backbone's width, placed before the prompt tokens. Qwen3-VL's
multimodal RoPE (three position streams) is not modelled: positions are 1-D.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.model import masks
from vla_ros.model.config import AlpamayoExpertConfig
from vla_ros.model.fusion_expert import BackboneWithExpert, joint_forward
from vla_ros.model.gemma import KVCache
from vla_ros.model.layers import linear, sincos_time_embedding
from vla_ros.model.pi0 import euler_times
from vla_ros.model.pi0_fast import last_real_index
from vla_ros.model.qwen3 import Qwen3Stack

__all__ = ["AlpamayoExpertModel", "expand_cache", "reasoning_tokens"]


def expand_cache(cache: KVCache, batch: int) -> KVCache:
    """A batch-1 cache as `batch` rows sharing its memory (the K samples of one prompt)."""
    rows = cache.pad_mask.shape[0]
    if rows == batch:
        return cache
    if rows != 1:
        raise ValueError(f"cannot spread a cache of {rows} rows over a batch of {batch}")
    keys, values = cache.keys, cache.values
    return KVCache(
        keys=keys.expand(keys.shape[0], batch, *keys.shape[2:]),
        values=values.expand(values.shape[0], batch, *values.shape[2:]),
        pad_mask=cache.pad_mask.expand(batch, -1),
        last_logits=None if cache.last_logits is None else cache.last_logits.expand(batch, -1),
    )


def reasoning_tokens(result) -> list[int]:
    """The tokens a reasoning decode put in the cache: its ids, then the stop token if one was met."""
    return [int(i) for i in result.ids] + ([] if result.stop is None else [int(result.stop)])


class _CacheRecorder:
    """What ConcatCacheDecoder asks of a model (`device`, `decode_step`), keeping the latest cache."""

    def __init__(self, model: "AlpamayoExpertModel"):
        self.model = model
        self.device = model.device
        self.cache: KVCache | None = None

    def decode_step(self, cache: KVCache, token: torch.Tensor, position: torch.Tensor):
        logits, self.cache = self.model.decode_step(cache, token, position)
        return logits, self.cache


class AlpamayoExpertModel(BackboneWithExpert):
    """Qwen3 `backbone` (+ `embed_tokens`) with its `lm_head`, the Qwen3 `expert` and the action heads."""

    def __init__(self, cfg: AlpamayoExpertConfig):
        super().__init__()
        self.cfg = cfg
        width, dim = cfg.expert.width, cfg.action_dim
        self.backbone = Qwen3Stack(cfg.backbone, vocab_size=cfg.vocab_size)
        self.lm_head = nn.Linear(cfg.backbone.width, cfg.vocab_size, bias=False)
        self.expert = Qwen3Stack(cfg.expert)
        self.action_in_proj = nn.Linear(dim, width)
        self.time_mlp_in = nn.Linear(width, width)
        self.time_mlp_out = nn.Linear(width, width)
        self.action_out_proj = nn.Linear(width, dim)

    # -- structure ---------------------------------------------------------------------------
    @property
    def layer_maps(self) -> list[tuple[int, ...]]:
        depth = self.cfg.backbone.depth
        return [tuple(range(depth)), tuple(range(depth))]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (..., W) -> fp32 logits (..., vocab)."""
        return linear(self.lm_head, hidden).float()

    # -- prompt and reasoning -------------------------------------------------------------------
    def prefill(self, tokens, token_masks, image_embeds=None, image_masks=None) -> KVCache:
        """The prompt's cache (L, B, KV, P, hd), causal as a decoder LM, with the last real token's logits."""
        embs, pad = self.prefix_embeddings(tokens, token_masks, image_embeds, image_masks)
        outputs, kv = joint_forward(
            self.stacks, [embs, None], self.layer_maps, masks.attention_mask(pad, torch.ones_like(pad)),
            masks.prefix_positions(pad), collect_kv=True,
        )
        last = outputs[0][torch.arange(pad.shape[0], device=pad.device), last_real_index(pad)]
        return KVCache(keys=kv[0], values=kv[1], pad_mask=pad, last_logits=self.logits(last))

    def decode_step(self, cache: KVCache, token: torch.Tensor, position: torch.Tensor):
        """One token (B,) at RoPE position (B,): its logits (B, vocab) and the cache grown by it."""
        key_pad = torch.cat([cache.pad_mask, torch.ones_like(cache.pad_mask[:, :1])], dim=1)
        outputs, kv = joint_forward(
            self.stacks, [self.embed_text(token[:, None]), None], self.layer_maps, key_pad[:, None, :],
            position[:, None], past=cache, collect_kv=True,
        )
        grown = KVCache(
            keys=torch.cat([cache.keys, kv[0].to(cache.keys.dtype)], dim=3),
            values=torch.cat([cache.values, kv[1].to(cache.values.dtype)], dim=3),
            pad_mask=key_pad,
        )
        return self.logits(outputs[0][:, -1]), grown

    @torch.no_grad()
    def reason(self, cache: KVCache, stop_ids=None, max_new_tokens: int | None = None,
               temperature: float = 0.0, seed: int | None = None):
        """Decode the reasoning after a batch-1 `prefill` cache: (DecodeResult, cache of prompt + reasoning).

        Greedy unless `temperature` > 0; stops at any of `stop_ids` (default
        the config's stop token) or after `max_new_tokens` (default the
        config's budget). Every token produced, the stop token included, is in
        the returned cache.
        """
        from vla_ros.engines.decode import ConcatCacheDecoder  # the project's decode stage

        if cache.pad_mask.shape[0] != 1 or cache.last_logits is None:
            raise ValueError("reason() takes the batch-1 cache of prefill(), with its last logits")
        stop_ids = (self.cfg.stop_token_id,) if stop_ids is None else tuple(stop_ids)
        recorder = _CacheRecorder(self)
        decoder = ConcatCacheDecoder(recorder, max_new_tokens or self.cfg.max_reasoning_tokens,
                                     temperature=temperature, seed=seed)
        result = decoder.generate(cache, cache.last_logits, stop_ids)
        produced = reasoning_tokens(result)
        grown = cache if recorder.cache is None else recorder.cache  # all but the last token fed
        position = cache.pad_mask.sum(dim=1) + len(produced) - 1
        _, grown = self.decode_step(grown, torch.tensor(produced[-1:], device=position.device), position)
        return result, grown

    # -- actions ----------------------------------------------------------------------------
    def action_embeddings(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Action tokens (B, H, W): the projected actions plus an MLP of t's sine-cosine embedding."""
        time = F.silu(linear(self.time_mlp_in, sincos_time_embedding(t, self.cfg.expert.width)))
        time = linear(self.time_mlp_out, time)
        time = time[:, None, :] if time.dim() == 2 else time
        return (linear(self.action_in_proj, x_t) + time).to(self.compute_dtype)

    def action_layout(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """pad and ar flags of the action tokens: one bidirectional block (ar [1, 0, ...]) or causal."""
        ar = torch.full((batch, self.cfg.action_horizon), not self.cfg.non_causal_actions, device=device)
        ar[:, 0] = True
        return torch.ones_like(ar), ar

    def action_positions(self, cache: KVCache, batch: int) -> torch.Tensor:
        """RoPE positions (B, H) of the action tokens: after the cache's real tokens."""
        pad, _ = self.action_layout(batch, cache.pad_mask.device)
        return masks.suffix_positions(cache.pad_mask.expand(batch, -1), pad)

    def velocity(self, cache: KVCache, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v_t (B, H, action_dim) for x_t at flow time t (B,); a batch-1 cache serves B samples."""
        batch = x_t.shape[0]
        cache = expand_cache(cache, batch)
        pad, ar = self.action_layout(batch, x_t.device)
        outputs, _ = joint_forward(
            self.stacks, [None, self.action_embeddings(x_t, t)], self.layer_maps,
            masks.suffix_attention_mask(cache.pad_mask, pad, ar), masks.suffix_positions(cache.pad_mask, pad),
            past=cache,
        )
        return linear(self.action_out_proj, outputs[1]).float()

    def joint_velocity(self, tokens, token_masks, reasoning, x_t, t, image_embeds=None, image_masks=None):
        """v_t from one pass over prompt, reasoning tokens (R,) and actions, without a cache.

        The backbone runs causally over prompt + reasoning and never sees the
        actions; the expert's action tokens see every real backbone token.
        """
        batch = x_t.shape[0]
        prompt, prompt_pad = self.prefix_embeddings(tokens, token_masks, image_embeds, image_masks)
        reasoning = torch.as_tensor(reasoning, dtype=torch.int64, device=prompt.device).view(1, -1)
        embs = torch.cat([prompt, self.embed_text(reasoning).expand(prompt.shape[0], -1, -1)], dim=1)
        reasoning_pad = torch.ones_like(prompt_pad[:, :1]).expand(-1, reasoning.shape[1])
        backbone_pad = torch.cat([prompt_pad, reasoning_pad], dim=1)
        embs, backbone_pad = embs.expand(batch, -1, -1), backbone_pad.expand(batch, -1)
        action_pad, action_ar = self.action_layout(batch, x_t.device)
        pad = torch.cat([backbone_pad, action_pad], dim=1)
        ar = torch.cat([torch.ones_like(backbone_pad), action_ar], dim=1)
        outputs, _ = joint_forward(
            self.stacks, [embs, self.action_embeddings(x_t, t)], self.layer_maps,
            masks.attention_mask(pad, ar), masks.prefix_positions(pad),
        )
        return linear(self.action_out_proj, outputs[1]).float()

    @torch.no_grad()
    def sample_actions(self, tokens, token_masks, image_embeds=None, image_masks=None, noise=None,
                       num_samples: int | None = None, num_steps: int = 10, stop_ids=None,
                       max_new_tokens: int | None = None, generator=None):
        """K trajectories (K, H, action_dim) for one prompt (batch 1) and the reasoning's DecodeResult.

        K is noise's batch, else `num_samples`, else the config's; the K
        samples are one batch over the one cache of prompt + reasoning.
        """
        if tokens.shape[0] != 1:
            raise ValueError(f"one prompt at a time (its samples are the batch), got {tokens.shape[0]}")
        cache = self.prefill(tokens, token_masks, image_embeds, image_masks)
        result, cache = self.reason(cache, stop_ids, max_new_tokens)
        count = noise.shape[0] if noise is not None else (num_samples or self.cfg.num_samples)
        shape = (count, self.cfg.action_horizon, self.cfg.action_dim)
        x = torch.randn(shape, generator=generator, device=tokens.device) if noise is None else noise.float()
        cache = expand_cache(cache, count)
        dt = -1.0 / num_steps
        for t in euler_times(num_steps):
            t_batch = torch.full((count,), t, dtype=torch.float32, device=x.device)
            x = x + dt * self.velocity(cache, x, t_batch)
        return x, result
