"""TensorRT for the prefix encoder: the engine `vla-ros export --tensorrt` builds, the provider's options.

This module and suffix_cuda_graph.py are the only two that touch TensorRT / CUDA
graphs, so that everything else imports and runs on machines without either.
TensorRT reaches the prefix graph two ways:

- `build_engine` serializes prefix.engine for the exporting GPU (after the
  TensorRT samples' build_engine.py);
- onnxruntime's TensorRT execution provider builds and caches its own engine on
  first use. The manifest stores its options with cache paths relative to the
  artifact (`manifest_entries`); `cache_dir` and `provider_options` resolve them
  on the machine that runs the policy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from vla_ros.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

TRT_CACHE_DIR = "trt_cache"


def import_tensorrt():
    """The `tensorrt` module, or an EngineError that says what to install."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(
            "--tensorrt needs NVIDIA TensorRT's Python package, which is not importable here "
            f"({exc}): pip install tensorrt (or tensorrt-cu12 / tensorrt-cu13 to match this machine's CUDA "
            "major version; onnxruntime-gpu must be built for the same CUDA), then run the export again on "
            "the GPU that will run the policy. Without --tensorrt the artifact still works: onnxruntime's "
            "TensorRT provider builds and caches its engine on first use."
        ) from exc
    return tensorrt


def build_engine(onnx_path: Path, engine_path: Path, precision: str, workspace_gib: float = 8.0) -> dict:
    """Build and save a serialized TensorRT engine for the current GPU; returns its manifest entry."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # TensorRT raises plain TypeError / RuntimeError without a GPU
        raise EngineError(f"TensorRT could not create a builder ({exc}): is an NVIDIA GPU with a working "
                          "driver visible to this process?") from exc
    flag_enum = trt.NetworkDefinitionCreationFlag
    major = int(trt.__version__.split(".")[0])
    # A half-precision graph already carries its types (the reference fp32 islands
    # included): a strongly typed network keeps them instead of re-choosing per layer.
    strongly_typed = precision != "fp32" and hasattr(flag_enum, "STRONGLY_TYPED")
    flags = 0
    if strongly_typed:
        flags |= 1 << int(flag_enum.STRONGLY_TYPED)
    elif major < 10:
        flags |= 1 << int(flag_enum.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads the external data beside the graph
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not strongly_typed and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if not strongly_typed and precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path.write_bytes(bytes(memoryview(serialized)))
    return {
        "file": engine_path.name,
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown",
        "precision": precision,
        "strongly_typed": strongly_typed,
        "workspace_gib": workspace_gib,
        "note": "serialized engines only run on the GPU model and TensorRT version that built them",
    }


def ep_config(precision: str, workspace_gib: float = 8.0) -> dict[str, str]:
    """onnxruntime TensorRT-provider options for an artifact; cache paths relative to the artifact."""
    return {
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": TRT_CACHE_DIR,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": TRT_CACHE_DIR,
        "trt_fp16_enable": "1" if precision == "fp16" else "0",
        "trt_bf16_enable": "1" if precision == "bf16" else "0",
        "trt_max_workspace_size": str(int(workspace_gib * (1 << 30))),
    }


def manifest_entries(precision: str, workspace_gib: float, engine: dict | None) -> dict:
    """The manifest's TensorRT part: provider options and the `build_engine` entry (None if not built)."""
    return {"tensorrt_ep": ep_config(precision, workspace_gib), "tensorrt_engine": engine}


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def cache_dir(artifact_dir: Path, manifest: dict, requested: str | Path | None = None) -> Path:
    """Where the provider keeps its engine and timing caches, created if needed.

    `requested` if given (it must be writable), else the artifact's cache folder,
    else one under ~/.cache/vla_ros.
    """
    if requested is not None:
        path = Path(requested)
        if not _writable_dir(path):
            raise ConfigError("engine_cache_dir", f"{path} cannot be created or written")
        return path
    path = artifact_dir / manifest["tensorrt_ep"].get("trt_engine_cache_path", TRT_CACHE_DIR)
    if _writable_dir(path):
        return path
    # Installed artifacts may be read-only; key the fallback by the graph so caches never mix.
    digest = manifest["files"][manifest["graph"]["file"]]["sha256"][:16]
    fallback = Path.home() / ".cache" / "vla_ros" / TRT_CACHE_DIR / digest
    log.info("%s is not writable; TensorRT engine cache in %s", path, fallback)
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def provider_options(manifest: dict, cache: Path, device_id: int) -> dict[str, str]:
    """The manifest's provider options for this machine: absolute cache paths, the device."""
    options = dict(manifest["tensorrt_ep"])
    options.update(
        device_id=str(device_id),
        trt_engine_cache_path=str(cache),
        trt_timing_cache_path=str(cache),
    )
    return options
