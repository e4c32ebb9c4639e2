"""The notes' two expert designs: `llava3d-expert` (deep fusion on Llama) and `alpamayo-expert` (Qwen3).

`alpamayo-expert` is a Qwen3 backbone that reasons, then an expert over its cache. No public
checkpoints fit them, so the blocks are checked against transformers' LlamaModel / Qwen3Model with
copied weights, the cached expert paths against one joint pass without a cache, the configs'
validation, the full-size parameter counts on the meta device, and Alpamayo's decode, attention
pattern, positions and samples.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vla_ros.errors import ConfigError
from vla_ros.model.alpamayo import AlpamayoExpertModel, expand_cache, reasoning_tokens
from vla_ros.model.config import (
    AlpamayoExpertConfig,
    every_nth_layer,
    FusionExpertConfig,
    get_config,
    LlamaConfig,
    Qwen3Config,
)
from vla_ros.model.fusion_expert import FusionExpertModel, joint_forward
from vla_ros.model.layers import attention_bias
from vla_ros.model.llama import LlamaStack
from vla_ros.model.qwen3 import Qwen3Stack

TOL = 1e-5


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def _randomize(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Random weights, norms around 1 (so that `weight *` is exercised), reproducible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.1 * noise if "norm" in name else std * noise)
    return model.eval()


# --- configs ------------------------------------------------------------------------------------------


def _sizes(c: LlamaConfig) -> tuple[int, ...]:
    return c.width, c.depth, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim


def test_named_configs_have_the_issue_sizes():
    full = get_config("llava3d-expert")
    assert isinstance(full, FusionExpertConfig) and full.variant == "llava3d-expert"
    b, e = full.backbone, full.expert
    assert _sizes(b) == (4096, 32, 32, 32, 128, 11008)
    assert _sizes(e) == (1024, 16, 32, 32, 128, 4096)
    assert full.joint_layers == tuple(range(1, 32, 2)) and full.vocab_size == 32000
    tiny = get_config("llava3d-expert-tiny")
    assert tiny.joint_layers == (1, 3) and (tiny.backbone.depth, tiny.expert.depth) == (4, 2)
    assert tiny.expert.width < tiny.backbone.width

    qwen = get_config("alpamayo-expert")
    assert isinstance(qwen, AlpamayoExpertConfig) and isinstance(qwen.backbone, Qwen3Config)
    b = qwen.backbone
    assert _sizes(b) == (4096, 36, 32, 8, 128, 12288)
    assert (b.rope_theta, b.rms_eps, qwen.vocab_size) == (1e6, 1e-6, 151936)
    assert qwen.expert == qwen.backbone  # the same text configuration
    assert (qwen.action_horizon, qwen.non_causal_actions) == (64, True) and qwen.num_samples > 1
    tiny = get_config("alpamayo-expert-tiny")
    assert tiny.action_horizon == 64 and tiny.num_samples > 1 and tiny.stop_token_id < tiny.vocab_size
    for name in ("llava3d-expert", "llava3d-expert-tiny", "alpamayo-expert", "alpamayo-expert-tiny"):
        cfg = get_config(name)
        assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_layer_map_and_head_space_are_validated():
    tiny = get_config("llava3d-expert-tiny")
    b, e = tiny.backbone, tiny.expert
    bad = {
        "layer_map": dict(layer_map=(1,)),  # one entry for two expert layers
        "layer_map[1]": dict(layer_map=(3, 1)),  # not increasing
        "layer_map[0]": dict(layer_map=(-1, 3)),
        "expert.width": dict(expert=dataclasses.replace(e, width=96)),  # wider than the backbone
        "expert.head_dim": dict(expert=dataclasses.replace(e, head_dim=8)),
        "expert.num_heads": dict(expert=dataclasses.replace(e, num_heads=2, num_kv_heads=2)),
        "expert.rope_theta": dict(expert=dataclasses.replace(e, rope_theta=500.0)),
    }
    for field, change in bad.items():
        with pytest.raises(ConfigError) as info:
            dataclasses.replace(tiny, **change)
        assert info.value.parameter == field and "\n" not in str(info.value), (field, str(info.value))
    with pytest.raises(ConfigError, match="layer_map\\[1\\]") as info:
        dataclasses.replace(tiny, layer_map=(1, 4))  # past the backbone's 4 layers
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(tiny, layer_map=None)  # 2 expert layers, 4 backbone layers
    assert info.value.parameter == "layer_map"
    assert dataclasses.replace(tiny, layer_map=[0, 2]).layer_map == (0, 2)  # lists (YAML) become tuples
    assert every_nth_layer(32, 2) == tuple(range(1, 32, 2)) and every_nth_layer(4, 2) == (1, 3)
    assert FusionExpertConfig("same", b, dataclasses.replace(b, width=32)).joint_layers == (0, 1, 2, 3)

    qwen = get_config("alpamayo-expert-tiny")
    for field, change in {
        "expert.depth": dict(expert=dataclasses.replace(qwen.expert, depth=3)),
        "expert.num_kv_heads": dict(expert=dataclasses.replace(qwen.expert, num_kv_heads=1)),
        "stop_token_id": dict(stop_token_id=qwen.vocab_size),
        "num_samples": dict(num_samples=0),
    }.items():
        with pytest.raises(ConfigError) as info:
            dataclasses.replace(qwen, **change)
        assert info.value.parameter == field and "\n" not in str(info.value), (field, str(info.value))


# --- parameter counts ---------------------------------------------------------------------------------


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layer_params(c: LlamaConfig, qk_norm: bool) -> int:
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    norms = 2 * c.width + (2 * c.head_dim if qk_norm else 0)  # input / post-attention (+ q / k norms)
    return 2 * c.width * q + 2 * c.width * kv + 3 * c.width * c.mlp_dim + norms


def test_full_size_parameter_counts_on_meta():
    cfg = get_config("llava3d-expert")
    with torch.device("meta"):
        model = FusionExpertModel(cfg)
    b, e, a = cfg.backbone, cfg.expert, cfg.action_dim
    w = e.width
    parts = {
        "backbone_embed": _count(model.backbone.embed_tokens),
        "backbone_layers": _count(model.backbone.layers) + _count(model.backbone.norm),
        "expert": _count(model.expert),
        "heads": sum(_count(getattr(model, n)) for n in (
            "state_proj", "action_in_proj", "action_time_mlp_in", "action_time_mlp_out", "action_out_proj")),
    }
    assert parts == {
        "backbone_embed": cfg.vocab_size * b.width,
        "backbone_layers": b.depth * _layer_params(b, False) + b.width,
        "expert": e.depth * _layer_params(e, False) + w,
        "heads": 2 * (a * w + w) + (2 * w * w + w) + (w * w + w) + (w * a + a),
    }
    # Llama-2-7B's 6,738,415,616 less its lm_head (32000 x 4096), which the policy does not build.
    assert parts["backbone_embed"] + parts["backbone_layers"] == 6_607_343_616
    assert parts["expert"] == 469_795_840 and parts["heads"] == 3_248_160

    cfg = get_config("alpamayo-expert")
    with torch.device("meta"):
        model = AlpamayoExpertModel(cfg)
    b, e, a = cfg.backbone, cfg.expert, cfg.action_dim
    w = e.width
    parts = {
        "backbone_embed": _count(model.backbone.embed_tokens),
        "backbone_layers": _count(model.backbone.layers) + _count(model.backbone.norm),
        "lm_head": _count(model.lm_head),
        "expert": _count(model.expert),
        "heads": sum(_count(getattr(model, n)) for n in (
            "action_in_proj", "time_mlp_in", "time_mlp_out", "action_out_proj")),
    }
    assert parts == {
        "backbone_embed": cfg.vocab_size * b.width,
        "backbone_layers": b.depth * _layer_params(b, True) + b.width,
        "lm_head": cfg.vocab_size * b.width,
        "expert": e.depth * _layer_params(e, True) + w,
        "heads": (a * w + w) + 2 * (w * w + w) + (w * a + a),
    }
    # Qwen3-8B (untied head): 8,190,735,360; the expert is its text model without the embedding.
    assert parts["backbone_embed"] + parts["backbone_layers"] + parts["lm_head"] == 8_190_735_360
    assert parts["expert"] == 6_946_075_648 and parts["heads"] == 33_583_106


# --- blocks against transformers ------------------------------------------------------------------------


def _hf_model(kind: str, cfg: LlamaConfig, vocab: int, seed: int):
    transformers = pytest.importorskip("transformers")
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaModel),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3Model),
    }[kind]
    hf_cfg = config_class(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_eps, rope_theta=cfg.rope_theta, vocab_size=vocab, attention_bias=False,
    )
    model = model_class(hf_cfg).float()
    return _randomize(model, seed, std=0.1)


def _compare_with_transformers(kind: str, cfg: LlamaConfig, stack_class, seed: int) -> float:
    """Worst difference of final hidden states and every layer's K / V against transformers (fp32)."""
    vocab, batch, tokens = 64, 2, 13
    hf = _hf_model(kind, cfg, vocab, seed)
    ours = stack_class(cfg, vocab_size=vocab).eval()
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if "rotary" not in k}, strict=True)
    ids = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = hf(input_ids=ids, use_cache=True)
        positions = torch.arange(tokens)[None].expand(batch, tokens)
        causal = torch.ones(tokens, tokens, dtype=torch.bool).tril().expand(batch, tokens, tokens)
        hidden, kv = ours(ours.embed_tokens(ids), positions, attention_bias(causal))
    errors = [_max_err(hidden, out.last_hidden_state)]
    for index, (k, v) in enumerate(kv):
        layer = out.past_key_values.layers[index]
        errors += [_max_err(k, layer.keys), _max_err(v, layer.values)]
    return max(errors)


def test_llama_backbone_and_narrow_expert_match_transformers():
    cfg = get_config("llava3d-expert-tiny")
    assert _compare_with_transformers("llama", cfg.backbone, LlamaStack, seed=1) <= TOL
    # The narrow expert: 32 wide, 4 heads x 16 = 64 (q_proj 32 -> 64, o_proj 64 -> 32), as a LlamaModel.
    assert _compare_with_transformers("llama", cfg.expert, LlamaStack, seed=2) <= TOL


def test_qwen3_stack_matches_transformers():
    # strict loading of transformers' state dict also checks the q_norm / k_norm names and shapes
    cfg = get_config("alpamayo-expert-tiny").backbone  # GQA, head_dim * heads != width
    assert _compare_with_transformers("qwen3", cfg, Qwen3Stack, seed=3) <= TOL
    # Qwen3-8B's head layout (32 heads, 8 K/V heads of 128) on a narrow, one-layer stack.
    full = dataclasses.replace(get_config("alpamayo-expert").backbone, width=128, depth=1, mlp_dim=256)
    assert _compare_with_transformers("qwen3", full, Qwen3Stack, seed=4) <= TOL


# --- deep fusion (llava3d-expert) --------------------------------------------------------------------------


def _fusion_inputs(cfg: FusionExpertConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (2, 9), generator=g)
    token_masks = torch.arange(9)[None] < torch.tensor([[6], [9]])
    image_embeds = torch.randn(2, 5, cfg.backbone.width, generator=g)
    image_masks = torch.tensor([[True, True, True, False, False], [True] * 5])
    state = torch.randn(2, cfg.action_dim, generator=g)
    x_t = torch.randn(2, cfg.action_horizon, cfg.action_dim, generator=g)
    return tokens, token_masks, image_embeds, image_masks, state, x_t


def test_fusion_cached_expert_matches_joint_pass():
    cfg = get_config("llava3d-expert-tiny")
    model = _randomize(FusionExpertModel(cfg), seed=5)
    tokens, token_masks, image_embeds, image_masks, state, x_t = _fusion_inputs(cfg)
    t = torch.tensor([0.9, 0.35])
    with torch.no_grad():
        cache = model.embed_prefix(tokens, token_masks, image_embeds, image_masks)
        cached = model.denoise_step(cache, x_t, t, state)
        joint = model.joint_velocity(tokens, token_masks, x_t, t, state, image_embeds, image_masks)
    # Only the mapped backbone layers are cached: one per expert layer.
    assert cache.keys.shape == (cfg.expert.depth, 2, cfg.backbone.num_kv_heads, 14, cfg.backbone.head_dim)
    assert cached.shape == (2, cfg.action_horizon, cfg.action_dim)
    assert _max_err(cached, joint) <= TOL


def test_fusion_layer_map_decides_which_backbone_layers_reach_the_actions():
    cfg = get_config("llava3d-expert-tiny")  # expert layers on backbone layers 1 and 3
    model = _randomize(FusionExpertModel(cfg), seed=6)
    tokens, token_masks, image_embeds, image_masks, state, x_t = _fusion_inputs(cfg, 1)
    t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        before = model.joint_velocity(tokens, token_masks, x_t, t, state)
        model.backbone.layers[3].mlp.down_proj.weight.add_(1.0)  # after the last K/V the expert reads
        model.backbone.norm.weight.add_(1.0)
        assert _max_err(model.joint_velocity(tokens, token_masks, x_t, t, state), before) == 0.0
        model.backbone.layers[2].mlp.down_proj.weight.add_(1.0)  # a backbone-only layer feeding layer 3
        assert _max_err(model.joint_velocity(tokens, token_masks, x_t, t, state), before) > 1e-3


def test_fusion_masks_are_pi0s():
    cfg = get_config("llava3d-expert-tiny")
    model = _randomize(FusionExpertModel(cfg), seed=7)
    tokens, token_masks, _, _, state, x_t = _fusion_inputs(cfg, 2)
    t = torch.tensor([0.4, 0.6])
    with torch.no_grad():
        cache = model.embed_prefix(tokens, token_masks)
        changed = x_t.clone()
        changed[:, -1] += 1.0
        base, moved = model.denoise_step(cache, x_t, t, state), model.denoise_step(cache, changed, t, state)
        # One block of action tokens: the first action sees the last one.
        assert _max_err(base[:, 0], moved[:, 0]) > 1e-4
        # The state token is its own block: it sees the prefix, not the actions.
        embs = model.suffix_embeddings(state, x_t, t)
        other = model.suffix_embeddings(state, changed, t)
        pad, ar = model.suffix_layout(2)
        from vla_ros.model import masks

        mask = masks.suffix_attention_mask(cache.pad_mask, pad, ar)
        positions = masks.suffix_positions(cache.pad_mask, pad)
        outs = [joint_forward(model.stacks, [None, e], model.layer_maps, mask, positions, past=cache)[0][1]
                for e in (embs, other)]
        assert _max_err(outs[0][:, 0], outs[1][:, 0]) == 0.0


# --- Alpamayo (alpamayo-expert) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alpamayo():
    cfg = get_config("alpamayo-expert-tiny")
    model = _randomize(AlpamayoExpertModel(cfg), seed=8)
    g = torch.Generator().manual_seed(9)
    tokens = torch.randint(0, cfg.vocab_size, (1, 10), generator=g)
    token_masks = torch.arange(10)[None] < 8  # two padding slots
    return model, tokens, token_masks


def _greedy_no_cache(model: AlpamayoExpertModel, tokens, token_masks, count: int) -> list[int]:
    """Greedy ids recomputing the whole sequence every token (the literal form of the decode)."""
    generated: list[int] = []
    for _ in range(count):
        ids = torch.cat([tokens, torch.tensor([generated], dtype=torch.int64)], dim=1)
        pad = torch.cat([token_masks, torch.ones(1, len(generated), dtype=torch.bool)], dim=1)
        from vla_ros.model import masks

        out, _ = joint_forward(model.stacks, [model.embed_text(ids), None], model.layer_maps,
                               masks.attention_mask(pad, torch.ones_like(pad)), masks.prefix_positions(pad))
        last = int(pad[0].nonzero().max())
        generated.append(int(model.logits(out[0][0, last]).argmax()))
    return generated


def test_alpamayo_reasoning_stops_at_stop_token_or_budget(alpamayo):
    model, tokens, token_masks = alpamayo
    with torch.no_grad():
        prompt = model.prefill(tokens, token_masks)
        free, cache = model.reason(prompt, stop_ids=(), max_new_tokens=6)
    assert free.stop is None and len(free.ids) == 6
    assert free.ids.tolist() == _greedy_no_cache(model, tokens, token_masks, 6)
    assert cache.keys.shape[3] == 10 + 6 and cache.pad_mask.sum() == 8 + 6
    # The prompt + reasoning cache equals a fresh causal prefill of the same tokens.
    with torch.no_grad():
        fresh = model.prefill(torch.cat([tokens, torch.tensor([free.ids.tolist()])], dim=1),
                              torch.cat([token_masks, torch.ones(1, 6, dtype=torch.bool)], dim=1))
    assert _max_err(cache.keys, fresh.keys) <= TOL and _max_err(cache.values, fresh.values) <= TOL
    # Stop at the first token whose first occurrence is not the first id.
    ids = free.ids.tolist()
    index = next(i for i in range(1, 6) if ids[i] not in ids[:i])
    with torch.no_grad():
        stopped, cache = model.reason(prompt, stop_ids=(ids[index],))
    assert stopped.stop == ids[index] and stopped.ids.tolist() == ids[:index]
    assert cache.keys.shape[3] == 10 + index + 1  # the stop token is in the cache
    assert reasoning_tokens(stopped) == ids[: index + 1]
    with torch.no_grad():  # the config's budget and stop token by default
        default, _ = model.reason(prompt)
    assert default.num_tokens <= model.cfg.max_reasoning_tokens


def test_alpamayo_cached_expert_matches_joint_pass_and_positions_continue(alpamayo):
    model, tokens, token_masks = alpamayo
    cfg = model.cfg
    g = torch.Generator().manual_seed(10)
    x_t = torch.randn(3, cfg.action_horizon, cfg.action_dim, generator=g)
    t = torch.tensor([0.9, 0.5, 0.2])
    with torch.no_grad():
        result, cache = model.reason(model.prefill(tokens, token_masks), stop_ids=(), max_new_tokens=5)
        cached = model.velocity(cache, x_t, t)
        joint = model.joint_velocity(tokens, token_masks, reasoning_tokens(result), x_t, t)
    assert cached.shape == (3, cfg.action_horizon, cfg.action_dim)
    assert _max_err(cached, joint) <= TOL
    # 8 real prompt tokens and 5 reasoning tokens: the actions take positions 13, 14, ...
    positions = model.action_positions(cache, 3)
    assert torch.equal(positions, (13 + torch.arange(cfg.action_horizon)).expand(3, -1))


def test_alpamayo_action_attention_is_bidirectional(alpamayo):
    model, tokens, token_masks = alpamayo
    cfg = model.cfg
    x_t = torch.randn(1, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(11))
    changed = x_t.clone()
    changed[:, -1] += 1.0  # the last future step
    t = torch.tensor([0.6])
    with torch.no_grad():
        cache = model.prefill(tokens, token_masks)
        assert _max_err(model.velocity(cache, x_t, t)[:, 0], model.velocity(cache, changed, t)[:, 0]) > 1e-4
        causal = AlpamayoExpertModel(dataclasses.replace(cfg, non_causal_actions=False)).eval()
        causal.load_state_dict(model.state_dict())
        base, moved = causal.velocity(cache, x_t, t), causal.velocity(cache, changed, t)
    assert _max_err(base[:, :-1], moved[:, :-1]) == 0.0 and _max_err(base[:, -1], moved[:, -1]) > 1e-4


def test_alpamayo_samples_in_one_batch_equal_single_runs(alpamayo):
    model, tokens, token_masks = alpamayo
    cfg = model.cfg
    noise = torch.randn(cfg.num_samples, cfg.action_horizon, cfg.action_dim,
                        generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        batched, result = model.sample_actions(tokens, token_masks, noise=noise, num_steps=3, stop_ids=(),
                                               max_new_tokens=3)
        singles = [model.sample_actions(tokens, token_masks, noise=noise[i:i + 1], num_steps=3, stop_ids=(),
                                        max_new_tokens=3)[0] for i in range(cfg.num_samples)]
        # Dropping the prompt's padding slots changes nothing: padding takes no position.
        unpadded, _ = model.sample_actions(tokens[:, :8], token_masks[:, :8], noise=noise, num_steps=3,
                                           stop_ids=(), max_new_tokens=3)
    assert batched.shape == (cfg.num_samples, cfg.action_horizon, cfg.action_dim) and len(result.ids) == 3
    assert _max_err(batched, torch.cat(singles)) <= TOL
    assert _max_err(batched, unpadded) <= TOL
    assert expand_cache(model.prefill(tokens, token_masks), 4).keys.shape[1] == 4
    with pytest.raises(ValueError, match="one prompt"):
        model.sample_actions(tokens.expand(2, -1), token_masks.expand(2, -1))


def test_the_tools_refuse_the_designs_in_one_line():
    """Named, but not runnable yet: make-tiny and bench say so instead of failing deep inside."""
    from vla_ros.errors import ConfigError
    from vla_ros.model.config import get_runnable_config

    for name in ("llava3d-expert", "llava3d-expert-tiny", "alpamayo-expert", "alpamayo-expert-tiny"):
        with pytest.raises(ConfigError, match="model design from the notes") as info:
            get_runnable_config(name)
        assert info.value.parameter == "--config" and "\n" not in str(info.value)
    assert get_runnable_config("smolvla-tiny").variant == "smolvla"
