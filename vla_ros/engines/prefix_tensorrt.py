"""TensorRT for the prefix encoder: the engine `vla-ros export --tensorrt` builds, the provider's options.

This module and suffix_cuda_graph.py are the only two that touch TensorRT / CUDA
graphs, so that everything else imports and runs on machines without either.
TensorRT reaches the prefix graph two ways:

- `build_engine` serializes prefix.engine for the exporting GPU (after the
  TensorRT samples' build_engine.py), and `TensorRTPrefixRuntime` runs it: the
  default on a GPU whenever the engine fits this TensorRT version and GPU;
- onnxruntime's TensorRT execution provider builds and caches its own engine on
  first use (only when asked for by name: see prefix_onnx.py). The manifest
  stores its options with cache paths relative to the artifact
  (`manifest_entries`); `cache_dir` and `provider_options` resolve them on the
  machine that runs the policy.

Builder flags differ by TensorRT version (`builder_flags`): networks need the
EXPLICIT_BATCH flag before TensorRT 10 (deprecated and ignored from 10);
STRONGLY_TYPED networks (TensorRT 9+) keep a half-precision graph's own types;
the BF16 builder flag exists from TensorRT 9 only, so a bf16 engine cannot be
built by TensorRT 8.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from vla_ros.engines.artifact import read_manifest
from vla_ros.engines.cuda_stream import dedicated_stream, running_on, stream_handle
from vla_ros.engines.prefix_graph import (
    check_graph_io,
    kv_shape,
    LAST_LOGITS,
    logits_target,
    output_regions,
    output_targets,
    split_logits,
    stage_inputs,
    staging_reason,
)
from vla_ros.errors import ConfigError, EngineError
from vla_ros.model.config import PolicyConfig

log = logging.getLogger(__name__)

TRT_CACHE_DIR = "trt_cache"
# IExecutionContext.set_tensor_address takes only 256-byte aligned addresses (NvInferRuntime.h).
TENSOR_ALIGNMENT = 256


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


def tensorrt_major(version: str) -> int:
    """TensorRT's major version from its version string ('10.3.0' -> 10)."""
    try:
        return int(version.split(".")[0])
    except ValueError as exc:
        raise EngineError(f"cannot read TensorRT's version from {version!r}") from exc


def builder_flags(trt, precision: str) -> tuple[int, list, bool]:
    """(network creation flags, builder config flags, strongly typed) for this TensorRT and precision.

    - EXPLICIT_BATCH before TensorRT 10 (the ONNX parser needs it; deprecated and
      ignored from 10, so not set there);
    - STRONGLY_TYPED for fp16 / bf16 graphs where TensorRT has it (9+): the graph
      already carries its types, the fp32 islands of the reference included, and
      the FP16 / BF16 builder flags are not allowed with it;
    - otherwise the FP16 flag, or the BF16 flag (TensorRT 9+; TensorRT 8 cannot
      build bf16 engines: an EngineError that says so).
    """
    major = tensorrt_major(trt.__version__)
    network_flag = trt.NetworkDefinitionCreationFlag
    flags = 0
    if major < 10 and hasattr(network_flag, "EXPLICIT_BATCH"):
        flags |= 1 << int(network_flag.EXPLICIT_BATCH)
    strongly_typed = precision != "fp32" and major >= 9 and hasattr(network_flag, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(network_flag.STRONGLY_TYPED)
    config_flags = []
    if not strongly_typed and precision == "fp16":
        config_flags.append(trt.BuilderFlag.FP16)
    if not strongly_typed and precision == "bf16":
        if major < 9 or not hasattr(trt.BuilderFlag, "BF16"):
            raise EngineError(
                f"TensorRT {trt.__version__} cannot build a bf16 engine (its BF16 builder flag and strongly "
                "typed networks came with TensorRT 9): export with --precision fp16 or fp32, or install "
                "TensorRT 9 or newer"
            )
        config_flags.append(trt.BuilderFlag.BF16)
    return flags, config_flags, strongly_typed


def _gpu_identity(device_id: int) -> dict[str, str]:
    """Name and compute capability of CUDA device `device_id`, as the manifest records them."""
    major, minor = torch.cuda.get_device_capability(device_id)
    return {"gpu": torch.cuda.get_device_name(device_id), "compute_capability": f"{major}.{minor}"}


def build_engine(onnx_path: Path, engine_path: Path, precision: str, workspace_gib: float = 8.0,
                 device_id: int | None = None) -> dict:
    """Build and save a serialized TensorRT engine for GPU `device_id` (None: the current one).

    Returns its manifest entry: TensorRT version, GPU name and compute capability,
    the flags used. A serialized engine runs only on that GPU model and TensorRT version.
    """
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise EngineError("--tensorrt needs a CUDA GPU visible to torch (the engine is built for that GPU)")
    device_id = torch.cuda.current_device() if device_id is None else device_id
    logger = trt.Logger(trt.Logger.WARNING)
    with torch.cuda.device(device_id):
        try:
            builder = trt.Builder(logger)
        except Exception as exc:  # TensorRT raises plain TypeError / RuntimeError without a GPU
            raise EngineError(f"TensorRT could not create a builder ({exc}): is an NVIDIA GPU with a working "
                              "driver visible to this process?") from exc
        network_flags, config_flags, strongly_typed = builder_flags(trt, precision)
        network = builder.create_network(network_flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):  # reads the external data beside the graph
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        for flag in config_flags:
            config.set_flag(flag)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path.write_bytes(bytes(memoryview(serialized)))
    return {
        "file": engine_path.name,
        "tensorrt_version": trt.__version__,
        **_gpu_identity(device_id),
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


def engine_unusable_reason(manifest: dict, device_id: int = 0) -> str | None:
    """Why CUDA device `device_id` cannot run the artifact's prefix.engine natively, or None if it can.

    Checked against that device (not torch's current one): its compute capability,
    then its name, with what the manifest recorded at build time.
    """
    entry = manifest.get("tensorrt_engine")
    if not entry:
        return "the artifact has no prefix.engine (export with --tensorrt on the robot's GPU)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if not 0 <= device_id < torch.cuda.device_count():
        return f"there is no CUDA device {device_id} (torch sees {torch.cuda.device_count()})"
    try:
        import tensorrt
    except ImportError:
        return "the tensorrt package is not importable here"
    if entry.get("tensorrt_version") != tensorrt.__version__:
        return (f"prefix.engine was built by TensorRT {entry.get('tensorrt_version')}, this is "
                f"{tensorrt.__version__} (serialized engines only load in the version that built them)")
    here = _gpu_identity(device_id)
    built = entry.get("compute_capability")
    if built is not None and built != here["compute_capability"]:
        return (f"prefix.engine was built for compute capability {built} ({entry.get('gpu')}), "
                f"CUDA device {device_id} is {here['compute_capability']} ({here['gpu']})")
    if entry.get("gpu") not in (here["gpu"], "unknown"):
        return f"prefix.engine was built on a {entry.get('gpu')}, CUDA device {device_id} is a {here['gpu']}"
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
    stages the inputs, points each layer's K/V output at that layer's region of
    the caller's buffers where it is one dense block of the engine's dtype on
    this device (the suffix's static cache with one KV head: TensorRT writes the
    suffix's K/V by address, no copy; `copied_outputs` names the outputs that
    were copied instead), and enqueues the engine on `self.stream`, one dedicated
    CUDA stream (not the legacy default stream, on which TensorRT adds
    synchronisations), ordered after the caller's current stream and before its
    later work, so the suffix that follows needs no host synchronisation.
    device_id selects the GPU; the engine is checked against that device.
    A decode model's engine also writes last_logits: into the `bind_logits`
    buffer (the decode stage's first_logits) where its address, device and
    dtype allow, else into the runtime's own tensor, which `run` returns.
    """

    name = "tensorrt"

    def __init__(self, artifact_dir: str | Path, device_id: int = 0,
                 stream: "torch.cuda.Stream | None" = None):
        self.artifact_dir = Path(artifact_dir)
        manifest = read_manifest(self.artifact_dir)
        reason = engine_unusable_reason(manifest, device_id)
        if reason:
            raise EngineError(f"cannot run {self.artifact_dir / 'prefix.engine'} with TensorRT: {reason}")
        self.cfg = PolicyConfig.from_dict(manifest["config"])
        self.precision = manifest["precision"]
        self.device = torch.device("cuda", device_id)
        self.stream = stream if stream is not None else dedicated_stream(self.device)
        trt = import_tensorrt()
        self._logger = trt.Logger(trt.Logger.WARNING)
        path = self.artifact_dir / manifest["tensorrt_engine"]["file"]
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise EngineError(f"TensorRT could not deserialize {path} on CUDA device {device_id} "
                                  "(see the TensorRT log above)")
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise EngineError(f"TensorRT could not create an execution context for {path} "
                                  f"on CUDA device {device_id} (out of GPU memory?)")
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
        check_graph_io(path, self._inputs, self._outputs, self.cfg.prefix.depth,
                       "re-export with `vla-ros export --tensorrt`", logits=self.cfg.is_fast)
        self._kv_outputs, self._logits_output = split_logits(self._outputs)
        self.logits_buffer: torch.Tensor | None = None
        self._engine_file = path
        self._addresses = {name: t.data_ptr() for name, t in self._outputs.items()}
        self._said_staging = False
        self.copied_outputs: tuple[str, ...] = ()
        if self.stream is not None:
            # The buffers above were zeroed on the loading stream; order the dedicated one after it.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self._outputs.items()}

    @property
    def kv_shape(self) -> tuple[int, ...]:
        """(L, 1, KV, P, hd): the keys / values buffers `run` fills."""
        return kv_shape(self.output_shapes)

    @property
    def has_logits(self) -> bool:
        """Whether the engine outputs last_logits (decode models)."""
        return self._logits_output is not None

    def bind_logits(self, buffer: torch.Tensor | None) -> None:
        """Where `run` writes last_logits from now on (the decode stage's first_logits); None: return them."""
        if buffer is not None and not self.has_logits:
            raise EngineError(f"{self._engine_file} has no {LAST_LOGITS} output (not a decode model's)")
        self.logits_buffer = buffer

    def run(self, images, image_masks, tokens, token_masks,
            keys: torch.Tensor, values: torch.Tensor, pad_mask: torch.Tensor,
            logits: torch.Tensor | None = None) -> torch.Tensor | None:
        """As OnnxPrefixRuntime.run: K/V and pad mask written in place; last_logits bound or returned."""
        regions = output_regions(self._kv_outputs, keys, values, pad_mask)
        bound, staged = output_targets(self._kv_outputs, regions, TENSOR_ALIGNMENT)
        returned = None
        if self._logits_output is not None:
            target = self.logits_buffer if logits is None else logits
            bound[LAST_LOGITS] = logits_target(self._logits_output, target, TENSOR_ALIGNMENT)
            if bound[LAST_LOGITS] is self._logits_output:
                returned = self._logits_output
        for name, tensor in bound.items():
            if self._addresses[name] != tensor.data_ptr():
                self._context.set_tensor_address(name, tensor.data_ptr())
                self._addresses[name] = tensor.data_ptr()
        if staged and not self._said_staging:
            log.info("%d of %d prefix outputs are not written by address: one cast copy each per run (%s)",
                     len(staged), len(bound), staging_reason(*staged[0], TENSOR_ALIGNMENT))
            self._said_staging = True
        self.copied_outputs = tuple(name for name, tensor in bound.items() if tensor is self._outputs[name])
        with running_on(self.stream):
            stage_inputs(self._inputs, (images, image_masks, tokens, token_masks), self.cfg)
            handle = torch.cuda.current_stream(self.device).cuda_stream
            if not self._context.execute_async_v3(handle):
                raise EngineError("TensorRT failed to enqueue prefix.engine (see the TensorRT log above)")
            for target, own in staged:
                target.copy_(own)
        return returned

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "device": str(self.device),
            "precision": self.precision,
            "engine_file": str(self.artifact_dir / "prefix.engine"),
            "cuda_stream": "dedicated" if stream_handle(self.stream) else "default",
            "copied_outputs": len(self.copied_outputs),
            **({"logits_by_address": logits_target(self._logits_output, self.logits_buffer, TENSOR_ALIGNMENT)
                is not self._logits_output} if self.has_logits else {}),
        }
