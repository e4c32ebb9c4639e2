"""The onnxruntime prefix encoder: export, parity with PyTorch, IO binding, the artifact, provider fallbacks.

The tiny checkpoints are exported once per module; GPU-only checks skip without CUDA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from vla_ros.engines import onnx_export  # noqa: E402
from vla_ros.engines.artifact import (  # noqa: E402
    is_suffix_key,
    load_suffix_model,
    read_manifest,
    verify_artifact,
)
from vla_ros.engines.onnx_export import export_artifact, ExportOptions  # noqa: E402
from vla_ros.engines.prefix_graph import validation_inputs  # noqa: E402
from vla_ros.engines.prefix_onnx import (  # noqa: E402
    choose_providers,
    CPU,
    CUDA,
    OnnxPrefixRuntime,
    OPENVINO,
    openvino_options,
    TENSORRT,
)
from vla_ros.errors import ConfigError, EngineError  # noqa: E402
from vla_ros.model.checkpoint import load_model  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory):
    """variant -> (checkpoint dir, artifact dir, reference fp32 model); each exported once."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            fixture = "tiny_checkpoint" if variant == "pi0" else "tiny_pi05_checkpoint"
            checkpoint = request.getfixturevalue(fixture)
            artifact = tmp_path_factory.mktemp(f"{variant}_export") / "artifact"
            export_artifact(checkpoint, artifact, ExportOptions())
            model, _ = load_model(checkpoint)
            cache[variant] = (checkpoint, artifact, model)
        return cache[variant]

    return get


def _reference(model, inputs):
    with torch.no_grad():
        return model.embed_prefix(**inputs)


def _unbatched_numpy(inputs):
    """The form the Policy hands engines (ModelInputs): numpy, no batch dim, int32 tokens."""
    arrays = {k: v[0].numpy() for k, v in inputs.items()}
    arrays["tokens"] = arrays["tokens"].astype(np.int32)
    return arrays


def _nan_buffers(runtime, dtype=torch.float32, device="cpu"):
    keys, values, pad = runtime.allocate_outputs(device=device, dtype=dtype)
    keys.fill_(float("nan"))
    values.fill_(float("nan"))
    return keys, values, pad


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_onnxruntime_kv_match_pytorch_and_land_in_the_given_tensors(exported, variant):
    _, artifact, model = exported(variant)
    runtime = OnnxPrefixRuntime(artifact, providers="cpu", num_threads=2)
    assert runtime.describe()["providers"][0] == CPU
    inputs = validation_inputs(model.cfg, seed=5)
    assert not inputs["image_masks"].all() and not inputs["token_masks"].all()  # masked camera, padded prompt
    ref = _reference(model, inputs)
    keys, values, pad = _nan_buffers(runtime)
    pointers = (keys.data_ptr(), values.data_ptr(), pad.data_ptr())

    runtime.run(**_unbatched_numpy(inputs), keys=keys, values=values, pad_mask=pad)

    assert (keys.data_ptr(), values.data_ptr(), pad.data_ptr()) == pointers
    assert not keys.isnan().any() and not values.isnan().any()
    assert (keys - ref.keys).abs().max().item() <= FP32_TOL
    assert (values - ref.values).abs().max().item() <= FP32_TOL
    assert torch.equal(pad, ref.pad_mask)

    # A second observation through the same (already bound) buffers: all cameras, other prompt.
    other = validation_inputs(model.cfg, seed=6)
    other["image_masks"][:] = True
    other["token_masks"][0, :30] = True
    ref_other = _reference(model, other)
    runtime.run(**other, keys=keys, values=values, pad_mask=pad)
    assert (keys - ref_other.keys).abs().max().item() <= FP32_TOL
    assert (values - ref_other.values).abs().max().item() <= FP32_TOL
    assert torch.equal(pad, ref_other.pad_mask)
    assert keys.data_ptr() == pointers[0]


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_onnxruntime_writes_the_suffix_kv_by_address(exported, variant):
    """The K/V the suffix reads are where onnxruntime wrote them: no staging buffer, no copy."""
    from vla_ros.engines.suffix import StaticSuffixDenoiser

    _, artifact, model = exported(variant)
    runtime = OnnxPrefixRuntime(artifact, providers="cpu", num_threads=2)
    suffix_model, cfg = load_suffix_model(artifact)
    denoiser = StaticSuffixDenoiser(suffix_model, num_steps=10)
    denoiser.keys.fill_(float("nan"))
    denoiser.values.fill_(float("nan"))
    own = [t for t in runtime._outputs.values() if t.is_floating_point()]
    for tensor in own:  # the runtime's own output tensors: any write or copy through them shows
        tensor.fill_(float("nan"))
    inputs = validation_inputs(cfg, seed=11)

    runtime.run(**_unbatched_numpy(inputs), keys=denoiser.prefix_keys, values=denoiser.prefix_values,
                pad_mask=denoiser.prefix_pad)

    assert runtime.copied_outputs == ()
    layers = range(cfg.prefix.depth)
    written = {value.data_ptr() for value in runtime._binding.get_outputs()}
    # Each layer's attention reads keys[l] / values[l], whose first P rows are the prefix's.
    expected = {denoiser.keys[i].data_ptr() for i in layers} | {denoiser.values[i].data_ptr() for i in layers}
    assert written == expected | {denoiser.prefix_pad.data_ptr()}
    assert all(tensor.isnan().all() for tensor in own)  # untouched: nothing was staged there
    ref = _reference(model, inputs)  # a separate reference run
    assert (denoiser.prefix_keys - ref.keys).abs().max().item() <= FP32_TOL
    assert (denoiser.prefix_values - ref.values).abs().max().item() <= FP32_TOL
    assert torch.equal(denoiser.prefix_pad, ref.pad_mask)
    assert denoiser.keys[:, :, :, denoiser.plen:].isnan().all()  # the suffix's rows are its own

    # The suffix over the K/V written in place denoises like one over a copied-in reference cache.
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(denoiser.noise.shape, generator=generator)
    state = torch.randn(denoiser.state.shape, generator=generator)
    denoiser.noise.copy_(noise)
    denoiser.state.copy_(state)
    got = denoiser().clone()
    copied = StaticSuffixDenoiser(suffix_model, num_steps=10)
    copied.prefix_keys.copy_(ref.keys)
    copied.prefix_values.copy_(ref.values)
    copied.prefix_pad.copy_(ref.pad_mask)
    copied.noise.copy_(noise)
    copied.state.copy_(state)
    assert torch.allclose(got, copied(), atol=1e-4, rtol=0)


def test_exported_kv_outputs_come_straight_from_their_layers(exported, tmp_path):
    """No stack-then-slice inside the graph: the node computing a layer's K/V writes the output."""
    import onnx

    from vla_ros.engines.onnx_export import route_layer_outputs

    _, artifact, model = exported("pi0")
    graph = onnx.load(str(artifact / "prefix.onnx"), load_external_data=False).graph
    producers = {out: node for node in graph.node for out in node.output}
    names = [f"{kind}_{i}" for kind in ("keys", "values") for i in range(model.cfg.prefix.depth)]
    assert [o.name for o in graph.output] == [*names, "pad_mask"]
    for name in names:
        assert producers[name].op_type not in ("Squeeze", "Slice", "Split", "Gather", "Concat"), name
    # The stacks that fed the old outputs are gone; a second pass finds nothing to do.
    stacked = [n for n in graph.node if n.op_type == "Concat"
               and any(i in names for i in n.input) and len(n.input) == model.cfg.prefix.depth]
    assert stacked == []
    copy = tmp_path / "prefix.onnx"
    shutil.copy(artifact / "prefix.onnx", copy)
    assert route_layer_outputs(copy) == 0


def test_gpu_sessions_get_the_dedicated_stream_in_their_options(exported):
    """The CUDA / TensorRT provider options carry the stream only when onnxruntime runs on it."""
    _, artifact, _ = exported("pi0")
    runtime = OnnxPrefixRuntime(artifact, providers="cpu", num_threads=1)
    assert runtime.stream is None and runtime.describe()["cuda_stream"] is None
    assert "user_compute_stream" not in runtime._provider_options(CUDA)
    runtime._ort_stream = 0x7F00  # what a GPU session on onnxruntime 1.17+ holds
    options = runtime._provider_options(CUDA)
    assert options["user_compute_stream"] == str(0x7F00) and options["has_user_compute_stream"] == "1"
    assert runtime._provider_options(OPENVINO).get("user_compute_stream") is None


def test_bf16_target_buffers_get_one_cast_copy(exported, caplog):
    _, artifact, model = exported("pi0")
    runtime = OnnxPrefixRuntime(artifact, providers="cpu", num_threads=2)
    inputs = validation_inputs(model.cfg, seed=7)
    ref = _reference(model, inputs)
    keys, values, pad = _nan_buffers(runtime, dtype=torch.bfloat16)
    pointers = (keys.data_ptr(), values.data_ptr())
    with caplog.at_level(logging.INFO, logger="vla_ros.engines.prefix_onnx"):
        runtime.run(**inputs, keys=keys, values=values, pad_mask=pad)
        runtime.run(**inputs, keys=keys, values=values, pad_mask=pad)
    assert (keys.data_ptr(), values.data_ptr()) == pointers
    assert keys.dtype == torch.bfloat16
    for got, want in ((keys, ref.keys), (values, ref.values)):
        # bf16 keeps 8 significant bits: rounding moves a value by at most 2^-9 of its magnitude.
        assert (got.float() - want).abs().max().item() <= 2**-8 * want.abs().max().item()
    assert torch.equal(pad, ref.pad_mask)
    staging = [r for r in caplog.records if "cast copy" in r.getMessage()]
    assert len(staging) == 1


def test_manifest_records_io_hashes_and_validation(exported, tmp_path):
    checkpoint, artifact, model = exported("pi0")
    cfg = model.cfg
    manifest = read_manifest(artifact)
    prefix_len = cfg.prefix_len
    layer_shape = [1, cfg.prefix.num_kv_heads, prefix_len, cfg.prefix.head_dim]
    graph = manifest["graph"]
    assert graph["inputs"] == [
        {"name": "images", "shape": [1, 3, 224, 224, 3], "dtype": "uint8"},
        {"name": "image_masks", "shape": [1, 3], "dtype": "bool"},
        {"name": "tokens", "shape": [1, 48], "dtype": "int64"},
        {"name": "token_masks", "shape": [1, 48], "dtype": "bool"},
    ]
    assert cfg.prefix.depth == 2
    assert graph["outputs"] == [
        {"name": "keys_0", "shape": layer_shape, "dtype": "float32"},
        {"name": "keys_1", "shape": layer_shape, "dtype": "float32"},
        {"name": "values_0", "shape": layer_shape, "dtype": "float32"},
        {"name": "values_1", "shape": layer_shape, "dtype": "float32"},
        {"name": "pad_mask", "shape": [1, prefix_len], "dtype": "bool"},
    ]
    assert graph["kv_outputs_from_layers"] == 4
    assert graph["opset"] >= 17 and graph["external_data"] is None
    assert graph["exporter"] in ("dynamo", "torchscript")
    assert (graph["exporter_fallback_reason"] is None) == (graph["exporter"] == "dynamo")
    assert manifest["precision"] == "fp32"
    assert manifest["config"] == cfg.to_dict()
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "vla_ros"}
    assert manifest["tensorrt_ep"]["trt_engine_cache_enable"] == "1"
    assert manifest["tensorrt_engine"] is None

    validation = manifest["validation"]
    assert validation["status"] == "passed" and validation["pad_mask_equal"]
    assert validation["keys"]["max_abs"] <= FP32_TOL and validation["values"]["max_abs"] <= FP32_TOL
    assert validation["inputs"]["masked_cameras"] == [1]

    on_disk = {p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file()}
    assert on_disk - set(manifest["files"]) == {"manifest.json"}
    assert {"prefix.onnx", "suffix.safetensors", "config.json", "tokenizer.model",
            "assets/robot/norm_stats.json"} <= set(manifest["files"])
    for name, entry in manifest["files"].items():
        data = (artifact / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert verify_artifact(artifact) == []

    tampered = tmp_path / "tampered"
    shutil.copytree(artifact, tampered)
    with open(tampered / "suffix.safetensors", "ab") as handle:
        handle.write(b"\0")
    assert verify_artifact(tampered) == ["suffix.safetensors: contents differ from the manifest"]


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_artifact_dir_alone_loads_the_suffix(exported, variant, tmp_path):
    from safetensors import safe_open

    from vla_ros.model.checkpoint import config_from_checkpoint
    from vla_ros.observation.normalize import load_norm_stats
    from vla_ros.policy import find_tokenizer

    checkpoint, artifact, model = exported(variant)
    alone = tmp_path / "deployed"
    shutil.copytree(artifact, alone)  # nothing may point back at the checkpoint
    suffix, cfg = load_suffix_model(alone)
    assert cfg == model.cfg
    assert config_from_checkpoint(alone) == cfg  # config.json carries the resolved config
    load_norm_stats(alone)
    assert find_tokenizer(alone).name == "tokenizer.model"

    params = dict(suffix.named_parameters())
    real = {k for k, p in params.items() if not p.is_meta}
    assert real == {k for k in params if is_suffix_key(k)}
    assert suffix.language_model.layers[0].mlp.up_proj.weight.is_meta
    time_mlp = "time_mlp_in.weight" if cfg.pi05 else "action_time_mlp_in.weight"
    assert time_mlp in real and "action_in_proj.weight" in real and "action_out_proj.weight" in real
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as weights:
        for name in real:
            assert torch.equal(params[name], weights.get_tensor(name).float()), name

    # The suffix-only model denoises exactly like the full one.
    inputs = validation_inputs(cfg, seed=3)
    cache = _reference(model, inputs)
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, cfg.action_horizon, cfg.action_dim, generator=generator)
    state = torch.randn(1, cfg.action_dim, generator=generator)
    t = torch.tensor([0.7])
    with torch.no_grad():
        want = model.denoise_step(cache, x_t, t, state)
        got = suffix.denoise_step(cache, x_t, t, state)
    assert (got - want).abs().max().item() <= 1e-6  # same weights; only kernel alignment differs

    mixed, _ = load_suffix_model(alone, dtype=torch.bfloat16)
    assert mixed.compute_dtype == torch.bfloat16
    assert mixed.expert.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert mixed.action_in_proj.weight.dtype == torch.float32


def test_fp16_export_with_external_data(tiny_checkpoint, exported, tmp_path):
    _, _, model = exported("pi0")
    artifact = tmp_path / "fp16"
    manifest = export_artifact(tiny_checkpoint, artifact, ExportOptions(precision="fp16", external_data=True))
    assert manifest["precision"] == "fp16"
    assert manifest["graph"]["external_data"] == "prefix.onnx.data"
    assert "prefix.onnx.data" in manifest["files"] and (artifact / "prefix.onnx.data").is_file()
    assert manifest["graph"]["outputs"][0]["dtype"] == "float16"
    assert manifest["tensorrt_ep"]["trt_fp16_enable"] == "1"
    validation = manifest["validation"]
    assert validation["status"] == "passed" and validation["tolerance"]["max_error"] == 1e-2

    runtime = OnnxPrefixRuntime(artifact, providers="cpu", num_threads=2)
    assert runtime.output_dtype == torch.float16
    inputs = validation_inputs(model.cfg, seed=8)
    ref = _reference(model, inputs)  # fp32 reference: the fp16 split must stay close to it
    keys, values, pad = _nan_buffers(runtime, dtype=torch.float32)
    runtime.run(**inputs, keys=keys, values=values, pad_mask=pad)
    assert (keys - ref.keys).abs().max().item() <= 1e-2
    assert (values - ref.values).abs().max().item() <= 1e-2
    assert torch.equal(pad, ref.pad_mask)


def test_dynamo_failure_falls_back_to_torchscript_and_bf16_skips_cpu_validation(
    tiny_checkpoint, tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    artifact = tmp_path / "bf16"
    manifest = export_artifact(tiny_checkpoint, artifact, ExportOptions(precision="bf16"))
    assert manifest["graph"]["exporter"] == "torchscript"
    assert "simulated dynamo failure" in manifest["graph"]["exporter_fallback_reason"]
    assert manifest["graph"]["outputs"][0]["dtype"] == "bfloat16"
    if HAS_CUDA and CUDA in ort.get_available_providers():
        assert manifest["validation"]["status"] == "passed"
    else:
        # onnxruntime's CPU provider has no bf16 MatMul: recorded, not hidden.
        assert manifest["validation"]["status"] == "skipped"
        assert "CPUExecutionProvider" in manifest["validation"]["reason"]
        with pytest.raises(EngineError, match="--precision fp32"):
            OnnxPrefixRuntime(artifact, providers="cpu")


def test_cli_tensorrt_without_tensorrt_names_what_is_missing(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from vla_ros.tools import cli

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, even where installed
    out = tmp_path / "trt"
    rc = cli.main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--tensorrt"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "tensorrt" in err and "pip install tensorrt" in err
    assert not out.exists()  # failed before the slow steps


def test_cli_export_prints_a_summary(tiny_checkpoint, tmp_path, capsys):
    from vla_ros.tools import cli

    out = tmp_path / "cli"
    # Opset 17 (older TensorRT) goes straight to the TorchScript exporter.
    assert cli.main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--opset", "17"]) == 0
    text = capsys.readouterr().out
    assert "torchscript exporter" in text and "opset 17" in text
    assert "prefix.onnx" in text and "suffix.safetensors" in text
    assert "keys max abs" in text
    # A second export into the same directory needs --overwrite.
    assert cli.main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_options_are_validated():
    with pytest.raises(ConfigError, match="opset"):
        ExportOptions(opset=16)
    with pytest.raises(ConfigError, match="precision"):
        ExportOptions(precision="int8")
    with pytest.raises(ConfigError, match="exporter"):
        ExportOptions(exporter="tracing")


def test_choose_providers():
    every = [TENSORRT, CUDA, CPU]
    assert choose_providers("auto", every, cuda_available=False) == ([CPU], None)
    # auto never takes onnxruntime's TensorRT provider (2 GB protobuf limit, engine build at load):
    # the native prefix.engine is the TensorRT path; asked for by name, it comes first.
    assert choose_providers("auto", every, cuda_available=True) == ([CUDA, CPU], None)
    assert choose_providers("tensorrt", every, cuda_available=True) == (every, None)
    assert choose_providers("auto", [CUDA, CPU], cuda_available=True) == ([CUDA, CPU], None)
    chain, warning = choose_providers("tensorrt", [CUDA, CPU], cuda_available=True)
    assert chain == [CUDA, CPU] and "tensorrt" in warning and CUDA in warning
    chain, warning = choose_providers("cuda", every, cuda_available=False)
    assert chain == [CPU] and "no CUDA device" in warning
    assert choose_providers("cpu", every, cuda_available=True) == ([CPU], None)
    with pytest.raises(ConfigError, match="providers"):
        choose_providers("gpu")


def test_choose_providers_openvino():
    # OpenVINO needs no CUDA; "auto" ranks it after the GPU providers.
    assert choose_providers("auto", [OPENVINO, CPU], cuda_available=False) == ([OPENVINO, CPU], None)
    every = [TENSORRT, CUDA, OPENVINO, CPU]
    assert choose_providers("auto", every, cuda_available=True) == ([CUDA, OPENVINO, CPU], None)
    assert choose_providers("auto", every, cuda_available=False) == ([OPENVINO, CPU], None)
    assert choose_providers("openvino", [OPENVINO, CPU], cuda_available=True) == ([OPENVINO, CPU], None)
    chain, warning = choose_providers("openvino", [TENSORRT, CUDA, CPU], cuda_available=True)
    assert chain == [CPU] and "onnxruntime-openvino" in warning


def test_openvino_options_ask_for_bf16_where_the_cpu_has_it(monkeypatch):
    from vla_ros.engines import factory

    for native, hint in ((True, "bf16"), (False, "f32")):
        monkeypatch.setattr(factory, "cpu_has_native_bf16", lambda native=native: native)
        options = openvino_options(num_threads=2)
        assert options["device_type"] == "CPU" and options["num_of_threads"] == "2"
        assert json.loads(options["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": hint}}
    assert "num_of_threads" not in openvino_options(None)
    # An explicit fp32 policy keeps OpenVINO in fp32 for parity checks.
    fp32 = json.loads(openvino_options(None, bf16=False)["load_config"])
    assert fp32["CPU"]["INFERENCE_PRECISION_HINT"] == "f32"


@pytest.mark.skipif(
    OPENVINO not in ort.get_available_providers(),
    reason="needs onnxruntime-openvino (installed in place of onnxruntime-gpu)",
)
def test_openvino_provider_matches_pytorch(exported):
    from vla_ros.engines.factory import cpu_has_native_bf16

    _, artifact, model = exported("pi0")
    runtime = OnnxPrefixRuntime(artifact, providers="openvino", num_threads=2)
    assert runtime.providers[0] == OPENVINO and runtime.device.type == "cpu"
    inputs = validation_inputs(model.cfg, seed=4)
    keys, values, pad = runtime.allocate_outputs()
    runtime.run(**inputs, keys=keys, values=values, pad_mask=pad)
    reference = _reference(model, inputs)
    # bf16 inference where the CPU has it: the stated bf16 tolerance, relative to the range.
    tolerance = 2e-2 if cpu_has_native_bf16() else FP32_TOL
    for got, want in ((keys, reference.keys), (values, reference.values)):
        assert (got - want).abs().max().item() <= tolerance * want.abs().max().item()
    assert torch.equal(pad, reference.pad_mask)


@pytest.mark.skipif(HAS_CUDA, reason="checks the fallback on a machine without CUDA")
@pytest.mark.parametrize("forced", ["cuda", "tensorrt"])
def test_forced_gpu_provider_without_gpu_warns_and_runs_on_cpu(exported, forced, caplog):
    _, artifact, model = exported("pi0")
    with caplog.at_level(logging.WARNING, logger="vla_ros.engines.prefix_onnx"):
        runtime = OnnxPrefixRuntime(artifact, providers=forced, num_threads=2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and forced in warnings[0] and CPU in warnings[0]
    assert runtime.providers == [CPU] and runtime.device.type == "cpu"
    inputs = validation_inputs(model.cfg, seed=9)
    keys, values, pad = runtime.allocate_outputs()
    runtime.run(**inputs, keys=keys, values=values, pad_mask=pad)
    assert (keys - _reference(model, inputs).keys).abs().max().item() <= FP32_TOL


@pytest.mark.skipif(HAS_CUDA or CUDA not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu on a machine whose CUDA libraries are missing")
def test_silent_onnxruntime_fallback_is_detected(exported, monkeypatch, caplog):
    _, artifact, _ = exported("pi0")
    # Pretend torch sees a GPU: onnxruntime then tries its CUDA provider, fails to load
    # the CUDA libraries and quietly continues on the CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.WARNING, logger="vla_ros.engines.prefix_onnx"):
        runtime = OnnxPrefixRuntime(artifact, providers="cuda")
    assert runtime.providers == [CPU] and runtime.device.type == "cpu"
    assert any("fell back" in r.getMessage() for r in caplog.records)


def test_wrong_input_shape_is_a_clear_error(exported):
    _, artifact, model = exported("pi0")
    runtime = OnnxPrefixRuntime(artifact, providers="cpu", num_threads=1)
    inputs = validation_inputs(model.cfg)
    inputs["tokens"] = inputs["tokens"][:, :10]
    keys, values, pad = runtime.allocate_outputs()
    with pytest.raises(EngineError, match="tokens"):
        runtime.run(**inputs, keys=keys, values=values, pad_mask=pad)


# -- GPU only ----------------------------------------------------------------------------------


def _gpu_parity(exported, providers, tmp_path):
    _, artifact, model = exported("pi0")
    runtime = OnnxPrefixRuntime(artifact, providers=providers, engine_cache_dir=tmp_path / "cache")
    assert runtime.device.type == "cuda"
    inputs = validation_inputs(model.cfg, seed=10)
    ref = _reference(model, inputs)
    keys, values, pad = _nan_buffers(runtime, device="cuda")
    pointer = keys.data_ptr()
    runtime.run(**{k: v.cuda() for k, v in inputs.items()}, keys=keys, values=values, pad_mask=pad)
    torch.cuda.synchronize()
    assert keys.data_ptr() == pointer
    # GPU kernels (TF32 matmuls included) are not bit-identical to the CPU reference.
    assert (keys.cpu() - ref.keys).abs().max().item() <= 1e-2
    assert (values.cpu() - ref.values).abs().max().item() <= 1e-2
    assert torch.equal(pad.cpu(), ref.pad_mask)
    return runtime


@needs_cuda
@pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="onnxruntime has no CUDA provider")
def test_cuda_provider_parity(exported, tmp_path):
    runtime = _gpu_parity(exported, "cuda", tmp_path)
    assert runtime.providers[0] == CUDA


@needs_cuda
@pytest.mark.skipif(TENSORRT not in ort.get_available_providers(),
                    reason="onnxruntime has no TensorRT provider")
def test_tensorrt_provider_parity_and_engine_cache(exported, tmp_path):
    runtime = _gpu_parity(exported, "tensorrt", tmp_path)
    if runtime.providers[0] == TENSORRT:
        assert any((tmp_path / "cache").iterdir())


@pytest.fixture(scope="module")
def tensorrt_export(request, tmp_path_factory):
    """(artifact dir, manifest) of the tiny pi0 exported with --tensorrt, once per module (GPU only)."""
    pytest.importorskip("tensorrt")
    checkpoint = request.getfixturevalue("tiny_checkpoint")
    artifact = tmp_path_factory.mktemp("trt_export") / "trt"
    return artifact, export_artifact(checkpoint, artifact, ExportOptions(tensorrt=True, workspace_gib=1.0))


@needs_cuda
def test_tensorrt_engine_build(tensorrt_export):
    artifact, manifest = tensorrt_export
    engine = manifest["tensorrt_engine"]
    assert engine["file"] == "prefix.engine" and "prefix.engine" in manifest["files"]
    assert (artifact / "prefix.engine").stat().st_size > 0
    major, minor = torch.cuda.get_device_capability()
    assert engine["compute_capability"] == f"{major}.{minor}"
    assert engine["gpu"] == torch.cuda.get_device_name()
    assert engine["strongly_typed"] is False  # fp32


def test_cpu_engines_take_openvino_where_installed(monkeypatch):
    from vla_ros.engines import factory

    monkeypatch.setattr(ort, "get_available_providers", lambda: [OPENVINO, CPU])
    assert factory.cpu_onnx_providers() == "openvino"
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    assert factory.cpu_onnx_providers() == "cpu"  # onnxruntime-gpu on a CPU-only engine


def test_prefix_engine_resolution(exported, tiny_checkpoint, caplog):
    from vla_ros.engines.factory import resolve_prefix_engine

    _, artifact, _ = exported("pi0")
    cpu = torch.device("cpu")
    assert resolve_prefix_engine("auto", tiny_checkpoint, cpu) == "pytorch"
    assert resolve_prefix_engine("auto", artifact, cpu) == "onnx"
    with caplog.at_level(logging.WARNING, logger="vla_ros.engines.factory"):
        assert resolve_prefix_engine("tensorrt", artifact, cpu) == "onnx"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'tensorrt'" in warnings[0] and "CPU" in warnings[0]
    with pytest.raises(ConfigError, match="--tensorrt"):
        resolve_prefix_engine("tensorrt", tiny_checkpoint, cpu)
    with pytest.raises(ConfigError, match="checkpoint directory"):
        resolve_prefix_engine("pytorch", artifact, cpu)


def test_tensorrt_engine_unusable_reasons(exported):
    from vla_ros.engines.prefix_tensorrt import engine_unusable_reason

    _, artifact, _ = exported("pi0")
    manifest = read_manifest(artifact)
    assert "--tensorrt" in engine_unusable_reason(manifest)  # exported without an engine
    built = dict(manifest, tensorrt_engine={"file": "prefix.engine", "tensorrt_version": "0.0", "gpu": "X"})
    reason = engine_unusable_reason(built)
    if not HAS_CUDA:
        assert "no CUDA device" in reason
    else:
        assert reason is not None  # version 0.0 / GPU "X" never match


@needs_cuda
def test_tensorrt_runtime_runs_the_exported_engine(tensorrt_export, tiny_checkpoint):
    from vla_ros.engines.prefix_tensorrt import TensorRTPrefixRuntime

    artifact, _ = tensorrt_export
    model, _ = load_model(tiny_checkpoint)
    runtime = TensorRTPrefixRuntime(artifact)
    inputs = validation_inputs(model.cfg, seed=6)
    keys = torch.zeros(runtime.kv_shape, device="cuda")
    values = torch.zeros(runtime.kv_shape, device="cuda")
    pad = torch.zeros(runtime.output_shapes["pad_mask"], dtype=torch.bool, device="cuda")
    runtime.run(**inputs, keys=keys, values=values, pad_mask=pad)
    torch.cuda.synchronize()
    reference = _reference(model, inputs)
    # TensorRT may pick TF32 kernels for an fp32 engine: 1e-3 relative to the range.
    assert (keys.cpu() - reference.keys).abs().max() <= 1e-3 * reference.keys.abs().max()
    assert (values.cpu() - reference.values).abs().max() <= 1e-3 * reference.values.abs().max()
    assert torch.equal(pad.cpu(), reference.pad_mask)


@needs_cuda
def test_tensorrt_runtime_writes_the_suffix_kv_by_address(tensorrt_export, tiny_checkpoint):
    from vla_ros.engines.cuda_stream import stream_handle
    from vla_ros.engines.prefix_tensorrt import TensorRTPrefixRuntime
    from vla_ros.engines.suffix import StaticSuffixDenoiser

    artifact, _ = tensorrt_export
    model, _ = load_model(tiny_checkpoint)
    suffix_model, cfg = load_suffix_model(artifact, device="cuda")
    denoiser = StaticSuffixDenoiser(suffix_model, num_steps=10)
    runtime = TensorRTPrefixRuntime(artifact)
    assert stream_handle(runtime.stream) not in (None, torch.cuda.default_stream().cuda_stream)
    for tensor in runtime._outputs.values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    inputs = validation_inputs(cfg, seed=12)
    runtime.run(**inputs, keys=denoiser.prefix_keys, values=denoiser.prefix_values,
                pad_mask=denoiser.prefix_pad)
    torch.cuda.synchronize()
    assert runtime.copied_outputs == ()
    for layer in range(cfg.prefix.depth):
        address = runtime._context.get_tensor_address(f"keys_{layer}")
        assert address == denoiser.keys[layer].data_ptr()
        assert runtime._context.get_tensor_address(f"values_{layer}") == denoiser.values[layer].data_ptr()
    assert all(t.isnan().all() for t in runtime._outputs.values() if t.is_floating_point())
    reference = _reference(model, inputs)
    assert (denoiser.prefix_keys.cpu() - reference.keys).abs().max() <= 1e-3 * reference.keys.abs().max()
    values_error = (denoiser.prefix_values.cpu() - reference.values).abs().max()
    assert values_error <= 1e-3 * reference.values.abs().max()
