"""SmolVLA's network: named configs, parameter counts per part, Llama blocks against transformers,
the pixel shuffle, and the cached expert path against a joint pass without a cache.

The end-to-end check against LeRobot 0.6.1's own outputs is test_lerobot_smolvla_parity.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vla_ros.errors import ConfigError
from vla_ros.model.config import get_config, LlamaConfig, smolvla_expert_mlp_dim, SmolVLAConfig
from vla_ros.model.layers import attention_bias
from vla_ros.model.llama import LlamaStack
from vla_ros.model.smolvla import pixel_shuffle, SmolVLAModel

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lerobot_0_6_1" / "smolvla"

# Parameters of LeRobot 0.6.1's SmolVLA built from SmolVLM2-500M-Video-Instruct's config on the meta
# device (450,046,176 with the VLM's unused lm_head, 47,308,800, which vla_ros does not build).
FULL_SIZE_PARTS = {
    "vision": 86_433_024,
    "connector": 11_796_480,
    "text_embed": 47_308_800,
    "text_layers": 157_318_080,  # 16 layers + final norm
    "expert": 98_245_840,  # 16 layers + final norm
    "state_proj": 31_680,
    "action_in_proj": 23_760,
    "action_out_proj": 23_072,
    "action_time_mlp_in": 1_037_520,
    "action_time_mlp_out": 519_120,
}
LM_HEAD_PARAMETERS = 47_308_800
LEROBOT_TOTAL = 450_046_176


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _parts(model: SmolVLAModel) -> dict[str, int]:
    text = model.text_model
    return {
        "vision": _count(model.vlm.vision_model),
        "connector": _count(model.vlm.connector),
        "text_embed": _count(text.embed_tokens),
        "text_layers": _count(text.layers) + _count(text.norm),
        "expert": _count(model.expert),
        **{name: _count(getattr(model, name)) for name in (
            "state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out")},
    }


# --- configs ------------------------------------------------------------------------------------------


def test_expert_mlp_size_follows_lerobots_rounding():
    assert smolvla_expert_mlp_dim(720) == 2048
    assert smolvla_expert_mlp_dim(48) == 256  # wider than the tiny backbone's 128


def test_tiny_config_has_the_issue_sizes():
    cfg = get_config("smolvla-tiny")
    assert isinstance(cfg, SmolVLAConfig) and cfg.variant == "smolvla"
    v, t, e = cfg.vision, cfg.text, cfg.expert
    assert (v.width, v.depth, v.num_heads, v.mlp_dim, v.image_size, v.patch_size) == (32, 2, 2, 64, 512, 16)
    assert cfg.scale_factor == 4 and cfg.tokens_per_image == 64
    assert (t.width, t.mlp_dim, t.num_heads, t.num_kv_heads, t.head_dim, t.depth) == (64, 128, 4, 2, 16, 4)
    assert (t.rope_theta, t.rms_eps) == (100000.0, 1e-5)
    assert cfg.rope_theta == 10000.0  # what LeRobot applies, whatever the VLM's config says
    assert (e.width, e.mlp_dim, e.depth, e.num_heads, e.num_kv_heads, e.head_dim) == (48, 256, 4, 4, 2, 16)
    assert cfg.self_attention_layers == (0, 2)
    assert (cfg.max_token_len, cfg.action_horizon, cfg.action_dim) == (48, 50, 32)


def test_full_config_sizes():
    cfg = get_config("smolvla")
    v = cfg.vision
    assert (v.width, v.depth, v.mlp_dim, v.num_heads) == (768, 12, 3072, 12)
    assert (cfg.text.width, cfg.text.depth, cfg.text.mlp_dim) == (960, 16, 2560)
    assert (cfg.text.num_heads, cfg.text.num_kv_heads, cfg.text.head_dim) == (15, 5, 64)
    assert (cfg.expert.width, cfg.expert.mlp_dim) == (720, 2048)
    assert cfg.vocab_size == 49280
    assert cfg.prefix_len == 3 * 64 + 48 + 1


def test_config_validation():
    cfg = get_config("smolvla-tiny")
    with pytest.raises(ConfigError, match="expert.num_heads"):
        dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, num_heads=2, num_kv_heads=1))
    with pytest.raises(ConfigError, match="scale_factor"):
        dataclasses.replace(cfg, scale_factor=3)
    with pytest.raises(ConfigError, match="num_kv_heads"):
        LlamaConfig(64, 2, 128, 4, 3, 16)
    with pytest.raises(ConfigError, match="rope_theta"):
        LlamaConfig(64, 2, 128, 4, 2, 16, rope_theta=0.0)
    assert SmolVLAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --- parameter counts ---------------------------------------------------------------------------------


def test_full_size_parameter_count_per_part():
    with torch.device("meta"):
        model = SmolVLAModel(get_config("smolvla"))
    parts = _parts(model)
    assert parts == FULL_SIZE_PARTS
    assert _count(model) == sum(FULL_SIZE_PARTS.values()) == LEROBOT_TOTAL - LM_HEAD_PARAMETERS


def test_tiny_model_has_the_fixture_weight_shapes():
    meta = json.loads((FIXTURE / "expected_meta.json").read_text())
    expected = {k[len("model."):]: tuple(v) for k, v in meta["weight_shapes"].items() if "lm_head" not in k}
    with torch.device("meta"):
        model = SmolVLAModel(get_config("smolvla-tiny"))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


# --- blocks -------------------------------------------------------------------------------------------


def _hf_llama(cfg: LlamaConfig, vocab: int):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.LlamaConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_eps, rope_theta=cfg.rope_theta, vocab_size=vocab, attention_bias=False,
        mlp_bias=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaModel(hf_cfg).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():  # random norms too, so that `weight *` is tested
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / param.shape[-1] ** 0.5)
    return model


def test_llama_stack_matches_transformers():
    cfg = get_config("smolvla-tiny").text
    hf = _hf_llama(cfg, 512)
    ours = LlamaStack(cfg, vocab_size=512).eval()
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if "rotary" not in k}, strict=True)
    ids = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(input_ids=ids, use_cache=True)
        positions = torch.arange(11)[None].expand(2, 11)
        causal = torch.ones(11, 11, dtype=torch.bool).tril().expand(2, 11, 11)
        hidden, kv = ours(ours.embed_tokens(ids), positions, attention_bias(causal))
    assert torch.allclose(hidden, out.last_hidden_state, atol=1e-5, rtol=0)
    cache = out.past_key_values
    for index, (k, v) in enumerate(kv):
        assert torch.allclose(k, cache.layers[index].keys, atol=1e-5, rtol=0)
        assert torch.allclose(v, cache.layers[index].values, atol=1e-5, rtol=0)


def test_llama_decoder_layer_matches_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = get_config("smolvla").text  # full-size head layout: 15 heads, 5 K/V heads of 64
    cfg = dataclasses.replace(cfg, depth=1, width=240, mlp_dim=320)
    hf = _hf_llama(cfg, 16)
    ours = LlamaStack(cfg, vocab_size=16).eval()
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if "rotary" not in k}, strict=True)
    x = torch.randn(1, 9, cfg.width, generator=torch.Generator().manual_seed(2))
    positions = torch.arange(3, 12)[None]
    with torch.no_grad():
        cos, sin = hf.rotary_emb(x, positions)
        mask = torch.ones(9, 9, dtype=torch.bool).tril()
        expected = hf.layers[0](x, attention_mask=torch.where(mask, 0.0, float("-inf"))[None, None],
                                position_embeddings=(cos, sin), position_ids=positions)
        expected = expected[0] if isinstance(expected, tuple) else expected
        from vla_ros.model.llama import rope_tables

        ours_cos, ours_sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        got, _, _ = ours.layers[0](x, ours_cos, ours_sin, attention_bias(mask[None]))
    assert isinstance(hf.layers[0], transformers.models.llama.modeling_llama.LlamaDecoderLayer)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_pixel_shuffle_layout():
    dim, side, scale = 3, 8, 4
    x = torch.arange(side * side * dim, dtype=torch.float32).view(1, side * side, dim)
    out = pixel_shuffle(x, scale)
    assert out.shape == (1, (side // scale) ** 2, dim * scale * scale)
    for r in range(side // scale):
        for c in range(side // scale):
            for h in range(scale):
                for w in range(scale):
                    patch = (scale * r + h) * side + scale * c + w
                    feature = h * scale * dim + w * dim
                    assert torch.equal(out[0, r * (side // scale) + c, feature:feature + dim], x[0, patch])


# --- cached expert path -------------------------------------------------------------------------------


def _random_inputs(cfg: SmolVLAConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 2, 512, 512, 3, generator=g) * 2 - 1
    image_masks = torch.tensor([[True, False]])
    tokens = torch.randint(0, cfg.vocab_size, (1, 12), generator=g)
    token_masks = torch.arange(12)[None] < 9
    state = torch.randn(1, cfg.action_dim, generator=g)
    x_t = torch.randn(1, cfg.action_horizon, cfg.action_dim, generator=g)
    return images, image_masks, tokens, token_masks, state, x_t


def test_cached_expert_matches_joint_pass():
    from vla_ros.model.checkpoint import random_model

    cfg = get_config("smolvla-tiny")
    model = random_model(cfg, seed=3, std=0.2)
    images, image_masks, tokens, token_masks, state, x_t = _random_inputs(cfg)
    t = torch.tensor([0.7])
    with torch.no_grad():
        cache = model.embed_prefix(images, image_masks, tokens, token_masks, state)
        cached = model.denoise_step(cache, x_t, t)
        joint = model.joint_velocity(images, image_masks, tokens, token_masks, x_t, t, state)
    assert cached.shape == (1, cfg.action_horizon, cfg.action_dim)
    assert torch.allclose(cached, joint, atol=1e-5, rtol=0)


def test_masked_slot_and_padding_equal_dropping_them():
    from vla_ros.model.checkpoint import random_model

    cfg = get_config("smolvla-tiny")
    model = random_model(cfg, seed=4, std=0.2)
    images, image_masks, tokens, token_masks, state, x_t = _random_inputs(cfg, 1)
    with torch.no_grad():
        padded = model.sample_actions(images, image_masks, tokens, token_masks, state, noise=x_t)
        dropped = model.sample_actions(images[:, :1], image_masks[:, :1], tokens[:, :9], token_masks[:, :9],
                                       state, noise=x_t)
    assert torch.allclose(padded, dropped, atol=1e-5, rtol=0)
