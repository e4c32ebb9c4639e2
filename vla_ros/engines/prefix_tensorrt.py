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

from vla_ros.engines.artifact import read_manifest
from vla_ros.engines.prefix_graph import INPUT_NAMES, OUTPUT_NAMES, output_targets, stage_inputs
from vla_ros.errors import ConfigError, EngineError
from vla_ros.model.config import PolicyConfig

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


def engine_unusable_reason(manifest: dict) -> str | None:
    """Why this machine cannot run the artifact's prefix.engine natively, or None if it can."""
    entry = manifest.get("tensorrt_engine")
    if not entry:
        return "the artifact has no prefix.engine (export with --tensorrt on the robot's GPU)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        import tensorrt
    except ImportError:
        return "the tensorrt package is not importable here"
    if entry.get("tensorrt_version") != tensorrt.__version__:
        return (f"prefix.engine was built by TensorRT {entry.get('tensorrt_version')}, this is "
                f"{tensorrt.__version__} (serialized engines only load in the version that built them)")
    gpu = torch.cuda.get_device_name()
    if entry.get("gpu") not in (gpu, "unknown"):
        return f"prefix.engine was built on a {entry.get('gpu')}, this is a {gpu}"
    return None


def _torch_dtype(trt, data_type) -> torch.dtype:
    table = {
        "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
        "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
    }
    for name, dtype in table.items():
        if getattr(trt.DataType, name, None) == data_type:
            return dtype
    raise EngineError(f"prefix.engine has a tensor of TensorRT type {data_type}, which torch cannot hold")


class TensorRTPrefixRuntime:
    """Runs the artifact's serialized prefix.engine with TensorRT itself, no onnxruntime in between.

    Every engine tensor gets a static CUDA tensor, its address set once; `run`
    stages the inputs, points the K/V outputs at the caller's buffers where
    their dtype and device match (the suffix's static cache: no copy), and
    enqueues the engine on torch's current stream, so the suffix that follows on
    the same stream needs no host synchronisation.
    """

    name = "tensorrt"

    def __init__(self, artifact_dir: str | Path, device_id: int = 0):
        self.artifact_dir = Path(artifact_dir)
        manifest = read_manifest(self.artifact_dir)
        reason = engine_unusable_reason(manifest)
        if reason:
            raise EngineError(f"cannot run {self.artifact_dir / 'prefix.engine'} with TensorRT: {reason}")
        self.cfg = PolicyConfig.from_dict(manifest["config"])
        self.precision = manifest["precision"]
        self.device = torch.device("cuda", device_id)
        trt = import_tensorrt()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        path = self.artifact_dir / manifest["tensorrt_engine"]["file"]
        with torch.cuda.device(self.device):
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise EngineError(f"TensorRT could not deserialize {path} (see the TensorRT log above)")
            self._context = self._engine.create_execution_context()
        self._inputs: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            shape = tuple(self._engine.get_tensor_shape(name))
            dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(name))
            tensor = torch.zeros(shape, dtype=dtype, device=self.device)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs)[name] = tensor
            self._context.set_tensor_address(name, tensor.data_ptr())
        if set(self._inputs) != set(INPUT_NAMES) or set(self._outputs) != set(OUTPUT_NAMES):
            raise EngineError(
                f"{path} has inputs {sorted(self._inputs)} and outputs {sorted(self._outputs)}; expected "
                f"{list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)}: re-export with `vla-ros export --tensorrt`"
            )
        self._addresses = {name: t.data_ptr() for name, t in self._outputs.items()}

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self._outputs.items()}

    def run(self, images, image_masks, tokens, token_masks,
            keys: torch.Tensor, values: torch.Tensor, pad_mask: torch.Tensor) -> None:
        """Same contract as OnnxPrefixRuntime.run: K/V and pad mask written in place."""
        stage_inputs(self._inputs, (images, image_masks, tokens, token_masks), self.cfg)
        bound, staged = output_targets(self._outputs, (keys, values, pad_mask))
        for name, tensor in bound.items():
            if self._addresses[name] != tensor.data_ptr():
                self._context.set_tensor_address(name, tensor.data_ptr())
                self._addresses[name] = tensor.data_ptr()
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT failed to enqueue prefix.engine (see the TensorRT log above)")
        for target, own in staged:
            target.copy_(own)

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "device": str(self.device),
            "precision": self.precision,
            "engine_file": str(self.artifact_dir / "prefix.engine"),
        }
