"""pi0-FAST export: the prefix graph with last_logits, the decode weights, the artifact run by the Policy.

An untrained pi0fast-tiny (its embedding alone is 257152 x 64, 66 MB fp32) is
exported once per module; the artifact's greedy tokens and first logits are
checked against the PyTorch checkpoint's.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from vla_ros.engines import artifact as artifact_io  # noqa: E402
from vla_ros.engines.onnx_export import export_artifact, ExportOptions  # noqa: E402
from vla_ros.engines.prefix_graph import (  # noqa: E402
    check_graph_io,
    DecodePrefixEncoder,
    INPUT_NAMES,
    LAST_LOGITS,
    logits_target,
    output_names,
    validation_inputs,
)
from vla_ros.errors import CheckpointError, EngineError  # noqa: E402
from vla_ros.model.checkpoint import EMBED_KEY, LM_HEAD_KEY, random_model  # noqa: E402
from vla_ros.model.config import get_config  # noqa: E402

FP32_TOL = 1e-4
MAX_NEW = 32


@pytest.fixture(scope="module")
def fast_export(tmp_path_factory):
    """(checkpoint dir, artifact dir, manifest) of an untrained pi0fast-tiny, exported once."""
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("pi0fast_export")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", "pi0fast-tiny", seed=7, dims=8)
    out = root / "artifact"
    manifest = export_artifact(checkpoint, out, ExportOptions())
    return checkpoint, out, manifest


def _observation():
    from vla_ros.types import RawObservation

    rng = np.random.default_rng(3)
    return RawObservation(
        images={"base_0_rgb": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)},
        state=np.linspace(-0.5, 0.5, 8).astype(np.float32),
        prompt="pick up the cube",
        timestamp=1.0,
    )


def _decode(policy, inputs):
    """(greedy result, copy of the first logits) of one observation through the policy's engine."""
    policy.engine.encode_prefix(inputs)
    first = policy.engine.decoder.first_logits.clone()
    return policy.engine.decode(policy._stop_ids), first


def _assert_same_decode(deployed, reference, inputs):
    """The artifact's prefix K/V, first logits, greedy ids and last step's logits equal the checkpoint's."""
    got, got_first = _decode(deployed, inputs)
    want, want_first = _decode(reference, inputs)
    assert not got_first.isnan().any()
    assert (got_first - want_first).abs().max().item() <= FP32_TOL
    assert got.ids.tolist() == want.ids.tolist() and got.stop == want.stop and got.num_tokens > 1
    mine, theirs = deployed.engine.decoder, reference.engine.decoder
    assert torch.equal(mine.prefix_pad, theirs.prefix_pad)
    real = mine.prefix_pad[0]  # the PyTorch prefix leaves masked slots as they were
    for name in ("prefix_keys", "prefix_values"):
        error = (getattr(mine, name)[..., real, :] - getattr(theirs, name)[..., real, :]).abs().max().item()
        assert error <= FP32_TOL, name
    assert (mine.logits - theirs.logits).abs().max().item() <= FP32_TOL  # the last decode step's


def test_manifest_names_pi0fast_and_carries_the_decode_stage(fast_export):
    from safetensors import safe_open

    _, out, manifest = fast_export
    assert manifest["variant"] == "pi0fast" and manifest["stages"] == ["prefix", "decode"]
    assert manifest["config"]["name"] == "pi0fast-tiny" and manifest["suffix"] is None
    outputs = {o["name"]: o for o in manifest["graph"]["outputs"]}
    assert set(outputs) == set(output_names(2, logits=True))
    assert outputs[LAST_LOGITS]["shape"] == [1, 257152] and outputs[LAST_LOGITS]["dtype"] == "float32"
    validation = manifest["validation"]
    assert validation["status"] == "passed"
    for name in ("keys", "values", LAST_LOGITS):
        assert validation[name]["max_abs"] <= FP32_TOL, name
    assert validation[LAST_LOGITS]["argmax_equal"]
    decode = manifest["decode"]
    assert decode["file"] == "decode.safetensors" and decode["lm_head"].startswith("tied")
    with safe_open(str(out / "decode.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
    assert EMBED_KEY in names and LM_HEAD_KEY not in names  # the tied head is stored once
    assert all(artifact_io.is_decode_key(name) for name in names)
    assert not any("vision_tower" in name for name in names)
    for name in ("tokenizer.model", "fast_tokenizer/processor_config.json", "fast_tokenizer/tokenizer.json"):
        assert name in manifest["runtime_files"] and name in manifest["files"], name
    assert artifact_io.verify_artifact(out) == []


def test_artifact_decodes_the_same_tokens_as_the_checkpoint(fast_export):
    from vla_ros.engines.decode import DecodeEngine
    from vla_ros.policy import Policy, PolicyOptions

    checkpoint, out, _ = fast_export
    options = dict(device="cpu", precision="fp32", max_decoding_steps=MAX_NEW)
    reference = Policy.from_checkpoint(checkpoint, PolicyOptions(**options))
    deployed = Policy.from_artifacts(out, PolicyOptions(engine="onnx", **options))
    assert isinstance(deployed.engine, DecodeEngine)
    described = deployed.engine.describe()
    assert described["prefix"] == "onnxruntime" and described["prefix_logits_by_address"]
    assert deployed.spec.variant == "pi0fast"
    # Everything the policy reads comes from the artifact: tokenizers, statistics.
    assert deployed.tokenizer.source.is_relative_to(out) and deployed.spec.norm_stats.startswith(str(out))
    assert deployed.action_parser.fast.num_ids <= 256

    inputs, _ = deployed.preprocess(_observation())
    want_inputs, _ = reference.preprocess(_observation())
    for name in ("images", "image_masks", "tokens", "token_masks"):
        np.testing.assert_array_equal(getattr(inputs, name), getattr(want_inputs, name))
    decoder = deployed.engine.decoder
    pointer = decoder.first_logits.data_ptr()
    decoder.first_logits.fill_(float("nan"))  # onnxruntime must write it: nothing copies it
    _assert_same_decode(deployed, reference, inputs)
    assert decoder.first_logits.data_ptr() == pointer and deployed.engine.prefix.copied_outputs == ()
    # The same decoder again, another prompt: the bound buffers take the new observation.
    other = dataclasses.replace(_observation(), prompt="open the drawer")
    inputs, _ = deployed.preprocess(other)
    _assert_same_decode(deployed, reference, inputs)


def test_forced_tensorrt_on_the_cpu_warns_and_runs_the_onnx_graph(fast_export, caplog):
    from vla_ros.policy import Policy, PolicyOptions

    _, out, _ = fast_export
    with caplog.at_level(logging.WARNING, logger="vla_ros.engines.factory"):
        policy = Policy.from_artifacts(
            out, PolicyOptions(device="cpu", precision="fp32", engine="tensorrt", max_decoding_steps=4)
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'tensorrt'" in warnings[0] and "CPU" in warnings[0]
    assert policy.engine.prefix.name == "onnxruntime"
    inputs, _ = policy.preprocess(_observation())
    result, first = _decode(policy, inputs)
    assert torch.isfinite(first).all() and result.num_tokens >= 1


def test_decode_models_refuse_the_reference_engine_and_pytorch_on_artifacts(fast_export):
    from vla_ros.errors import ConfigError
    from vla_ros.policy import Policy, PolicyOptions

    checkpoint, out, _ = fast_export
    with pytest.raises(ConfigError, match="checkpoint directory"):
        Policy.from_artifacts(out, PolicyOptions(device="cpu", engine="reference"))
    with pytest.raises(ConfigError, match="checkpoint directory"):
        Policy.from_artifacts(out, PolicyOptions(device="cpu", engine="pytorch"))
    with pytest.raises(ConfigError, match="export"):
        Policy.from_checkpoint(checkpoint, PolicyOptions(device="cpu", engine="onnx"))


def test_decode_model_from_the_artifact_has_only_the_language_model(fast_export):
    from safetensors import safe_open

    checkpoint, out, _ = fast_export
    model, cfg = artifact_io.load_decode_model(out)
    assert cfg.is_fast and model.head_is_tied
    assert model.paligemma.vision_tower.vision_model.embeddings.patch_embedding.weight.is_meta
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as weights:
        for name, param in model.named_parameters():
            if artifact_io.is_decode_key(name):
                assert torch.equal(param, weights.get_tensor(name)), name
    mixed, _ = artifact_io.load_decode_model(out, dtype=torch.bfloat16)
    assert mixed.compute_dtype == torch.bfloat16 and mixed.head_is_tied
    assert mixed.language_model.norm.weight.dtype == torch.float32
    with pytest.raises(CheckpointError, match="no decode stage"):
        artifact_io.load_decode_model(_fake_artifact(out.parent / "pi0", get_config("pi0-tiny"), {}))


def _fake_artifact(directory, cfg, state):
    """An artifact directory holding only a manifest and decode.safetensors (`state`)."""
    directory.mkdir(parents=True, exist_ok=True)
    if state:
        artifact_io.save_decode(state, directory)
    artifact_io.write_manifest(directory, {"config": cfg.to_dict(), "decode": {"file": "decode.safetensors"}})
    return directory


def test_untied_head_goes_into_the_graph_and_the_decode_weights(tmp_path):
    """LeRobot's pi0-FAST has its own lm_head: the graph's logits and the decoder both read that one."""
    cfg = get_config("pi0fast-tiny")
    model = random_model(cfg, seed=4)
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    assert not model.head_is_tied
    inputs = validation_inputs(cfg, seed=1)
    with torch.no_grad():
        want = model.embed_prefix(**inputs)
        got = DecodePrefixEncoder(model)(*(inputs[name] for name in INPUT_NAMES))
    assert (got[-1] - want.last_logits).abs().max().item() <= 1e-5
    assert torch.equal(got[2 * cfg.prefix.depth], want.pad_mask)

    state = artifact_io.decode_state(model)
    assert LM_HEAD_KEY in state and EMBED_KEY in state
    loaded, _ = artifact_io.load_decode_model(_fake_artifact(tmp_path / "untied", cfg, state))
    assert not loaded.head_is_tied and torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    hidden = torch.randn(1, cfg.prefix.width)
    assert torch.allclose(loaded.logits(hidden), model.logits(hidden))

    del state[artifact_io.LANGUAGE_MODEL_PREFIX + "norm.weight"]
    with pytest.raises(CheckpointError, match="missing"):
        artifact_io.load_decode_model(_fake_artifact(tmp_path / "broken", cfg, state))


def test_decode_graph_io_needs_last_logits():
    depth = 2
    inputs = list(INPUT_NAMES)
    check_graph_io("g", inputs, output_names(depth, logits=True), depth, "re-export", logits=True)
    with pytest.raises(EngineError, match="last_logits"):
        check_graph_io("g", inputs, output_names(depth), depth, "re-export", logits=True)
    with pytest.raises(EngineError):
        check_graph_io("g", inputs, output_names(depth, logits=True), depth, "re-export")


def test_logits_are_bound_by_address_only_where_the_buffer_allows():
    own = torch.empty(1, 64)
    flat = torch.zeros(64 + 128)
    offset = (-flat.data_ptr() % 256) // 4
    aligned = flat[offset:offset + 64].view(1, 64)
    assert logits_target(own, None) is own
    assert logits_target(own, aligned).data_ptr() == aligned.data_ptr()
    assert logits_target(own, aligned, alignment=256).data_ptr() == aligned.data_ptr()
    assert logits_target(own, flat[offset + 1:offset + 65].view(1, 64), alignment=256) is own  # TensorRT
    assert logits_target(own, torch.zeros(1, 64, dtype=torch.bfloat16)) is own
    assert logits_target(own, torch.zeros(64, 2)[:, 0].view(1, 64)) is own  # strided: not one dense block
    with pytest.raises(EngineError, match="vocabulary"):
        logits_target(own, torch.zeros(1, 65))


# -- GPU only ----------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gpu_against_checkpoint(deployed, checkpoint):
    """First logits (TF32 kernels: within 1e-2 of the range) and greedy ids vs the checkpoint, on CUDA."""
    from vla_ros.policy import Policy, PolicyOptions

    reference = Policy.from_checkpoint(
        checkpoint, PolicyOptions(device="cuda", precision="fp32", max_decoding_steps=MAX_NEW)
    )
    inputs, _ = deployed.preprocess(_observation())
    deployed.engine.decoder.first_logits.fill_(float("nan"))
    got, got_first = _decode(deployed, inputs)
    want, want_first = _decode(reference, inputs)
    torch.cuda.synchronize()
    assert not got_first.isnan().any()
    assert (got_first - want_first).abs().max().item() <= 1e-2 * max(1.0, want_first.abs().max().item())
    assert got.ids.tolist() == want.ids.tolist()


@needs_cuda
def test_gpu_onnx_prefix_writes_kv_and_logits_into_the_decoder(fast_export):
    import onnxruntime as ort

    from vla_ros.policy import Policy, PolicyOptions

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider")
    checkpoint, out, _ = fast_export
    deployed = Policy.from_artifacts(
        out, PolicyOptions(device="cuda", precision="fp32", engine="onnx", max_decoding_steps=MAX_NEW)
    )
    prefix = deployed.engine.prefix
    assert prefix.device.type == "cuda" and deployed.engine.stream is prefix.stream
    assert deployed.engine.describe()["prefix_logits_by_address"]
    _gpu_against_checkpoint(deployed, checkpoint)
    assert prefix.copied_outputs == ()


@needs_cuda
def test_gpu_tensorrt_engine_writes_kv_and_logits_into_the_decoder(fast_export, tmp_path):
    pytest.importorskip("tensorrt")
    from vla_ros.policy import Policy, PolicyOptions

    checkpoint, _, _ = fast_export
    out = tmp_path / "trt"
    manifest = export_artifact(checkpoint, out, ExportOptions(tensorrt=True, workspace_gib=1.0))
    assert manifest["tensorrt_engine"]["file"] == "prefix.engine"
    deployed = Policy.from_artifacts(
        out, PolicyOptions(device="cuda", precision="fp32", max_decoding_steps=MAX_NEW)
    )
    prefix = deployed.engine.prefix
    assert prefix.name == "tensorrt"
    decoder = deployed.engine.decoder
    _gpu_against_checkpoint(deployed, checkpoint)
    assert prefix.copied_outputs == ()
    assert prefix._context.get_tensor_address(LAST_LOGITS) == decoder.first_logits.data_ptr()
    assert prefix._context.get_tensor_address("keys_0") == decoder.keys[0].data_ptr()
