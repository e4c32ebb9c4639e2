"""The deep-fusion action expert of the notes (a LLaVA-3D-based VLA): a Llama backbone and a narrow expert.

Data flow, pi0's with Llama blocks (docs/model.md, "Expert designs from the notes"):

  embed_prefix(tokens, masks, image_embeds)  -> KVCache   (backbone over image embeddings + prompt,
                                                           bidirectionally; K/V of the mapped layers)
  denoise_step(cache, x_t, t, state)         -> v_t       (the expert over [state, actions])
  sample_actions(...)                        -> actions   (10 Euler steps from noise, as pi0)
  joint_velocity(...)                        -> v_t       (prefix and suffix in one pass, no cache:
                                                           the reference the cached path is checked against)

The expert is `expert.width` wide but works in the backbone's head space (same
heads, K/V heads, head_dim, RoPE base): its own q/k/v/o projections map its
width into that space, so at every joint layer both stacks project their tokens,
one attention runs over the union and each takes its slice back through its
o_proj and MLP (`joint_forward`). Expert layer i joins backbone layer
`layer_map[i]`; backbone layers without an expert layer run alone, and the
action tokens pass them unchanged. So the cache keeps only the mapped layers'
K/V (16 of 32 at full size), and the prefix pass stops after the K/V of the
last mapped layer (what comes after cannot reach the actions).

The vision tower and projector are outside this module: the caller passes image
embeddings already in the backbone's width (LLaVA's `mm_projector` output).

`joint_forward` is the joint layer-by-layer attention of Llama-family stacks
(Llama, Qwen3) with layer maps; model/alpamayo.py uses it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from vla_ros.model import masks
from vla_ros.model.config import FusionExpertConfig
from vla_ros.model.gemma import KVCache
from vla_ros.model.layers import attention, attention_bias, linear, sincos_time_embedding
from vla_ros.model.llama import apply_rope, LlamaStack, rope_tables
from vla_ros.model.pi0 import euler_times

__all__ = ["FusionExpertModel", "joint_forward"]


def joint_forward(
    stacks: Sequence[LlamaStack],
    embeds: Sequence[torch.Tensor | None],
    layer_maps: Sequence[Sequence[int]],
    mask: torch.Tensor,
    positions: torch.Tensor,
    past: KVCache | None = None,
    collect_kv: bool = False,
    kv_only: bool = False,
    joint_layers: Sequence[int] | None = None,
) -> tuple[list[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor] | None]:
    """Run Llama-family stacks jointly over their tokens, layer by layer, in one head space.

    embeds[e] (B, T_e, W_e), or None when stack e has no tokens in this pass.
    layer_maps[e][i]: the joint layer that stack e's layer i joins. At a joint
    layer, the stacks with a layer there attend together over their tokens
    (and the cache); the others' tokens pass it unchanged and are not seen.
    mask bool (B, T, S) over queries T = sum T_e and keys S = past length + T;
    positions (B, T). joint_layers: the joint layers to run, in order (default:
    every layer some active stack has). past: K/V (n, B, KV, P, hd) where
    past.keys[n] joins the n-th joint layer run. collect_kv returns this pass's
    roped K / V stacked per joint layer run (every run layer must have the
    same stacks); kv_only stops after the last layer's K/V.
    Returns the final-normed outputs per stack (None if absent or kv_only) and the K/V.
    """
    active = [e for e, h in enumerate(embeds) if h is not None]
    lengths = {e: embeds[e].shape[1] for e in active}
    starts, offset = {}, 0
    for e in active:
        starts[e], offset = offset, offset + lengths[e]
    owners: dict[int, dict[int, int]] = {}  # joint layer -> {stack: its layer index}
    for e in active:
        for index, joint in enumerate(layer_maps[e]):
            owners.setdefault(joint, {})[e] = index
    if joint_layers is None:
        joint_layers = sorted(owners)
    cfg = stacks[active[0]].cfg
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    bias = attention_bias(mask)
    past_len = 0 if past is None else past.keys.shape[3]
    hidden = {e: embeds[e] for e in active}
    views = {}  # participants -> (cos, sin, bias) restricted to their tokens

    def view(parts: tuple[int, ...]):
        if parts == tuple(active):
            return cos, sin, bias
        if parts not in views:
            rows = torch.cat([torch.arange(starts[e], starts[e] + lengths[e]) for e in parts]).to(bias.device)
            cols = torch.cat([torch.arange(past_len, device=bias.device), past_len + rows])
            views[parts] = (cos[:, :, rows], sin[:, :, rows], bias[:, rows][:, :, cols])
        return views[parts]

    keys, values = [], []
    for n, joint in enumerate(joint_layers):
        parts = tuple(e for e in active if e in owners.get(joint, {}))
        if not parts:
            continue
        last = n == len(joint_layers) - 1
        part_cos, part_sin, part_bias = view(parts)
        qs, ks, vs = [], [], []
        for e in parts:
            layer = stacks[e].layers[owners[joint][e]]
            normed = layer.input_layernorm(hidden[e])
            k, v = layer.self_attn.key_value(normed)
            ks.append(k)
            vs.append(v)
            if not (kv_only and last):
                qs.append(layer.self_attn.query(normed))
        k = apply_rope(torch.cat(ks, dim=2), part_cos, part_sin)
        v = torch.cat(vs, dim=2)
        if collect_kv:
            keys.append(k)
            values.append(v)
        if kv_only and last:
            break
        q = apply_rope(torch.cat(qs, dim=2), part_cos, part_sin)
        if past is not None:
            k = torch.cat([past.keys[n].to(k.dtype), k], dim=2)
            v = torch.cat([past.values[n].to(v.dtype), v], dim=2)
        out = attention(q, k, v, part_bias)
        for e, piece in zip(parts, out.split([lengths[e] for e in parts], dim=1)):
            hidden[e] = stacks[e].layers[owners[joint][e]].finish(hidden[e], piece)
    kv = (torch.stack(keys), torch.stack(values)) if collect_kv else None
    outputs: list[torch.Tensor | None] = [None] * len(embeds)
    if not kv_only:
        for e in active:
            outputs[e] = stacks[e].norm(hidden[e])
    return outputs, kv


class BackboneWithExpert(nn.Module):
    """A language `backbone` (with `embed_tokens`) and an action `expert`, run together by `joint_forward`.

    What the two designs of the notes share (FusionExpertModel, AlpamayoExpertModel);
    subclasses make `backbone` and `expert` and say which layers meet (`layer_maps`).
    """

    @property
    def stacks(self) -> list[nn.Module]:
        return [self.backbone, self.expert]

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.backbone.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.embed_tokens.weight.device

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings; Llama and Qwen3 do not scale them."""
        return F.embedding(tokens.long(), self.backbone.embed_tokens.weight)

    def prefix_embeddings(self, tokens, token_masks, image_embeds=None, image_masks=None):
        """Prefix embeddings (B, N + L, W) and pad mask: image embeddings (B, N, W), then the prompt.

        image_masks (B, N), default all real.
        """
        text, pad = self.embed_text(tokens), token_masks.bool()
        if image_embeds is None:
            return text, pad
        if image_masks is None:
            image_masks = torch.ones(image_embeds.shape[:2], dtype=torch.bool, device=pad.device)
        embs = torch.cat([image_embeds.to(text.dtype), text], dim=1)
        return embs, torch.cat([image_masks.bool(), pad], dim=1)


class FusionExpertModel(BackboneWithExpert):
    """Llama `backbone` (+ `embed_tokens`) and the narrow Llama `expert`, with pi0's suffix heads."""

    def __init__(self, cfg: FusionExpertConfig):
        super().__init__()
        self.cfg = cfg
        width, dim = cfg.expert.width, cfg.action_dim
        self.backbone = LlamaStack(cfg.backbone, vocab_size=cfg.vocab_size)
        self.expert = LlamaStack(cfg.expert)
        self.state_proj = nn.Linear(dim, width)
        self.action_in_proj = nn.Linear(dim, width)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)
        self.action_out_proj = nn.Linear(width, dim)

    # -- structure ---------------------------------------------------------------------------
    @property
    def layer_maps(self) -> list[tuple[int, ...]]:
        return [tuple(range(self.cfg.backbone.depth)), self.cfg.joint_layers]

    # -- prefix -----------------------------------------------------------------------------
    def embed_prefix(self, tokens, token_masks, image_embeds=None, image_masks=None) -> KVCache:
        """The cache: K/V (expert depth, B, KV, P, hd) of the backbone layers the expert joins."""
        embs, pad = self.prefix_embeddings(tokens, token_masks, image_embeds, image_masks)
        joined = list(self.cfg.joint_layers)
        _, kv = joint_forward(
            self.stacks, [embs, None], self.layer_maps, masks.attention_mask(pad, torch.zeros_like(pad)),
            masks.prefix_positions(pad), collect_kv=True, kv_only=True, joint_layers=range(joined[-1] + 1),
        )
        return KVCache(keys=kv[0][joined], values=kv[1][joined], pad_mask=pad)

    # -- suffix -----------------------------------------------------------------------------
    def suffix_embeddings(self, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """pi0's suffix (B, 1 + H, W): the state token, then each action joined with t by the MLP."""
        action_emb = linear(self.action_in_proj, x_t)
        time_emb = sincos_time_embedding(t, self.cfg.expert.width)
        time_emb = (time_emb[:, None, :] if time_emb.dim() == 2 else time_emb).expand_as(action_emb)
        hidden = F.silu(linear(self.action_time_mlp_in, torch.cat([action_emb, time_emb], dim=2)))
        action_time = linear(self.action_time_mlp_out, hidden)
        state_emb = linear(self.state_proj, state)[:, None, :]
        return torch.cat([state_emb, action_time], dim=1).to(self.compute_dtype)

    def suffix_layout(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """pad and ar flags of the suffix: pi0's [state=1, first action=1, rest 0]."""
        ar = masks.suffix_ar_mask(batch, self.cfg.action_horizon, False, device)
        return torch.ones_like(ar), ar

    def denoise_step(self, cache: KVCache, x_t: torch.Tensor, t: torch.Tensor, state: torch.Tensor):
        """v_t (B, H, action_dim) for x_t at flow time t (B,), the expert reading the cache."""
        embs = self.suffix_embeddings(state, x_t, t)
        pad, ar = self.suffix_layout(x_t.shape[0], x_t.device)
        outputs, _ = joint_forward(
            self.stacks, [None, embs], self.layer_maps, masks.suffix_attention_mask(cache.pad_mask, pad, ar),
            masks.suffix_positions(cache.pad_mask, pad), past=cache,
        )
        return linear(self.action_out_proj, outputs[1][:, -self.cfg.action_horizon :]).float()

    def joint_velocity(self, tokens, token_masks, x_t, t, state, image_embeds=None, image_masks=None):
        """v_t from one joint pass over prefix + suffix without a cache (the training-time graph)."""
        prefix, prefix_pad = self.prefix_embeddings(tokens, token_masks, image_embeds, image_masks)
        suffix = self.suffix_embeddings(state, x_t, t)
        suffix_pad, suffix_ar = self.suffix_layout(x_t.shape[0], x_t.device)
        pad = torch.cat([prefix_pad, suffix_pad], dim=1)
        ar = torch.cat([torch.zeros_like(prefix_pad), suffix_ar], dim=1)
        outputs, _ = joint_forward(
            self.stacks, [prefix, suffix], self.layer_maps, masks.attention_mask(pad, ar),
            masks.prefix_positions(pad),
        )
        return linear(self.action_out_proj, outputs[1][:, -self.cfg.action_horizon :]).float()

    @torch.no_grad()
    def sample_actions(self, tokens, token_masks, state, image_embeds=None, image_masks=None, noise=None,
                       num_steps: int = 10, generator=None) -> torch.Tensor:
        """Actions (B, H, action_dim) by Euler integration from noise at t=1 to t=0, as pi0."""
        cache = self.embed_prefix(tokens, token_masks, image_embeds, image_masks)
        batch = tokens.shape[0]
        shape = (batch, self.cfg.action_horizon, self.cfg.action_dim)
        x = torch.randn(shape, generator=generator, device=tokens.device) if noise is None else noise.float()
        dt = -1.0 / num_steps
        for t in euler_times(num_steps):
            t_batch = torch.full((batch,), t, dtype=torch.float32, device=x.device)
            x = x + dt * self.denoise_step(cache, x, t_batch, state)
        return x
