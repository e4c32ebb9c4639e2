"""The analytic FLOP count behind the bench's latency bound, against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from vla_ros.model import layers
from vla_ros.model.checkpoint import random_model
from vla_ros.model.config import get_config
from vla_ros.tools.roofline import inference_flops, matmul_peak_flops


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
