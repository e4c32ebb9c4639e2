"""SmolVLA on the optimised engine (engines/suffix_smolvla.py) against the reference engine and LeRobot.

Everything runs the LeRobot 0.6.1 fixture of test_lerobot_smolvla_parity.py
(a tiny SmolVLA and LeRobot's own outputs) through `Policy.from_checkpoint`:
policy.engine auto builds the optimised engine (PyTorch prefix with the state
token, static suffix), 'reference' the eager model.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from test_lerobot_smolvla_parity import _expected, FIXTURE, OBSERVATIONS
import torch

from vla_ros.engines.guidance import ModelGuidance
from vla_ros.policy import Policy, PolicyOptions
from vla_ros.types import RawObservation, RTCSettings

ENGINE_ATOL = 1e-5  # optimised vs reference, fp32
LEROBOT_ATOL = 1e-4  # against LeRobot's own actions
RTC_ATOL = 1e-4


@functools.lru_cache(maxsize=None)
def _policy(engine: str = "auto", **options) -> Policy:
    return Policy.from_checkpoint(FIXTURE, PolicyOptions(device="cpu", engine=engine, **options))


def _observation(policy: Policy, observation: str) -> RawObservation:
    f = _expected(observation)
    by_source = dict(zip(policy.spec.camera_sources, policy.spec.camera_keys))
    images = {by_source[name]: image for name, image in f["images"].items()}
    return RawObservation(images=images, state=f["state"].copy(), prompt=f["prompt"])


def _normalized(policy: Policy, observation: str, noise=None, guidance=None) -> np.ndarray:
    f = _expected(observation)
    inputs, _ = policy.preprocess(_observation(policy, observation), f["noise"] if noise is None else noise)
    policy.engine.encode_prefix(inputs)
    return policy.engine.denoise(inputs, guidance)


def _max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_auto_runs_the_optimised_engine():
    described = _policy().engine.describe()
    assert described["engine"] == "optimized" and described["prefix"] == "pytorch"
    assert described["suffix"] == "eager" and described["suffix_dtype"] == "float32"  # a tiny model: fp32
    assert _policy("reference").engine.name == "reference"
    assert _policy("pytorch").engine.name == "optimized"


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_optimised_matches_reference_and_lerobot(observation):
    f = _expected(observation)
    optimised, reference = _policy(), _policy("reference")
    a = _normalized(optimised, observation)
    b = _normalized(reference, observation)
    assert np.abs(b).max() > 0.5
    err = _max_err(a, b)
    assert err <= ENGINE_ATOL, f"optimised vs reference engine: max error {err:.2e}"
    err = _max_err(a[:, :14], f["normalized"])
    assert err <= LEROBOT_ATOL, f"normalized actions vs LeRobot: max error {err:.2e}"
    chunk = optimised.infer(_observation(optimised, observation), noise=f["noise"])
    err = _max_err(chunk.actions, f["actions"])
    assert err <= LEROBOT_ATOL, f"actions (robot units) vs LeRobot: max error {err:.2e}"


def test_buffers_carry_nothing_between_inferences():
    """A second observation, then the first again: the same actions as a fresh run (no stale rows)."""
    policy = _policy()
    first = _normalized(policy, "full")
    _normalized(policy, "missing")
    assert np.array_equal(_normalized(policy, "full"), first)


@pytest.mark.parametrize("mode", ["guided", "trained"])
def test_real_time_chunking_matches_reference(mode):
    optimised, reference = _policy(), _policy("reference")
    plain = _normalized(reference, "full")
    previous = plain[4:, :14] + 0.5  # a plan the unguided chunk does not follow
    settings = RTCSettings(mode=mode, execution_horizon=25, schedule="exp", max_guidance_weight=10.0)
    guidance = ModelGuidance.build(previous, 5, settings, 50, 32)
    a = _normalized(optimised, "full", guidance=guidance)
    b = _normalized(reference, "full", guidance=guidance)
    err = _max_err(a, b)
    assert err <= RTC_ATOL, f"RTC {mode}: optimised vs reference, max error {err:.2e}"
    assert _max_err(b, plain) > 0.1  # the guidance changed the chunk
    if mode == "trained":
        assert np.array_equal(a[:5, :14], previous[:5])


def test_num_samples_equal_single_runs():
    noise = np.random.default_rng(7).standard_normal((2, 50, 32)).astype(np.float32)
    batched = _normalized(_policy(num_samples=2), "missing", noise=noise)
    single = _policy()
    assert batched.shape == (2, 50, 32)
    for k in range(2):
        err = _max_err(batched[k], _normalized(single, "missing", noise=noise[k]))
        assert err <= ENGINE_ATOL, f"sample {k}: max error {err:.2e}"
    assert _max_err(batched[0], batched[1]) > 0.1


class _Counting(torch.nn.Module):
    """A Linear that counts the rows it projects."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.nn.functional.linear(x.to(self.layer.weight.dtype), self.layer.weight, self.layer.bias)


def test_cross_attention_kv_is_projected_once_per_inference():
    from vla_ros.engines.optimized import OptimizedEngine
    from vla_ros.engines.prefix_torch import TorchPrefixRuntime
    from vla_ros.engines.suffix_smolvla import SmolVLASuffixDenoiser
    from vla_ros.model.checkpoint import load_model

    model, cfg = load_model(FIXTURE)
    layers = model.expert.layers
    cross = [layers[i].self_attn for i in range(cfg.expert.depth) if not cfg.is_self_attention(i)]
    assert cross  # layers 1 and 3
    counters = []
    for attn in cross:
        attn.k_proj, attn.v_proj = _Counting(attn.k_proj), _Counting(attn.v_proj)
        counters += [attn.k_proj, attn.v_proj]
    steps = 10
    engine = OptimizedEngine(TorchPrefixRuntime(model), SmolVLASuffixDenoiser(model, steps), "eager")
    policy = _policy()
    f = _expected("full")
    inputs, _ = policy.preprocess(_observation(policy, "full"), f["noise"])
    engine.encode_prefix(inputs)
    for inference in (1, 2):
        actions = engine.denoise(inputs)
        assert [c.calls for c in counters] == [inference] * len(counters)  # not once per Euler step
    assert _max_err(actions, _normalized(_policy("reference"), "full")) <= ENGINE_ATOL
    # The model's own denoise_step (the reference) projects them at every step.
    reference = _policy("reference")
    with torch.no_grad():
        for counter in counters:
            counter.calls = 0
        reference.engine.encode_prefix(inputs)
        cache = reference.engine._cache
        x = torch.from_numpy(f["noise"])[None]
        for _ in range(steps):
            model.denoise_step(cache, x, torch.ones(1))
    assert [c.calls for c in counters] == [steps] * len(counters)


def test_bf16_packed_engine_within_stated_tolerance():
    """Mixed precision (the model's split) with oneDNN-packed layers, against the fp32 reference."""
    from vla_ros.engines.cpu_packed import packing_available

    bf16 = _policy(precision="bf16")
    described = bf16.engine.describe()
    assert described["suffix_dtype"] == "bfloat16"
    assert described["packed_weights"] == packing_available()
    a = _normalized(bf16, "full")
    b = _normalized(_policy("reference"), "full")
    # bf16 keeps ~3 significant digits per matmul, over 4 VLM + 4 expert layers x 10 steps
    # (measured: 0.5% of the largest action).
    scale = np.abs(b).max()
    err = _max_err(a, b)
    assert err <= 0.01 * scale, f"bf16 vs fp32: max error {err:.2e}"
    plain = _normalized(_policy(precision="bf16", pack_weights=False), "full")
    reference_bf16 = _normalized(_policy("reference", precision="bf16"), "full")
    # The same mixed precision as the model; rounding differs only in the order of the sums (measured
    # 0.3%), and packed, in the GEMMs' fused post-ops (SiLU, gate product, residual adds; 0.35%).
    assert _max_err(plain, reference_bf16) <= 0.006 * scale
    assert _max_err(a, reference_bf16) <= 0.01 * scale


def test_no_exported_prefix_nor_compiled_suffix_yet():
    from vla_ros.errors import ConfigError

    with pytest.raises(ConfigError, match="policy.engine"):
        Policy.from_checkpoint(FIXTURE, PolicyOptions(device="cpu", engine="onnx"))
    with pytest.raises(ConfigError, match="policy.suffix"):
        Policy.from_checkpoint(FIXTURE, PolicyOptions(device="cpu", suffix="compiled"))


def test_make_tiny_writes_a_lerobot_smolvla_directory(tmp_path):
    """`vla-ros make-tiny --config smolvla-tiny`: LeRobot's files and keys, and Policy.from_checkpoint."""
    import json

    from safetensors import safe_open

    from vla_ros.errors import ConfigError
    from vla_ros.tools import cli

    out = tmp_path / "smolvla"
    assert cli.main(["make-tiny", "--config", "smolvla-tiny", "--out", str(out)]) == 0
    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json",
                 "smolvlm/config.json", "smolvlm/tokenizer.json", "smolvlm/tokenizer_config.json"):
        assert (out / name).is_file(), name
    # LeRobot's config fields in LeRobot's order, and its checkpoint keys and shapes (the fixture's).
    assert list(json.loads((out / "config.json").read_text())) == list(
        json.loads((FIXTURE / "config.json").read_text()))

    def shapes(path):
        with safe_open(str(path), "pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}

    assert shapes(out / "model.safetensors") == shapes(FIXTURE / "model.safetensors")
    policy = Policy.from_checkpoint(out, PolicyOptions(device="cpu"))
    spec = policy.spec
    assert (spec.variant, spec.config_name, spec.provenance.source) == ("smolvla", "smolvla-tiny", "lerobot")
    assert spec.untrained and spec.image_resize == "smolvla" and spec.state_dim == 14
    assert policy.tokenizer.source == out / "smolvlm" / "tokenizer.json"
    assert policy.engine.name == "optimized"
    reference = Policy.from_checkpoint(out, PolicyOptions(device="cpu", engine="reference"))
    rng = np.random.default_rng(0)
    images = {key: rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for key in spec.camera_keys}
    obs = RawObservation(images, rng.normal(size=14).astype(np.float32), "pick up the red block")
    noise = rng.standard_normal((50, 32)).astype(np.float32)
    a, b = policy.infer(obs, noise=noise).actions, reference.infer(obs, noise=noise).actions
    assert a.shape == (50, 14) and _max_err(a, b) <= ENGINE_ATOL * max(1.0, np.abs(b).max())
    with pytest.raises(ConfigError, match="--layout"):
        from vla_ros.tools.make_tiny import make_tiny_checkpoint

        make_tiny_checkpoint(tmp_path / "openpi", "smolvla-tiny", layout="openpi")
