"""The pi0-FAST policy network in PyTorch: PaliGemma that writes its action chunk as tokens.

No action expert: SigLIP + Gemma run over images and the prompt (task and
discretized state), then the same language model decodes FAST action tokens
one at a time, reading its logits from the tied token embedding. Three steps,
matching the prefix-encoder / decode split of the runtimes:

  prefix(images, masks, tokens)    -> KVCache + logits of the last prompt token
  decode_step(cache, token, pos)   -> logits, cache grown by one token
  generate_no_cache(...)           -> the whole sequence recomputed every token

`decode_step` and `generate_no_cache` are the references that the static-cache
decode runtime (engines/decode.py) is checked against; the runtime never
concatenates. Token ids map to FAST ids in model/fast_tokenizer.py; the layout
is in docs/model.md, "pi0-FAST".
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.model import masks
from vla_ros.model.config import PolicyConfig
from vla_ros.model.gemma import GemmaStack, joint_forward, KVCache
from vla_ros.model.paligemma import PaliGemma, PaliGemmaPrefix

EOS_ID = 1


class _PaliGemmaOnly(nn.Module):
    """`paligemma_with_expert.paligemma`: the key layout of the pi0 family, with no expert beside it."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.paligemma = PaliGemma(cfg, lm_head=True)


class Pi0FastModel(PaliGemmaPrefix):

    def __init__(self, cfg: PolicyConfig):
        if not cfg.is_fast:
            raise ValueError(f"Pi0FastModel needs a pi0-FAST config, got {cfg.variant}")
        super().__init__()
        self.cfg = cfg
        self.paligemma_with_expert = _PaliGemmaOnly(cfg)

    @property
    def stacks(self) -> list[GemmaStack]:
        return [self.language_model]

    @property
    def lm_head(self) -> nn.Linear:
        return self.paligemma_with_expert.paligemma.lm_head

    @property
    def head_is_tied(self) -> bool:
        return self.lm_head.weight is self.language_model.embed_tokens.weight

    def tie_head(self) -> None:
        """Make the head the token embedding again (one tensor under two names)."""
        self.lm_head.weight = self.language_model.embed_tokens.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (..., W) -> fp32 logits (..., vocab) through the LM head."""
        weight = self.lm_head.weight
        return F.linear(hidden.to(weight.dtype), weight).float()

    # -- prefix -----------------------------------------------------------------------------
    def prefix(self, images, image_masks, tokens, token_masks, token_ar=None) -> tuple[KVCache, torch.Tensor]:
        """The prompt's K/V cache and the logits (B, vocab) of its last real token.

        The prefix attends bidirectionally (a prefix LM) unless `token_ar`
        (B, L) marks tokens that start a causal block, as in masks.attention_mask.
        """
        embs, pad = self.prefix_embeddings(images, image_masks, tokens, token_masks)
        ar = torch.zeros_like(pad)
        if token_ar is not None:
            ar[:, -token_ar.shape[1]:] = token_ar.bool()
        outputs, kv = joint_forward(
            self.stacks, [embs], [None], masks.attention_mask(pad, ar), masks.prefix_positions(pad),
            collect_kv=True,
        )
        last = last_real_index(pad)
        hidden = outputs[0][torch.arange(pad.shape[0], device=pad.device), last]
        return KVCache(keys=kv[0], values=kv[1], pad_mask=pad), self.logits(hidden)

    def embed_prefix(self, images, image_masks, tokens, token_masks) -> KVCache:
        """The prefix runtimes' entry point: the cache with `last_logits` set."""
        cache, logits = self.prefix(images, image_masks, tokens, token_masks)
        cache.last_logits = logits
        return cache

    # -- decode -----------------------------------------------------------------------------
    def decode_step(
        self, cache: KVCache, token: torch.Tensor, position: torch.Tensor
    ) -> tuple[torch.Tensor, KVCache]:
        """One new token (B,) at RoPE position (B,): its logits (B, vocab) and the cache grown by it.

        The concatenating reference: every call copies the whole cache.
        """
        emb = self.embed_text(token[:, None])
        key_pad = torch.cat([cache.pad_mask, torch.ones_like(cache.pad_mask[:, :1])], dim=1)
        outputs, kv = joint_forward(
            self.stacks, [emb], [None], key_pad[:, None, :], position[:, None], past=cache, collect_kv=True
        )
        grown = KVCache(
            keys=torch.cat([cache.keys, kv[0].to(cache.keys.dtype)], dim=3),
            values=torch.cat([cache.values, kv[1].to(cache.values.dtype)], dim=3),
            pad_mask=key_pad,
        )
        return self.logits(outputs[0][:, -1]), grown

    @torch.no_grad()
    def generate(self, images, image_masks, tokens, token_masks, max_new_tokens: int,
                 stop_ids=(EOS_ID,)) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Greedy ids (B, n) with the concatenating cache, and each step's logits (batch 1 stops early)."""
        cache, logits = self.prefix(images, image_masks, tokens, token_masks)
        position = cache.pad_mask.sum(dim=1)
        ids, history = [], []
        for step in range(max_new_tokens):
            history.append(logits)
            token = logits.argmax(dim=-1)
            ids.append(token)
            if token.shape[0] == 1 and int(token) in stop_ids or step == max_new_tokens - 1:
                break
            logits, cache = self.decode_step(cache, token, position + step)
        return torch.stack(ids, dim=1), history

    @torch.no_grad()
    def generate_no_cache(self, images, image_masks, tokens, token_masks, max_new_tokens: int,
                          stop_ids=(EOS_ID,)) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Greedy ids and logits by recomputing prefix + generated tokens from scratch every token.

        The slowest, most literal form of the decode: the prefix attends
        bidirectionally, each generated token causally to everything before it.
        """
        prefix, prefix_pad = self.prefix_embeddings(images, image_masks, tokens, token_masks)
        batch = prefix.shape[0]
        generated = torch.zeros(batch, 0, dtype=torch.int64, device=prefix.device)
        ids, history = [], []
        for step in range(max_new_tokens):
            ones = torch.ones_like(generated, dtype=torch.bool)
            pad = torch.cat([prefix_pad, ones], dim=1)
            ar = torch.cat([torch.zeros_like(prefix_pad), ones], dim=1)
            embs = torch.cat([prefix, self.embed_text(generated)], dim=1)
            outputs, _ = joint_forward(
                self.stacks, [embs], [None], masks.attention_mask(pad, ar), masks.prefix_positions(pad)
            )
            hidden = outputs[0][torch.arange(batch, device=pad.device), last_real_index(pad)]
            logits = self.logits(hidden)
            history.append(logits)
            token = logits.argmax(dim=-1)
            ids.append(token)
            generated = torch.cat([generated, token[:, None]], dim=1)
            if batch == 1 and int(token) in stop_ids:
                break
        return torch.stack(ids, dim=1), history


def last_real_index(pad: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the last True of each row of a pad mask (B, T)."""
    order = torch.arange(pad.shape[1], device=pad.device).expand_as(pad)
    return torch.where(pad.bool(), order, -1).amax(dim=1)
