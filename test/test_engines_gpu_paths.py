"""The GPU paths: K/V hand-over by address, one dedicated CUDA stream, TensorRT flags and device checks.

The logic is tested on the CPU (fake TensorRT modules and CUDA queries where a GPU
would answer); the end-to-end GPU tests skip without CUDA and run under
scripts/gpu_check.sh, which also gets a CPU test here (it parses, and without
CUDA it lists its checks and exits 0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from vla_ros.engines import prefix_tensorrt
from vla_ros.engines.cuda_stream import dedicated_stream, running_on, stream_handle
from vla_ros.engines.prefix_graph import output_regions, output_targets
from vla_ros.errors import EngineError

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "scripts" / "gpu_check.sh"
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


# -- K/V hand-over --------------------------------------------------------------------------------


def _outputs(layers, kv_heads, prefix, head_dim, dtype=torch.float32, stacked=False):
    """A runtime's own output tensors, per-layer or (older exports) stacked."""
    if stacked:
        shape = (layers, 1, kv_heads, prefix, head_dim)
        own = {"keys": torch.empty(shape, dtype=dtype), "values": torch.empty(shape, dtype=dtype)}
    else:
        shape = (1, kv_heads, prefix, head_dim)
        own = {f"{kind}_{i}": torch.empty(shape, dtype=dtype)
               for kind in ("keys", "values") for i in range(layers)}
    own["pad_mask"] = torch.empty(1, prefix, dtype=torch.bool)
    return own


def _aligned_zeros(shape, dtype):
    """Zeros starting on a 256-byte boundary (CPU tensors are only 64-byte aligned; CUDA ones 512)."""
    numel, element = int(np.prod(shape)), torch.empty((), dtype=dtype).element_size()
    flat = torch.zeros(numel + 256 // element, dtype=dtype)
    offset = (-flat.data_ptr() % 256) // element
    return flat[offset:offset + numel].view(shape)


def _suffix_buffers(layers, kv_heads, prefix, suffix, head_dim, dtype=torch.float32):
    """The suffix's (L, 1, KV, P + S, hd) buffers and their prefix views, as StaticSuffixDenoiser has them."""
    keys = _aligned_zeros((layers, 1, kv_heads, prefix + suffix, head_dim), dtype)
    values = _aligned_zeros(keys.shape, dtype)
    pad = _aligned_zeros((1, prefix), torch.bool)
    return keys, values, keys[:, :, :, :prefix], values[:, :, :, :prefix], pad


def _ids(pairs):
    """(target, own) copy pairs by identity (tensors compare element-wise)."""
    return [(id(target), id(mine)) for target, mine in pairs]


def test_per_layer_outputs_are_bound_to_the_suffix_buffers_by_address():
    layers, prefix, suffix, head_dim = 3, 5, 2, 4
    keys, values, prefix_keys, prefix_values, pad = _suffix_buffers(layers, 1, prefix, suffix, head_dim)
    assert not prefix_keys.is_contiguous()  # the whole prefix view is not one block ...
    own = _outputs(layers, 1, prefix, head_dim)
    bound, staged = output_targets(own, output_regions(own, prefix_keys, prefix_values, pad))
    assert staged == []  # ... but every layer's part is: nothing is copied
    for layer in range(layers):
        # The runtime writes where the suffix's attention of that layer reads (keys[layer] starts there).
        assert bound[f"keys_{layer}"].data_ptr() == keys[layer].data_ptr()
        assert bound[f"values_{layer}"].data_ptr() == values[layer].data_ptr()
    assert bound["pad_mask"] is pad


def test_tensorrt_binds_only_256_byte_aligned_regions():
    from vla_ros.engines.prefix_graph import staging_reason
    from vla_ros.engines.prefix_tensorrt import TENSOR_ALIGNMENT

    # 7 rows of 4 fp32: layer 1 starts 112 bytes in, not on a 256-byte boundary.
    _, _, prefix_keys, prefix_values, pad = _suffix_buffers(2, 1, 5, 2, 4)
    own = _outputs(2, 1, 5, 4)
    regions = output_regions(own, prefix_keys, prefix_values, pad)
    assert regions["keys_1"].data_ptr() % TENSOR_ALIGNMENT != 0
    bound, staged = output_targets(own, regions, TENSOR_ALIGNMENT)
    assert bound["keys_0"] is regions["keys_0"] and bound["keys_1"] is own["keys_1"]
    assert _ids(staged) == _ids([(regions[n], own[n]) for n in ("keys_1", "values_1")])
    assert "256 bytes" in staging_reason(*staged[0], TENSOR_ALIGNMENT)
    assert output_targets(own, regions)[1] == []  # onnxruntime has no such requirement


def test_outputs_that_cannot_be_bound_are_copied():
    layers, prefix, suffix, head_dim = 2, 5, 2, 4
    kv_names = [f"{kind}_{i}" for kind in ("keys", "values") for i in range(layers)]

    def handover(kv_heads, dtype=torch.float32, stacked=False):
        buffers = _suffix_buffers(layers, kv_heads, prefix, suffix, head_dim, dtype)
        _, _, prefix_keys, prefix_values, pad = buffers
        own = _outputs(layers, kv_heads, prefix, head_dim, stacked=stacked)
        regions = output_regions(own, prefix_keys, prefix_values, pad)
        bound, staged = output_targets(own, regions)
        return own, regions, bound, staged

    # Two KV heads: a layer's prefix rows are two separate blocks, so each output is written
    # into the runtime's own tensor and copied into its region once.
    own, regions, bound, staged = handover(kv_heads=2)
    assert _ids(staged) == _ids([(regions[n], own[n]) for n in kv_names])
    assert all(bound[n] is own[n] for n in kv_names) and bound["pad_mask"] is regions["pad_mask"]
    # Another dtype (a bf16 suffix behind an fp32 graph): a cast copy each.
    own, regions, bound, staged = handover(kv_heads=1, dtype=torch.bfloat16)
    assert [id(mine) for _, mine in staged] == [id(own[n]) for n in kv_names]
    # A stacked graph from an older export still runs: one copy of all layers per output.
    own, regions, bound, staged = handover(kv_heads=1, stacked=True)
    assert _ids(staged) == _ids([(regions[n], own[n]) for n in ("keys", "values")])
    # A graph for another depth is refused with the remedy.
    _, _, prefix_keys, prefix_values, pad = _suffix_buffers(layers, 1, prefix, suffix, head_dim)
    with pytest.raises(EngineError, match="re-export"):
        output_regions(_outputs(layers + 1, 1, prefix, head_dim), prefix_keys, prefix_values, pad)


# -- TensorRT builder flags and the engine's device ---------------------------------------------


def _fake_tensorrt(version: str, strongly_typed: bool = True, bf16: bool = True):
    network = {"EXPLICIT_BATCH": 0}
    if strongly_typed:
        network["STRONGLY_TYPED"] = 1
    builder = {"FP16": "FP16"}
    if bf16:
        builder["BF16"] = "BF16"
    return types.SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(**network),
        BuilderFlag=types.SimpleNamespace(**builder),
    )


EXPLICIT_BATCH, STRONGLY_TYPED = 1 << 0, 1 << 1


@pytest.mark.parametrize(
    "version, features, precision, expected",
    [
        # TensorRT 8.6: explicit batch needed, no strongly typed networks, no bf16 at all.
        ("8.6.1", dict(strongly_typed=False, bf16=False), "fp32", (EXPLICIT_BATCH, [], False)),
        ("8.6.1", dict(strongly_typed=False, bf16=False), "fp16", (EXPLICIT_BATCH, ["FP16"], False)),
        # TensorRT 9: explicit batch still set; half-precision graphs strongly typed.
        ("9.2.0", {}, "bf16", (EXPLICIT_BATCH | STRONGLY_TYPED, [], True)),
        ("9.0.0", dict(strongly_typed=False), "bf16", (EXPLICIT_BATCH, ["BF16"], False)),
        # TensorRT 10: EXPLICIT_BATCH deprecated and ignored, never set.
        ("10.3.0", {}, "fp32", (0, [], False)),
        ("10.3.0", {}, "fp16", (STRONGLY_TYPED, [], True)),
        ("10.3.0", {}, "bf16", (STRONGLY_TYPED, [], True)),
    ],
)
def test_tensorrt_builder_flags_follow_the_version(version, features, precision, expected):
    assert prefix_tensorrt.builder_flags(_fake_tensorrt(version, **features), precision) == expected


def test_tensorrt_8_refuses_bf16_with_the_remedy():
    with pytest.raises(EngineError, match="TensorRT 9") as error:
        prefix_tensorrt.builder_flags(_fake_tensorrt("8.6.1", strongly_typed=False, bf16=False), "bf16")
    assert "--precision fp16" in str(error.value)


@pytest.fixture
def two_gpus(monkeypatch):
    """torch reports two different GPUs (the current one is 0) and TensorRT 10.3 is importable."""
    gpus = {0: ("NVIDIA H200", (9, 0)), 1: ("NVIDIA RTX A6000", (8, 6))}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpus[device or 0][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpus[device or 0][1])
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0"))
    return gpus


def _engine_manifest(**entry):
    engine = {"file": "prefix.engine", "tensorrt_version": "10.3.0", **entry}
    return {"tensorrt_engine": engine}


def test_engine_is_checked_against_the_configured_device(two_gpus):
    built_on_1 = _engine_manifest(gpu="NVIDIA RTX A6000", compute_capability="8.6")
    assert prefix_tensorrt.engine_unusable_reason(built_on_1, device_id=1) is None
    reason = prefix_tensorrt.engine_unusable_reason(built_on_1, device_id=0)  # the current device
    assert "compute capability 8.6" in reason and "CUDA device 0 is 9.0" in reason
    assert "no CUDA device 2" in prefix_tensorrt.engine_unusable_reason(built_on_1, device_id=2)
    # Manifests from before the capability was recorded: the name decides.
    older = _engine_manifest(gpu="NVIDIA RTX A6000")
    assert prefix_tensorrt.engine_unusable_reason(older, device_id=1) is None
    assert "NVIDIA H200" in prefix_tensorrt.engine_unusable_reason(older, device_id=0)
    other_version = _engine_manifest(gpu="NVIDIA RTX A6000", compute_capability="8.6",
                                     tensorrt_version="8.6.1")
    assert "TensorRT 8.6.1" in prefix_tensorrt.engine_unusable_reason(other_version, device_id=1)


def test_factory_checks_the_engine_on_the_policy_device(two_gpus, tmp_path):
    from vla_ros.engines.artifact import ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION
    from vla_ros.engines.factory import resolve_prefix_engine

    manifest = {"format": ARTIFACT_FORMAT, "format_version": ARTIFACT_FORMAT_VERSION,
                **_engine_manifest(gpu="NVIDIA RTX A6000", compute_capability="8.6")}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert resolve_prefix_engine("auto", tmp_path, torch.device("cuda", 1)) == "tensorrt"
    assert resolve_prefix_engine("auto", tmp_path, torch.device("cuda", 0)) == "onnx"
    assert resolve_prefix_engine("auto", tmp_path, torch.device("cuda")) == "onnx"  # bare 'cuda': current (0)


# -- the dedicated stream ----------------------------------------------------------------------------


def test_onnxruntime_takes_a_user_stream_from_1_17():
    from vla_ros.engines.prefix_onnx import takes_user_stream

    assert not takes_user_stream("1.16.3")
    assert takes_user_stream("1.17.0") and takes_user_stream("1.31.1") and takes_user_stream("2.0.0")
    assert not takes_user_stream("unknown")


def test_stream_helpers_do_nothing_on_the_cpu(monkeypatch):
    from vla_ros.engines.optimized import OptimizedEngine
    from vla_ros.engines.prefix_torch import TorchPrefixRuntime
    from vla_ros.engines.suffix import StaticSuffixDenoiser
    from vla_ros.model.checkpoint import random_model
    from vla_ros.model.config import get_config

    assert dedicated_stream("cpu") is None and dedicated_stream(None) is None
    assert stream_handle(None) is None
    with running_on(None):
        assert torch.equal(torch.ones(2) + 1, torch.full((2,), 2.0))
    model = random_model(get_config("pi0-tiny"), seed=0)
    engine = OptimizedEngine(TorchPrefixRuntime(model), StaticSuffixDenoiser(model, 2))
    assert engine.stream is None and engine.describe()["cuda_stream"] is None
    if not HAS_CUDA:
        # A torch without CUDA support hands out no stream even when told a GPU is there.
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert dedicated_stream("cuda") is None


# -- GPU only (scripts/gpu_check.sh runs these) ------------------------------------------------------


def _observation(seed=0):
    from test_engines_pipeline import _observation as pipeline_observation

    return pipeline_observation(seed)


@needs_cuda
@pytest.mark.parametrize("engine", ["onnx", "tensorrt"])
def test_gpu_artifact_engine_hands_kv_over_by_address_on_one_stream(engine, tiny_checkpoint, tmp_path):
    import onnxruntime as ort

    from vla_ros.engines.onnx_export import export_artifact, ExportOptions
    from vla_ros.policy import Policy, PolicyOptions

    if engine == "onnx" and "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    if engine == "tensorrt":
        pytest.importorskip("tensorrt")
    artifact = tmp_path / "artifact"
    options = ExportOptions(tensorrt=engine == "tensorrt", workspace_gib=1.0)
    export_artifact(tiny_checkpoint, artifact, options)
    options = PolicyOptions(device="cuda", precision="fp32", engine=engine, suffix="cuda_graph")
    policy = Policy.from_artifacts(artifact, options)
    optimised = policy.engine
    assert optimised.prefix.name == {"onnx": "onnxruntime", "tensorrt": "tensorrt"}[engine]
    if engine == "onnx":
        assert optimised.prefix.providers[0] == "CUDAExecutionProvider"
    # One dedicated stream for prefix and graph replay, not the legacy default stream.
    assert optimised.stream is optimised.prefix.stream
    assert stream_handle(optimised.stream) not in (None, torch.cuda.default_stream().cuda_stream)
    noise = np.random.default_rng(5).standard_normal((50, 32)).astype(np.float32)
    got = policy.infer(_observation(), noise=noise).actions
    assert optimised.prefix.copied_outputs == ()  # every output was written where the suffix reads it
    denoiser = optimised.denoiser
    if engine == "onnx":
        written = {value.data_ptr() for value in optimised.prefix._binding.get_outputs()}
        expected = {denoiser.keys[i].data_ptr() for i in range(denoiser.keys.shape[0])}
        expected |= {denoiser.values[i].data_ptr() for i in range(denoiser.values.shape[0])}
        assert written == expected | {denoiser.prefix_pad.data_ptr()}
    reference = Policy.from_checkpoint(
        tiny_checkpoint, PolicyOptions(device="cpu", engine="reference", precision="fp32")
    ).infer(_observation(), noise=noise).actions
    # GPU kernels (TF32 in the providers / TensorRT) against the fp32 CPU reference.
    assert np.abs(got - reference).max() <= 1e-2 * np.abs(reference).max()


@needs_cuda
def test_gpu_cuda_graph_replays_on_the_callers_stream():
    from vla_ros.engines.suffix import StaticSuffixDenoiser
    from vla_ros.engines.suffix_cuda_graph import CudaGraphSuffix
    from vla_ros.model.checkpoint import random_model
    from vla_ros.model.config import get_config

    model = random_model(get_config("pi0-tiny"), seed=2, std=0.1).cuda()
    denoiser = StaticSuffixDenoiser(model, num_steps=10)
    generator = torch.Generator().manual_seed(0)
    for buffer in (denoiser.prefix_keys, denoiser.prefix_values, denoiser.noise, denoiser.state):
        buffer.copy_(torch.randn(buffer.shape, generator=generator))
    denoiser.prefix_pad.fill_(True)
    graph = CudaGraphSuffix(denoiser)
    noise = torch.randn(denoiser.noise.shape, generator=generator).cuda()
    denoiser.noise.copy_(noise)
    expected = denoiser().clone()  # eager, on the default stream
    denoiser.actions.zero_()
    denoiser.noise.zero_()
    stream = dedicated_stream("cuda")
    assert stream_handle(stream) not in (None, torch.cuda.default_stream().cuda_stream)
    with running_on(stream):
        # Written and replayed on the dedicated stream; the caller's stream waits for it (no host sync).
        denoiser.noise.copy_(noise)
        out = graph.run()
    assert torch.allclose(out.cpu(), expected.cpu(), atol=1e-5, rtol=0)


@needs_cuda
@pytest.mark.parametrize("config,samples", [("pi0-tiny", 1), ("pi05-tiny", 1), ("pi0-tiny", 3)])
def test_gpu_rtc_loops_are_captured_and_match_the_cpu_reference(config, samples):
    """Both Real-Time Chunking loops replayed as CUDA graphs against the eager fp32 CPU reference.

    samples 3 (policy.num_samples): the prefix rows copied to the other samples inside the graph.
    """
    from vla_ros.engines.guidance import ModelGuidance
    from vla_ros.engines.prefix_torch import TorchPrefixRuntime
    from vla_ros.engines.optimized import OptimizedEngine
    from vla_ros.engines.reference import ReferenceEngine
    from vla_ros.engines.suffix import StaticSuffixDenoiser
    from vla_ros.model.checkpoint import random_model
    from vla_ros.model.config import get_config
    from vla_ros.types import RTCSettings

    cfg = get_config(config)
    model = random_model(cfg, seed=3, std=0.1)
    reference = ReferenceEngine(model)
    gpu_model = random_model(cfg, seed=3, std=0.1).cuda()
    denoiser = StaticSuffixDenoiser(gpu_model, 10, num_samples=samples)
    engine = OptimizedEngine(TorchPrefixRuntime(gpu_model), denoiser, "cuda_graph")
    assert not engine._rtc_runs  # captured when first used (the node's warm-up), not for every user
    engine.prepare_guidance()
    assert set(engine._rtc_runs) == {"forward_guided", "forward_trained"}
    inputs = _model_inputs(cfg, samples)
    rng = np.random.default_rng(4)
    previous = rng.standard_normal((30, cfg.action_dim)).astype(np.float32)
    for mode in ("guided", "trained"):
        guidance = ModelGuidance.build(previous, 6, RTCSettings(execution_horizon=20, mode=mode), 50, 32)
        reference.encode_prefix(inputs)
        expected = reference.denoise(inputs, guidance)
        engine.encode_prefix(inputs)
        got = engine.denoise(inputs, guidance)
        assert np.abs(got - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max()), mode
    engine.encode_prefix(inputs)
    plain = engine.denoise(inputs)  # the unguided graph is untouched by the guided replays
    reference.encode_prefix(inputs)
    assert np.abs(plain - reference.denoise(inputs)).max() <= 1e-3 * max(1.0, np.abs(plain).max())


def _model_inputs(cfg, samples: int = 1):
    from vla_ros.engines.base import ModelInputs

    rng = np.random.default_rng(1)
    tokens = np.zeros(cfg.max_token_len, dtype=np.int32)
    tokens[:6] = rng.integers(2, 200, 6)
    masks = np.arange(cfg.max_token_len) < 6
    images = rng.integers(0, 256, (cfg.num_cameras, cfg.vision.image_size, cfg.vision.image_size, 3),
                          dtype=np.uint8)
    return ModelInputs(images=images, image_masks=np.ones(cfg.num_cameras, dtype=bool), tokens=tokens,
                       token_masks=masks, state=rng.standard_normal(cfg.action_dim).astype(np.float32),
                       noise=rng.standard_normal((samples, cfg.action_horizon, cfg.action_dim))
                       .astype(np.float32).squeeze(0 if samples == 1 else ()))


# -- scripts/gpu_check.sh -------------------------------------------------------------------------


def test_gpu_check_script_parses():
    result = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_gpu_check_without_cuda_lists_its_checks_and_exits_0(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", GPU_CHECK_DIR=str(tmp_path / "work"))
    result = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=120, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "no CUDA device" in out
    # What it would run on a GPU machine: the GPU tests, tiny / mid / full sizes, both prefix runtimes,
    # eager vs graph suffix.
    for expected in ("GPU-only tests", "pi0-tiny", "pi0-mid", "pi0 ", "pi05 ", "onnxruntime",
                     "TensorRT", "suffix eager", "suffix cuda_graph", "pi0fast-tiny decode cuda_graph"):
        assert expected in out, expected
    assert "| PASS" not in out and not (tmp_path / "work").exists()  # nothing ran, nothing written


def test_gpu_check_report_makes_one_row_per_check(tmp_path):
    """The table helper: bench JSON figures, junit test rows, eager-vs-graph ratios, failures kept."""
    optimised = {"prefix": "onnxruntime", "prefix_providers": ["CUDAExecutionProvider"],
                 "prefix_copied_outputs": 0, "cuda_stream": "dedicated", "suffix": "cuda_graph"}
    bench = {"info": {"optimised": optimised},
             "results": {"optimised": {stage: {"p50": value, "p90": value, "p99": value}
                                       for stage, value in (("prefix", 0.002), ("suffix", 0.001),
                                                            ("total", 0.004))}}}
    eager = json.loads(json.dumps(bench))
    eager["results"]["optimised"]["suffix"]["p50"] = 0.003
    (tmp_path / "graph.json").write_text(json.dumps(bench))
    (tmp_path / "eager.json").write_text(json.dumps(eager))
    decode = {"info": {"optimised": {"prefix": "pytorch", "decode": "cuda_graph"}},
              "results": {"optimised": {stage: {"p50": value} for stage, value in
                                        (("prefix", 0.002), ("per_token", 0.0005), ("total", 0.04))}}}
    decode_eager = json.loads(json.dumps(decode))
    decode_eager["results"]["optimised"]["per_token"]["p50"] = 0.001
    (tmp_path / "decode_graph.json").write_text(json.dumps(decode))
    (tmp_path / "decode_eager.json").write_text(json.dumps(decode_eager))
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="test.test_engines_onnx" name="test_cuda_provider_parity" time="1.5"/>'
        '<testcase classname="test.test_engines_onnx" name="test_tensorrt_engine_build" time="0.1">'
        '<skipped message="could not import \'tensorrt\'"/></testcase>'
        '<testcase classname="test.test_engines_suffix" name="test_cuda_graph_replay_equals_eager" time="2">'
        '<failure message="assert False">trace</failure></testcase>'
        '</testsuite></testsuites>'
    )
    rows = tmp_path / "rows.tsv"
    rows.write_text("\n".join([
        "\t".join(["GPU-only tests", "pytest", "FAIL", str(tmp_path / "tests.xml"), "exit 1"]),
        "\t".join(["pi0-tiny suffix cuda_graph", "bench", "PASS", str(tmp_path / "graph.json"), ""]),
        "\t".join(["pi0-tiny suffix eager", "bench", "PASS", str(tmp_path / "eager.json"), ""]),
        "\t".join(["pi0-tiny cuda_graph vs eager", "compare", "PASS",
                   f"{tmp_path / 'graph.json'},{tmp_path / 'eager.json'}", ""]),
        "\t".join(["pi0-tiny prefix TensorRT", "plain", "SKIP", "", "no tensorrt module"]),
        "\t".join(["pi0fast-tiny decode cuda_graph", "bench", "PASS",
                   str(tmp_path / "decode_graph.json"), ""]),
        "\t".join(["pi0fast-tiny decode cuda_graph vs eager", "compare", "PASS",
                   f"{tmp_path / 'decode_graph.json'},{tmp_path / 'decode_eager.json'}", ""]),
    ]) + "\n")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check_report.py"), str(rows)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1  # a failed check fails the run
    lines = result.stdout.splitlines()
    row = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
           for line in lines if line.startswith("|") and "---" not in line}
    assert row["test_cuda_provider_parity"][0] == "PASS"
    skipped = row["test_tensorrt_engine_build"]
    assert skipped[0] == "SKIP" and "tensorrt" in skipped[2]
    assert row["test_cuda_graph_replay_equals_eager"][0] == "FAIL"
    graph = row["pi0-tiny suffix cuda_graph"]
    assert graph[0] == "PASS" and "suffix p50 1.00 ms" in graph[1]
    assert "0 K/V copies" in graph[2]
    ratio = row["pi0-tiny cuda_graph vs eager"]
    assert ratio[0] == "PASS" and "3.00x" in ratio[1]
    assert row["pi0-tiny prefix TensorRT"] == ["SKIP", "", "no tensorrt module"]
    decode = row["pi0fast-tiny decode cuda_graph"]
    assert decode[0] == "PASS" and "per_token p50 0.50 ms" in decode[1] and "decode cuda_graph" in decode[2]
    ratio = row["pi0fast-tiny decode cuda_graph vs eager"][1]
    assert "per_token p50 graph 0.50 ms vs eager 1.00 ms: 2.00x" in ratio
    assert "1 FAIL" in result.stdout
