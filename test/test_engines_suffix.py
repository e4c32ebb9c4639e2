"""The optimised engines against the reference: static suffix, composed pipeline, bf16, CUDA graph."""

import numpy as np
import pytest
import torch

from vla_ros.engines.factory import build_engine, cpu_has_native_bf16, resolve_dtype
from vla_ros.engines.optimized import OptimizedEngine
from vla_ros.engines.prefix_torch import TorchPrefixRuntime
from vla_ros.engines.suffix import StaticSuffixDenoiser
from vla_ros.model.checkpoint import random_model
from vla_ros.model.config import get_config
from vla_ros.policy import Policy, PolicyOptions
from vla_ros.types import RawObservation


def _model_inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (1, 3, 224, 224, 3), generator=g, dtype=torch.uint8)
    image_masks = torch.tensor([[True, False, True]])
    tokens = torch.randint(1, cfg.vocab_size, (1, cfg.max_token_len), generator=g)
    token_masks = torch.zeros(1, cfg.max_token_len, dtype=torch.bool)
    token_masks[0, :11] = True
    return (
        images,
        image_masks,
        tokens,
        token_masks,
        torch.randn(1, 32, generator=g),
        torch.randn(1, 50, 32, generator=g),
    )


@pytest.mark.parametrize("name", ["pi0-tiny", "pi05-tiny"])
def test_static_suffix_matches_reference_sampling(name):
    cfg = get_config(name)
    model = random_model(cfg, seed=2, std=0.1)
    images, image_masks, tokens, token_masks, state, noise = _model_inputs(cfg)
    reference = model.sample_actions(
        images, image_masks, tokens, token_masks, state, noise=noise, num_steps=10
    )
    denoiser = StaticSuffixDenoiser(model, num_steps=10)
    TorchPrefixRuntime(model).run(
        images.numpy(),
        image_masks.numpy(),
        tokens.numpy(),
        token_masks.numpy(),
        denoiser.prefix_keys,
        denoiser.prefix_values,
        denoiser.prefix_pad,
    )
    denoiser.noise.copy_(noise)
    denoiser.state.copy_(state)
    out = denoiser()
    assert out.data_ptr() == denoiser.actions.data_ptr()  # the result lands in the static output buffer
    assert reference.abs().max() > 0.5
    assert torch.allclose(out, reference, atol=1e-5, rtol=0)
    # Second inference with new noise in the same buffers: no state leaks between calls.
    denoiser.noise.copy_(noise * 0.5)
    again = model.sample_actions(
        images, image_masks, tokens, token_masks, state, noise=noise * 0.5, num_steps=10
    )
    assert torch.allclose(denoiser(), again, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_layers_prefix_kv_is_one_aligned_block(dtype):
    """What the ONNX / TensorRT prefix runtimes bind by address: dense, 256-byte aligned, per layer."""
    from vla_ros.engines.suffix import aligned_rows, KV_ALIGN_BYTES

    element = torch.empty((), dtype=dtype).element_size()
    for name in ("pi0-tiny", "pi05-tiny", "pi0-mid", "pi05-mid", "pi0", "pi05"):
        e = get_config(name).expert
        rows = get_config(name).prefix_len + get_config(name).suffix_len
        stored = aligned_rows(rows, e.num_kv_heads, e.head_dim, element)
        assert rows <= stored < rows + KV_ALIGN_BYTES
        assert (e.num_kv_heads * stored * e.head_dim * element) % KV_ALIGN_BYTES == 0, name
    model = random_model(get_config("pi0-tiny"), seed=0, dtype=dtype)
    denoiser = StaticSuffixDenoiser(model, num_steps=2)
    rows = model.cfg.prefix_len + model.cfg.suffix_len
    assert denoiser.keys.shape[3] == rows and denoiser.values.shape[3] == rows  # padding is never read
    for layer in range(denoiser.keys.shape[0]):
        for whole, region in ((denoiser.keys, denoiser.prefix_keys[layer]),
                              (denoiser.values, denoiser.prefix_values[layer])):
            # Layers sit whole multiples of 256 bytes apart (the base is 512-byte aligned on CUDA).
            assert region.is_contiguous() and (region.data_ptr() - whole.data_ptr()) % KV_ALIGN_BYTES == 0
        assert denoiser.prefix_keys[layer].data_ptr() == denoiser.keys[layer].data_ptr()


def test_step_count_is_configurable():
    cfg = get_config("pi05-tiny")
    model = random_model(cfg, seed=2, std=0.1)
    images, image_masks, tokens, token_masks, state, noise = _model_inputs(cfg, seed=1)
    reference = model.sample_actions(
        images, image_masks, tokens, token_masks, state, noise=noise, num_steps=3
    )
    denoiser = StaticSuffixDenoiser(model, num_steps=3)
    assert denoiser.mod_scale.shape[0] == 3  # modulation precomputed per step
    cache = model.embed_prefix(images, image_masks, tokens, token_masks)
    denoiser.prefix_keys.copy_(cache.keys)
    denoiser.prefix_values.copy_(cache.values)
    denoiser.prefix_pad.copy_(cache.pad_mask)
    denoiser.noise.copy_(noise)
    assert torch.allclose(denoiser(), reference, atol=1e-5, rtol=0)


def _observation(seed=0):
    rng = np.random.default_rng(seed)
    return RawObservation(
        images={
            "base_0_rgb": rng.integers(0, 256, (200, 300, 3), dtype=np.uint8),
            "right_wrist_0_rgb": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        },
        state=rng.normal(size=14).astype(np.float32),
        prompt="stack the blocks",
    )


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_pi05_checkpoint"])
def test_optimised_pipeline_matches_reference_policy_fp32(fixture, request):
    ckpt = request.getfixturevalue(fixture)
    noise = np.random.default_rng(3).standard_normal((50, 32)).astype(np.float32)
    reference = Policy.from_checkpoint(
        ckpt, PolicyOptions(device="cpu", engine="reference", precision="fp32")
    )
    optimised = Policy.from_checkpoint(
        ckpt, PolicyOptions(device="cpu", engine="pytorch", suffix="eager", precision="fp32")
    )
    assert isinstance(optimised.engine, OptimizedEngine)
    a = reference.infer(_observation(), noise=noise).actions
    b = optimised.infer(_observation(), noise=noise).actions
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)
    assert set(optimised.infer(_observation(), noise=noise).timings) == {
        "preprocess",
        "prefix",
        "suffix",
        "postprocess",
        "total",
    }


def test_bf16_matches_fp32_within_stated_tolerance(tiny_checkpoint):
    # bf16 keeps ~3 significant digits per matmul; over 2 layers x 10 steps the actions
    # stay within 2e-2 of the fp32 reference relative to their range.
    noise = np.random.default_rng(4).standard_normal((50, 32)).astype(np.float32)
    fp32 = Policy.from_checkpoint(
        tiny_checkpoint, PolicyOptions(device="cpu", engine="reference", precision="fp32")
    )
    bf16 = Policy.from_checkpoint(tiny_checkpoint, PolicyOptions(device="cpu", precision="bf16"))
    assert bf16.engine.denoiser.dtype == torch.bfloat16
    a = fp32.infer(_observation(), noise=noise).actions
    b = bf16.infer(_observation(), noise=noise).actions
    rel = np.abs(a - b).max() / np.abs(a).max()
    assert rel <= 2e-2
    assert rel > 0  # really ran in another precision


def test_auto_precision_follows_cpu_features():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, reference=True) == torch.float32
    native = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", cpu) == native
    assert resolve_dtype("auto", cpu, cfg=get_config("pi0-mid")) == native
    # a toy model is dispatch-bound: bf16 casts would cost more than they save
    assert resolve_dtype("auto", cpu, cfg=get_config("pi0-tiny")) == torch.float32
    assert resolve_dtype("fp32", cpu) == torch.float32


def test_cuda_graph_request_falls_back_on_cpu(tiny_checkpoint, caplog):
    engine, _ = build_engine(
        tiny_checkpoint, PolicyOptions(device="cpu", suffix="cuda_graph", precision="fp32")
    )
    assert engine.suffix_mode == "eager"
    assert "needs CUDA" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["pi0-tiny", "pi05-tiny"])
def test_cuda_graph_replay_equals_eager(name):
    from vla_ros.engines.suffix_cuda_graph import CudaGraphSuffix

    cfg = get_config(name)
    model = random_model(cfg, seed=2, std=0.1).cuda()
    images, image_masks, tokens, token_masks, state, noise = (t.cuda() for t in _model_inputs(cfg))
    denoiser = StaticSuffixDenoiser(model, num_steps=10)
    cache = model.embed_prefix(images, image_masks, tokens, token_masks)
    for buf, value in (
        (denoiser.prefix_keys, cache.keys),
        (denoiser.prefix_values, cache.values),
        (denoiser.prefix_pad, cache.pad_mask),
        (denoiser.noise, noise),
        (denoiser.state, state),
    ):
        buf.copy_(value)
    eager = denoiser().clone()
    graph = CudaGraphSuffix(denoiser)
    assert torch.allclose(graph.run(), eager, atol=1e-5, rtol=0)
    denoiser.noise.copy_(noise * 0.3)  # a new sample written before replay
    expected = denoiser().clone()
    denoiser.noise.copy_(noise * 0.3)
    assert torch.allclose(graph.run(), expected, atol=1e-5, rtol=0)


def test_compacted_prefix_equals_full_prefix_after_other_inputs():
    # The compacted runtime skips masked cameras and padding; slots it leaves untouched
    # hold an earlier observation's K/V, which must not leak into the next result.
    cfg = get_config("pi0-tiny")
    model = random_model(cfg, seed=6, std=0.1)
    images, image_masks, tokens, token_masks, state, noise = _model_inputs(cfg, seed=2)
    denoiser = StaticSuffixDenoiser(model, num_steps=10)
    runtime = TorchPrefixRuntime(model, compact=True)

    def run(masks):
        runtime.run(images.numpy(), masks.numpy(), tokens.numpy(), token_masks.numpy(),
                    denoiser.prefix_keys, denoiser.prefix_values, denoiser.prefix_pad)
        denoiser.noise.copy_(noise)
        denoiser.state.copy_(state)
        return denoiser().clone()

    run(torch.tensor([[True, True, True]]))
    masked = torch.tensor([[False, True, False]])
    got = run(masked)
    expected = model.sample_actions(images, masked, tokens, token_masks, state, noise=noise, num_steps=10)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    full = TorchPrefixRuntime(model, compact=False)
    full.run(images.numpy(), masked.numpy(), tokens.numpy(), token_masks.numpy(),
             denoiser.prefix_keys, denoiser.prefix_values, denoiser.prefix_pad)
    assert torch.equal(denoiser.prefix_pad, torch.cat([masked.repeat_interleave(256, 1), token_masks], 1))


def test_compiled_suffix_matches_eager(tiny_checkpoint):
    # torch.compile of the static-buffer module (the CPU's opt-in `compiled` mode); the
    # first compile takes ~50 s on two cores, so the test uses one engine and one call.
    noise = np.random.default_rng(8).standard_normal((50, 32)).astype(np.float32)
    eager = Policy.from_checkpoint(
        tiny_checkpoint, PolicyOptions(device="cpu", suffix="eager", precision="fp32")
    )
    compiled = Policy.from_checkpoint(
        tiny_checkpoint, PolicyOptions(device="cpu", suffix="compiled", precision="fp32")
    )
    assert compiled.engine.suffix_mode == "compiled"
    a = eager.infer(_observation(), noise=noise).actions
    b = compiled.infer(_observation(), noise=noise).actions
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
