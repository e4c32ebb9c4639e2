"""The pi0-FAST policy network in PyTorch: PaliGemma that writes its action chunk as tokens.

No action expert: SigLIP + Gemma run over images and the prompt (task and
discretized state), then the same language model decodes FAST action tokens
one at a time, reading its logits from the tied token embedding. Three steps,
matching the prefix-encoder / decode split of the runtimes:

  prefix(images, masks, tokens)    -> KVCache + logits of the last prompt token
  decode_step(cache, token, pos)   -> logits, cache grown by one token (engines/decode.py
                                      ConcatCacheDecoder loops it)
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
from vla_ros.model.layers import apply_rope, attention, attention_bias, linear, rope_cos_sin
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
    def prefix_parts(self, images, image_masks, tokens, token_masks):
        """Per-layer keys and values (lists of (B, KV, P, hd)), the pad mask and the last token's logits.

        The prefix attends bidirectionally (a prefix LM). Only the last real
        prompt token's output is ever read, so the last layer computes its K/V
        over every token but its query, attention output, MLP, the final norm
        and the head for that one token, gathered by index (no data-dependent
        shapes: the ONNX graph of engines/prefix_graph.py traces this). The
        head multiplies the (vocab, W) weight as stored, never transposed.
        """
        lm = self.language_model
        embs, pad = self.prefix_embeddings(images, image_masks, tokens, token_masks)
        mask = attention_bias(masks.attention_mask(pad, torch.zeros_like(pad)))
        positions = masks.prefix_positions(pad)
        cos, sin = rope_cos_sin(positions, lm.cfg.head_dim)
        last = last_real_index(pad)
        hidden = embs
        keys, values = [], []
        for index, layer in enumerate(lm.layers):
            attn = layer.self_attn
            normed, _ = layer.input_layernorm(hidden)
            if index < len(lm.layers) - 1:
                q, k, v = attn.qkv(normed)
                k = apply_rope(k, cos, sin)
                out = attention(apply_rope(q, cos, sin), k, v, mask)
            else:  # K/V of every token; everything after them for the last real token only
                k, v = attn.kv(normed)
                k = apply_rope(k, cos, sin)
                q = attn.qkv(_row(normed, last))[0]  # qkv: plain and CPU-packed attention both have it
                q_cos, q_sin = rope_cos_sin(_row(positions, last), lm.cfg.head_dim)
                out = attention(apply_rope(q, q_cos, q_sin), k, v, _row(mask, last))
                hidden = _row(hidden, last)
            hidden = hidden + linear(attn.o_proj, out).to(hidden.dtype)
            normed, _ = layer.post_attention_layernorm(hidden)
            hidden = hidden + layer.mlp(normed).to(hidden.dtype)
            keys.append(k)
            values.append(v)
        final, _ = lm.norm(hidden)  # (B, 1, W)
        weight = self.lm_head.weight  # (vocab, W)
        logits = torch.matmul(weight, final.to(weight.dtype).transpose(1, 2))  # (B, vocab, 1)
        return keys, values, pad, logits[..., 0].float()

    def prefix(self, images, image_masks, tokens, token_masks) -> tuple[KVCache, torch.Tensor]:
        """The prompt's K/V cache (L, B, KV, P, hd) and the logits (B, vocab) of its last real token."""
        keys, values, pad, logits = self.prefix_parts(images, image_masks, tokens, token_masks)
        return KVCache(keys=torch.stack(keys), values=torch.stack(values), pad_mask=pad), logits

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


def _row(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b]] along dim 1, kept as a length-1 axis: (B, T, ...) -> (B, 1, ...)."""
    shape = [1] * x.dim()
    shape[0] = index.shape[0]
    gather = index.view(shape).expand(x.shape[0], 1, *x.shape[2:])
    return torch.gather(x, 1, gather)


def last_real_index(pad: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the last True of each row of a pad mask (B, T)."""
    order = torch.arange(pad.shape[1], device=pad.device).expand_as(pad)
    return torch.where(pad.bool(), order, -1).amax(dim=1)
