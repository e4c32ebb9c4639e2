"""oneDNN-packed bf16 layers: each fused kernel and the packed model against plain bf16 torch."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vla_ros.engines.cpu_packed import is_packed, pack_model, PackedLinear, packing_available
from vla_ros.model.checkpoint import random_model
from vla_ros.model.config import get_config
from vla_ros.model.layers import linear
from vla_ros.policy import Policy, PolicyOptions
from vla_ros.types import RawObservation

pytestmark = pytest.mark.skipif(not packing_available(), reason="torch built without oneDNN packed linear")


def _bf16(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)


def _close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """Max abs error relative to the reference's range (bf16 outputs round at ~4e-3)."""
    err = (got.float() - want.float()).abs().max() / want.float().abs().max()
    assert got.shape == want.shape
    assert err <= rel, f"relative error {err:.2e} > {rel:.0e}"


def test_packed_linear_products_match_plain_bf16():
    x, weight, bias = _bf16(1, 37, 64, seed=1), _bf16(96, 64, seed=2, scale=0.1), _bf16(96, seed=3)
    layer = torch.nn.Linear(64, 96).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    packed = PackedLinear.of(layer, rows=51)
    plain = F.linear(x, weight, bias)
    _close(packed(x), plain, 1e-2)
    _close(linear(packed, x.float()), plain, 1e-2)  # casts its input like the plain layer
    _close(packed(x, "gelu", "tanh"), F.gelu(plain, approximate="tanh"), 1e-2)
    other = _bf16(1, 37, 96, seed=4)
    _close(packed.times(x, other), plain * other, 1e-2)
    # A row count other than the packing hint (the compacted prefix varies per prompt).
    _close(packed(x[:, :5]), plain[:, :5], 1e-2)


def test_packed_concatenation_splits_back_into_the_parts():
    layers = [torch.nn.Linear(32, n, bias=False).to(torch.bfloat16) for n in (64, 16, 16)]
    x = _bf16(1, 9, 32, seed=5)
    q, k, v = PackedLinear.of(*layers, rows=9)(x).split([64, 16, 16], dim=-1)
    for got, layer in zip((q, k, v), layers):
        _close(got, F.linear(x, layer.weight), 1e-2)


def test_pack_model_shares_what_it_does_not_pack():
    model = random_model(get_config("pi0-tiny"), seed=1, dtype=torch.bfloat16)
    packed = pack_model(model)
    assert is_packed(packed) and not is_packed(model)  # the original is left as it was
    assert packed.action_in_proj.weight is model.action_in_proj.weight  # fp32 heads are shared
    assert packed.language_model.embed_tokens.weight is model.language_model.embed_tokens.weight
    norm = model.language_model.layers[0].input_layernorm.weight
    assert packed.language_model.layers[0].input_layernorm.weight is norm
    # Every bf16 matmul of the prefix and the expert was replaced.
    stacks = [packed.language_model, packed.expert]
    plain = [m for s in stacks for m in s.modules() if isinstance(m, torch.nn.Linear)]
    assert plain == []
    fp32 = random_model(get_config("pi0-tiny"), seed=1)
    assert not is_packed(pack_model(fp32))  # nothing to pack in an fp32 model


def test_pack_model_in_place_drops_the_plain_weights():
    model = random_model(get_config("pi0-tiny"), seed=1, dtype=torch.bfloat16)
    gate = model.language_model.layers[0].mlp.gate_proj.weight
    references = sys.getrefcount(gate)
    assert pack_model(model, inplace=True) is model and is_packed(model)
    assert sys.getrefcount(gate) == references - 1  # only this test still holds the plain weight


@pytest.mark.parametrize("name", ["pi0-tiny", "pi05-tiny"])
def test_packed_model_samples_the_plain_bf16_actions(name):
    cfg = get_config(name)
    model = random_model(cfg, seed=2, std=0.1, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, 3, 224, 224, 3), generator=g, dtype=torch.uint8)
    image_masks = torch.tensor([[True, True, False]])
    tokens = torch.randint(1, cfg.vocab_size, (1, cfg.max_token_len), generator=g)
    token_masks = torch.arange(cfg.max_token_len)[None] < 9
    state, noise = torch.randn(1, 32, generator=g), torch.randn(1, 50, 32, generator=g)
    args = (images, image_masks, tokens, token_masks, state)
    plain = model.sample_actions(*args, noise=noise)
    packed = pack_model(model).sample_actions(*args, noise=noise)
    fp32 = random_model(cfg, seed=2, std=0.1).sample_actions(*args, noise=noise)
    # Same bf16 numerics up to accumulation order and fused-op rounding.
    _close(packed, plain, 5e-3)
    _close(packed, fp32, 2e-2)


def test_policy_packs_only_when_asked(tiny_checkpoint):
    rng = np.random.default_rng(0)
    obs = RawObservation(
        images={"base_0_rgb": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)},
        state=rng.normal(size=14).astype(np.float32),
        prompt="stack the blocks",
    )
    noise = rng.standard_normal((50, 32)).astype(np.float32)

    def actions(**options):
        policy = Policy.from_checkpoint(tiny_checkpoint, PolicyOptions(device="cpu", **options))
        return policy.engine.describe()["packed_weights"], policy.infer(obs, noise=noise).actions

    (packed, a), (plain, b) = actions(precision="bf16"), actions(precision="bf16", pack_weights=False)
    assert packed and not plain
    assert np.abs(a - b).max() <= 5e-3 * np.abs(b).max()
    fp32, _ = actions(precision="fp32")
    assert not fp32  # packing is a bf16 layout; fp32 runs plain


def test_compiled_suffix_keeps_the_expert_traceable(tiny_checkpoint):
    from vla_ros.engines.factory import build_engine

    engine, _ = build_engine(
        tiny_checkpoint, PolicyOptions(device="cpu", precision="bf16", suffix="compiled")
    )
    model = engine.denoiser.model
    assert is_packed(model.language_model)  # the prefix still runs packed
    assert not is_packed(model.expert)  # dynamo can't trace oneDNN's opaque packed weights
