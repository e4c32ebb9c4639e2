"""The model's numerics: KV-cache path, AdaRMS, time embedding, sampling, parameter counts."""

import math

import numpy as np
import pytest
import torch

from vla_ros.model.checkpoint import random_model
from vla_ros.model.config import get_config
from vla_ros.model.layers import AdaRMSNorm, rms_normalize, sincos_time_embedding
from vla_ros.model.pi0 import euler_times, Pi0Model


def _inputs(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, 224, 224, 3), generator=g, dtype=torch.uint8)
    image_masks = torch.tensor([[True, True, False], [True, False, True]])[:batch]
    tokens = torch.randint(1, cfg.vocab_size, (batch, cfg.max_token_len), generator=g)
    token_masks = torch.zeros(batch, cfg.max_token_len, dtype=torch.bool)
    token_masks[0, :12] = True
    token_masks[-1, :5] = True
    state = torch.randn(batch, cfg.action_dim, generator=g)
    x_t = torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=g)
    return images, image_masks, tokens, token_masks, state, x_t


@pytest.mark.parametrize("name", ["pi0-tiny", "pi05-tiny"])
def test_cached_denoise_step_equals_joint_forward(name):
    cfg = get_config(name)
    model = random_model(cfg, seed=3, std=0.1)
    images, image_masks, tokens, token_masks, state, x_t = _inputs(cfg)
    t = torch.tensor([0.9, 0.35])
    with torch.no_grad():
        cache = model.embed_prefix(images, image_masks, tokens, token_masks)
        cached = model.denoise_step(cache, x_t, t, state)
        joint = model.joint_velocity(images, image_masks, tokens, token_masks, x_t, t, state)
        assert cache.keys.shape == (cfg.prefix.depth, 2, 1, cfg.prefix_len, cfg.prefix.head_dim)
        assert cached.abs().mean() > 1e-2  # not a degenerate all-zero output
        assert torch.allclose(cached, joint, atol=1e-5, rtol=0)
        # The cache really is what the suffix reads: corrupting it changes the velocity.
        cache.keys[-1].add_(1.0)
        assert (model.denoise_step(cache, x_t, t, state) - joint).abs().max() > 1e-3


def test_masked_camera_and_padding_do_not_leak():
    cfg = get_config("pi0-tiny")
    model = random_model(cfg, seed=4, std=0.1)
    images, image_masks, tokens, token_masks, state, x_t = _inputs(cfg, batch=1)
    t = torch.tensor([0.5])
    with torch.no_grad():
        v = model.joint_velocity(images, image_masks, tokens, token_masks, x_t, t, state)
        images2 = images.clone()
        images2[0, 2] = 255 - images2[0, 2]  # camera 2 is masked in sample 0
        tokens2 = tokens.clone()
        tokens2[0, 20:] = 7  # beyond the 12 real tokens
        v2 = model.joint_velocity(images2, image_masks, tokens2, token_masks, x_t, t, state)
    assert torch.equal(v, v2)


def test_adarms_zero_init_is_plain_rms_and_keeps_residual():
    norm = AdaRMSNorm(8, cond_dim=4)
    x = torch.randn(2, 3, 8)
    out, gate = norm(x, torch.randn(2, 4))
    assert torch.allclose(out, rms_normalize(x), atol=1e-7)
    assert torch.count_nonzero(gate) == 0
    # A fresh pi0.5 expert layer therefore leaves the residual stream unchanged.
    cfg = get_config("pi05-tiny")
    model = Pi0Model(cfg).eval()
    layer = model.expert.layers[0]
    h = torch.randn(1, 5, cfg.expert.width)
    cond = torch.randn(1, cfg.expert.width)
    normed, gate = layer.input_layernorm(h, cond)
    y = layer.mlp(normed)
    assert torch.equal(h + y * gate, h)


def test_time_embedding_hand_computed():
    emb = sincos_time_embedding(torch.tensor([0.001]), 4)[0]
    # periods: 4e-3 * 1000 ** [0, 1] = [0.004, 4.0]; the first angle is exactly pi/2.
    slow = 2 * math.pi * 0.001 / 4.0
    expected = [1.0, math.sin(slow), 0.0, math.cos(slow)]
    assert np.allclose(emb.numpy(), expected, atol=1e-5)
    assert emb.dtype == torch.float32


def test_sampling_reproducible_and_is_euler():
    cfg = get_config("pi05-tiny")
    model = random_model(cfg, seed=5, std=0.1)
    images, image_masks, tokens, token_masks, state, noise = _inputs(cfg, batch=1)
    a = model.sample_actions(images, image_masks, tokens, token_masks, state, noise=noise, num_steps=4)
    b = model.sample_actions(images, image_masks, tokens, token_masks, state, noise=noise, num_steps=4)
    assert torch.equal(a, b)
    assert euler_times(4) == [1.0, 0.75, 0.5, 0.25]
    with torch.no_grad():
        cache = model.embed_prefix(images, image_masks, tokens, token_masks)
        x = noise.clone()
        for t in [1.0, 0.75, 0.5, 0.25]:
            x = x - 0.25 * model.denoise_step(cache, x, torch.tensor([t]), state)
    assert torch.allclose(a, x, atol=1e-6)
    c = model.sample_actions(images, image_masks, tokens, token_masks, state, noise=noise + 0.1, num_steps=4)
    assert (a - c).abs().max() > 1e-3


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["pi0", "pi05"])
def test_full_size_parameter_counts_on_meta(name):
    with torch.device("meta"):
        model = Pi0Model(get_config(name))
    assert all(p.is_meta for p in model.parameters())
    pali = model.paligemma_with_expert.paligemma.model
    assert _count(pali.vision_tower) == 412_442_352
    assert _count(pali.multi_modal_projector) == 2_361_344
    assert _count(pali.language_model) == 2_508_531_712
    assert pali.language_model.embed_tokens.weight.numel() == 526_647_296
    norms = 18 * 2 + 1
    expected_expert = 311_464_960 + (norms * (3_148_800 - 1_024) if name == "pi05" else 0)
    assert _count(model.expert) == expected_expert


def test_siglip_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from vla_ros.model.siglip import SiglipVisionTower

    cfg = get_config("pi0-tiny").vision
    ours = SiglipVisionTower(cfg).eval()
    torch.manual_seed(0)
    for p in ours.parameters():
        p.data.normal_(0, 0.1)
    hf_cfg = transformers.SiglipVisionConfig(
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        vision_use_head=False,
    )
    theirs = transformers.SiglipVisionModel(hf_cfg).eval()
    state = ours.state_dict()
    if not any(k.startswith("vision_model.") for k in theirs.state_dict()):  # transformers >= 5 layout
        state = ours.vision_model.state_dict()
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not [k for k in missing if "head" not in k] and not unexpected
    pixels = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        ref = theirs(pixel_values=pixels).last_hidden_state
        got = ours(pixels)
    assert torch.allclose(got, ref, atol=1e-5)
