"""The analytic FLOP count behind the bench's latency bound, against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from vla_ros.model import layers
from vla_ros.model.checkpoint import random_model
from vla_ros.model.config import get_config
from vla_ros.tools.roofline import inference_flops, matmul_peak_flops, memory_bandwidth


@pytest.mark.parametrize("name", ["pi0-tiny", "pi05-tiny"])
def test_flop_count_matches_torch_flop_counter(name, monkeypatch):
    # The explicit attention path: torch's counter does not see inside the CPU SDPA kernel.
    monkeypatch.setattr(layers, "use_fused_attention", lambda q: False)
    cfg = get_config(name)
    model = random_model(cfg)
    length = cfg.max_token_len
    images = torch.randint(0, 256, (1, 3, 224, 224, 3), dtype=torch.uint8)
    inputs = (
        images[:, :2],  # two cameras present, as the compacting prefix would encode them
        torch.ones(1, 2, dtype=torch.bool),
        torch.randint(1, cfg.vocab_size, (1, 11)),  # 11 real prompt tokens
        torch.ones(1, 11, dtype=torch.bool),
    )
    with torch.no_grad(), FlopCounterMode(display=False) as prefix_counter:
        model.embed_prefix(*inputs)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.sample_actions(*inputs, torch.randn(1, 32), noise=torch.randn(1, 50, 32))
    expected = inference_flops(cfg, cameras=2, prompt_tokens=11)
    assert length > 11
    assert expected["prefix"] == prefix_counter.get_total_flops()
    # The suffix count leaves out the one-row products: the state projection and pi0.5's time
    # conditioning (its MLP and the AdaRMS modulations), which the static suffix precomputes.
    suffix = counter.get_total_flops() - prefix_counter.get_total_flops()
    assert abs(expected["suffix"] - suffix) <= 2e-3 * suffix


def test_full_size_arithmetic():
    flops = inference_flops(get_config("pi0"), cameras=3, prompt_tokens=20)
    assert 3.6e12 < flops["prefix"] < 3.8e12 and 0.3e12 < flops["suffix"] < 0.45e12


def test_matmul_peak_is_a_rate():
    fp32 = matmul_peak_flops(torch.float32, "cpu", packed=False, seconds=0.05)
    assert 1e9 < fp32 < 1e14  # FLOP/s, not seconds or GFLOP
    assert 1e8 < memory_bandwidth("cpu", megabytes=32, seconds=0.05) < 1e13  # bytes/s


def test_pi0fast_flop_count_matches_torch_flop_counter(monkeypatch):
    """Prefix (last layer past its K/V, LM head on the last token) and each decoded token, exactly."""
    from vla_ros.tools.roofline import decode_step_flops

    monkeypatch.setattr(layers, "use_fused_attention", lambda q: False)
    from vla_ros.engines.decode import ConcatCacheDecoder

    cfg = get_config("pi0fast-tiny")
    model = random_model(cfg)
    images = torch.randint(0, 256, (1, 3, 224, 224, 3), dtype=torch.uint8)
    inputs = (
        images[:, :2],
        torch.ones(1, 2, dtype=torch.bool),
        torch.randint(1, cfg.vocab_size, (1, 11)),
        torch.ones(1, 11, dtype=torch.bool),
    )
    tokens = 6
    with torch.no_grad(), FlopCounterMode(display=False) as prefix_counter:
        model.prefix(*inputs)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        cache, first = model.prefix(*inputs)
        ids = ConcatCacheDecoder(model, tokens).generate(cache, first).ids
    assert ids.shape == (tokens,)  # the first from the prefix's logits, then 5 decode steps
    expected = inference_flops(cfg, cameras=2, prompt_tokens=11, decode_tokens=tokens)
    assert expected["suffix"] == 0 and expected["total"] == expected["prefix"] + expected["decode"]
    assert expected["prefix"] == prefix_counter.get_total_flops()
    assert expected["decode"] == counter.get_total_flops() - prefix_counter.get_total_flops()
    # One step's keys: the prefix, the tokens before it and itself; the cache grows by one per step.
    p = 2 * cfg.vision.num_tokens + 11
    assert expected["decode"] == sum(decode_step_flops(cfg, p + i) for i in range(1, tokens))
    pi0 = inference_flops(get_config("pi0-tiny"), cameras=2, prompt_tokens=11, decode_tokens=9)
    assert pi0["decode"] == 0


def test_decode_step_reads_the_language_model_and_head():
    from vla_ros.tools.roofline import decode_step_bytes, decode_weight_count

    cfg = get_config("pi0fast-tiny")
    model = random_model(cfg)
    lm = model.language_model
    read = [*lm.layers.parameters(), *lm.norm.parameters(), model.lm_head.weight]
    assert decode_weight_count(cfg) == sum(p.numel() for p in read)
    g = cfg.prefix
    cache_row = g.depth * 2 * g.num_kv_heads * g.head_dim  # K and V of one token, every layer
    assert decode_step_bytes(cfg, 11, 2) - decode_step_bytes(cfg, 10, 2) == 2 * cache_row


def test_full_size_pi0fast_arithmetic():
    from vla_ros.tools.roofline import decode_step_flops

    cfg = get_config("pi0fast")
    # Gemma 2B: ~1.98 B layer weights plus the 0.53 B-row LM head, two FLOPs each, plus attention.
    # The prefix runs its last layer past the K/V for the last prompt token only (prefix_parts).
    assert 5.0e9 < decode_step_flops(cfg, 1000) < 5.3e9
    flops = inference_flops(cfg, cameras=3, prompt_tokens=60, decode_tokens=64)
    assert 3.7e12 < flops["prefix"] < 4.0e12 and 0.31e12 < flops["decode"] < 0.34e12


def test_smolvla_flop_count_matches_torch_flop_counter(monkeypatch):
    """Prefix (state token included, last layer only K/V) and the static suffix, exactly.

    The suffix is counted as engines/suffix_smolvla.py runs it: the cross-attention K/V once per
    inference over the static prefix buffer, then per step the expert over that buffer.
    """
    from vla_ros.engines.prefix_torch import TorchPrefixRuntime
    from vla_ros.engines.suffix_smolvla import SmolVLASuffixDenoiser

    monkeypatch.setattr(layers, "use_fused_attention", lambda q: False)
    cfg = get_config("smolvla-tiny")
    model = random_model(cfg)
    images = torch.randint(0, 256, (1, 3, 512, 512, 3), dtype=torch.uint8)
    tokens = torch.randint(1, cfg.vocab_size, (1, cfg.max_token_len))
    token_masks = torch.zeros(1, cfg.max_token_len, dtype=torch.bool)
    token_masks[0, :11] = True
    image_masks = torch.tensor([[True, False, True]])
    state = torch.randn(1, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as prefix_counter:
        # What the compacting prefix runtime encodes: two cameras, 11 prompt tokens, the state.
        present = [0, 2]
        model.embed_prefix(images[:, present], image_masks[:, present], tokens[:, :11], token_masks[:, :11],
                           state)
    steps = 3
    denoiser = SmolVLASuffixDenoiser(model, steps)
    TorchPrefixRuntime(model).run(images.numpy(), image_masks.numpy(), tokens.numpy(), token_masks.numpy(),
                                  denoiser.prefix_keys, denoiser.prefix_values, denoiser.prefix_pad,
                                  state=state.numpy())
    with torch.no_grad(), FlopCounterMode(display=False) as suffix_counter:
        denoiser()
    expected = inference_flops(cfg, cameras=2, prompt_tokens=11, num_steps=steps)
    assert expected["prefix"] == prefix_counter.get_total_flops()
    assert expected["suffix"] == suffix_counter.get_total_flops()
    assert expected["total"] == expected["prefix"] + expected["suffix"] and expected["decode"] == 0


def test_full_size_smolvla_arithmetic():
    flops = inference_flops(get_config("smolvla"), cameras=3, prompt_tokens=20)
    # SigLIP at 512 px (1024 patches, 12 layers of 768) dominates: ~0.21 TFLOP per camera.
    assert 0.66e12 < flops["prefix"] < 0.72e12 and 0.09e12 < flops["suffix"] < 0.12e12
