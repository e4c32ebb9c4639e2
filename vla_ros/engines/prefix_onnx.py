"""The prefix encoder on onnxruntime: images + prompt -> K/V, written into the suffix runtime's buffers.

Runs `prefix.onnx` from an artifact made by `vla-ros export`. Everything is
allocated once in __init__ (the pattern of the TensorRT samples' infer.py): input
staging tensors on the session's device, bound to the graph by pointer, and
output tensors for the case where the caller's buffers cannot be bound directly.
`run` binds the caller's K/V tensors as the graph outputs, so on the fast path
the prefix writes straight into the suffix runtime's static cache.

Provider choice: onnxruntime-gpu lists the TensorRT and CUDA providers even on
machines without a GPU or without the CUDA/TensorRT libraries, so a provider
counts as usable only when it is listed AND torch sees a CUDA device; and since
onnxruntime itself falls back silently when a provider fails to load, the
providers of the created session are checked again. The TensorRT provider's
options and engine cache come from prefix_tensorrt.py, which with
suffix_cuda_graph.py are the only modules that touch TensorRT / CUDA graphs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from vla_ros.engines import prefix_tensorrt
from vla_ros.engines.artifact import read_manifest
from vla_ros.engines.prefix_graph import (
    INPUT_NAMES,
    ONNX_ELEMENT_TYPES,
    ort_type_to_torch,
    OUTPUT_NAMES,
    output_targets,
    stage_inputs,
)
from vla_ros.errors import ConfigError, EngineError
from vla_ros.model.config import PolicyConfig

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_CHOICES = ("auto", "tensorrt", "cuda", "openvino", "cpu")
_PREFERENCE = {
    "auto": (TENSORRT, CUDA, OPENVINO, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
    "cuda": (CUDA, CPU),
    "openvino": (OPENVINO, CPU),
    "cpu": (CPU,),
}
_GPU_PROVIDERS = (TENSORRT, CUDA)


def _why_unusable(provider: str, available: Sequence[str], cuda_available: bool) -> str | None:
    if provider == CPU:
        return None
    if provider == OPENVINO:
        if provider in available:
            return None
        return (f"onnxruntime does not offer {provider} (install onnxruntime-openvino in place of "
                "onnxruntime-gpu: both provide the onnxruntime module)")
    if provider not in available:
        return f"onnxruntime does not offer {provider} (install onnxruntime-gpu built for this CUDA)"
    if not cuda_available:
        return f"{provider} is listed by onnxruntime but torch sees no CUDA device"
    return None


def choose_providers(
    requested: str, available: Sequence[str] | None = None, cuda_available: bool | None = None
) -> tuple[list[str], str | None]:
    """Providers for onnxruntime, best first (CPU always last), and a warning if `requested` can't be had.

    available / cuda_available default to what onnxruntime and torch report here.
    """
    if requested not in PROVIDER_CHOICES:
        raise ConfigError("providers", f"got {requested!r}, expected one of {list(PROVIDER_CHOICES)}")
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    preferred = _PREFERENCE[requested]
    chain = [p for p in preferred if _why_unusable(p, available, cuda_available) is None]
    warning = None
    if requested != "auto" and chain[0] != preferred[0]:
        warning = (f"onnxruntime provider '{requested}' is not usable: "
                   f"{_why_unusable(preferred[0], available, cuda_available)}; using {chain[0]} instead")
    return chain, warning


def openvino_options(num_threads: int | None, bf16: bool | None = None) -> dict[str, str]:
    """OpenVINO provider options for the CPU; bf16 None = bf16 where the CPU has native bf16.

    onnxruntime's own CPU provider has no bf16 matmul; OpenVINO runs an fp32
    graph in bf16 when asked through its plugin config (the issue measured
    1246 vs 293 GFLOP/s on an AMX CPU for a Gemma-2B GeGLU block; 2x here on
    the pi0-mid prefix).
    """
    if bf16 is None:
        from vla_ros.engines.factory import cpu_has_native_bf16

        bf16 = cpu_has_native_bf16()
    hint = "bf16" if bf16 else "f32"
    options = {
        "device_type": "CPU",
        "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": hint}}),
    }
    if num_threads:
        options["num_of_threads"] = str(num_threads)
    return options


class OnnxPrefixRuntime:
    """Runs an exported prefix graph with IO binding.

    providers: "auto" (TensorRT, then CUDA, then OpenVINO, then CPU, each only
    when usable), or force "tensorrt" / "cuda" / "openvino" / "cpu" (an unusable
    forced provider logs one warning and the next one is used). num_threads sets onnxruntime's intra-op
    threads (None: its default, one per core). engine_cache_dir holds the
    TensorRT provider's engine and timing caches (default: a folder in the
    artifact, or under ~/.cache/vla_ros when the artifact is read-only).
    cpu_bf16 sets the OpenVINO provider's inference precision (None: bf16 where
    the CPU has native bf16 matmuls; False for fp32 parity).
    """

    name = "onnxruntime"

    def __init__(
        self,
        artifact_dir: str | Path,
        providers: str = "auto",
        num_threads: int | None = None,
        engine_cache_dir: str | Path | None = None,
        device_id: int = 0,
        cpu_bf16: bool | None = None,
    ):
        import onnxruntime as ort

        if num_threads is not None and (not isinstance(num_threads, int) or num_threads <= 0):
            raise ConfigError("num_threads", f"expected a positive integer or None, got {num_threads!r}")
        self.artifact_dir = Path(artifact_dir)
        self.manifest = read_manifest(self.artifact_dir)
        self.cfg = PolicyConfig.from_dict(self.manifest["config"])
        self.precision: str = self.manifest["precision"]
        self.graph_path = self.artifact_dir / self.manifest["graph"]["file"]
        self.requested = providers
        self.num_threads = num_threads
        self.device_id = device_id
        self.cpu_bf16 = cpu_bf16

        chain, warning = choose_providers(providers)
        if warning:
            log.warning(warning)
        self.engine_cache_dir = (
            prefix_tensorrt.cache_dir(self.artifact_dir, self.manifest, engine_cache_dir)
            if TENSORRT in chain else None
        )
        self._ort_stream = self._torch_stream() if chain[0] in _GPU_PROVIDERS else None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = num_threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; fallbacks are reported by this class
        try:
            self._session = ort.InferenceSession(
                str(self.graph_path), sess_options=options, providers=chain,
                provider_options=[self._provider_options(p) for p in chain],
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            hint = ""
            if chain == [CPU] and self.precision == "bf16":
                hint = (" (onnxruntime's CPU provider has no bf16 kernels: export with --precision fp32 "
                        "for CPU inference, bf16 artifacts are for GPU providers)")
            raise EngineError(
                f"onnxruntime could not load {self.graph_path} with {chain}: {exc}{hint}"
            ) from exc
        self.providers: list[str] = self._session.get_providers()
        if self.providers[0] != chain[0]:
            log.warning(
                "onnxruntime fell back from %s to %s while creating the session (a provider library "
                "failed to load: check the CUDA / cuDNN / TensorRT versions onnxruntime %s needs)",
                chain[0], self.providers[0], ort.__version__,
            )
        on_gpu = self.providers[0] in _GPU_PROVIDERS
        self.device = torch.device("cuda", device_id) if on_gpu else torch.device("cpu")
        if not on_gpu:
            self._ort_stream = None

        self._inputs = {
            spec.name: torch.zeros(spec.shape, dtype=ort_type_to_torch(spec.type), device=self.device)
            for spec in self._session.get_inputs()
        }
        self._outputs = {
            spec.name: torch.empty(spec.shape, dtype=ort_type_to_torch(spec.type), device=self.device)
            for spec in self._session.get_outputs()
        }
        if set(self._inputs) != set(INPUT_NAMES) or set(self._outputs) != set(OUTPUT_NAMES):
            raise EngineError(
                f"{self.graph_path} has inputs {sorted(self._inputs)} and outputs {sorted(self._outputs)}; "
                f"expected {list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)}: re-export with `vla-ros export`"
            )
        self._binding = self._session.io_binding()
        for name, tensor in self._inputs.items():
            self._bind(name, tensor, output=False)
        self._bound_outputs: dict[str, tuple[int, torch.dtype, torch.device]] = {}
        self._said_staging = False

    # -- session setup ---------------------------------------------------------------------------
    def _torch_stream(self) -> int | None:
        # Running onnxruntime on torch's current stream orders it after the input copies
        # without a host sync. The legacy default stream (0) is not handed over: onnxruntime
        # would treat it as "no stream given", so run() synchronizes instead.
        try:
            stream = torch.cuda.current_stream(self.device_id).cuda_stream
        except (RuntimeError, AssertionError, AttributeError):  # torch without (working) CUDA
            return None
        return stream or None

    def _provider_options(self, provider: str) -> dict[str, str]:
        if provider == OPENVINO:
            return openvino_options(self.num_threads, self.cpu_bf16)
        if provider == TENSORRT:
            options = prefix_tensorrt.provider_options(self.manifest, self.engine_cache_dir, self.device_id)
        elif provider == CUDA:
            options = {
                "device_id": str(self.device_id),
                # Static shapes: the exhaustive search for the patch convolution runs once.
                "cudnn_conv_algo_search": "EXHAUSTIVE",
                "do_copy_in_default_stream": "1",
            }
        else:
            return {}
        if self._ort_stream is not None:
            options.update(has_user_compute_stream="1", user_compute_stream=str(self._ort_stream))
        return options

    # -- binding ------------------------------------------------------------------------------------
    def _bind(self, name: str, tensor: torch.Tensor, output: bool) -> None:
        device_type = "cuda" if tensor.device.type == "cuda" else "cpu"
        device_id = (tensor.device.index or 0) if device_type == "cuda" else 0
        bind = self._binding.bind_output if output else self._binding.bind_input
        element_type = ONNX_ELEMENT_TYPES[tensor.dtype]
        bind(name, device_type, device_id, element_type, list(tensor.shape), tensor.data_ptr())

    # -- public -------------------------------------------------------------------------------------
    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self._outputs.items()}

    @property
    def output_dtype(self) -> torch.dtype:
        """dtype of the graph's keys / values (the export precision)."""
        return self._outputs["keys"].dtype

    def allocate_outputs(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fresh (keys, values, pad_mask) buffers of the graph's shapes; defaults bind directly (no copy)."""
        device = self.device if device is None else torch.device(device)
        dtype = self.output_dtype if dtype is None else dtype
        shapes = self.output_shapes
        return (torch.zeros(shapes["keys"], dtype=dtype, device=device),
                torch.zeros(shapes["values"], dtype=dtype, device=device),
                torch.zeros(shapes["pad_mask"], dtype=torch.bool, device=device))

    def run(self, images, image_masks, tokens, token_masks,
            keys: torch.Tensor, values: torch.Tensor, pad_mask: torch.Tensor) -> None:
        """Encode one observation into keys, values (layers, 1, KV, P, hd) and pad_mask (1, P), in place.

        Inputs are numpy arrays or torch tensors, batched (1, ...) or not: images uint8
        (N, 224, 224, 3), image_masks bool (N,), tokens int (L,), token_masks bool (L,).
        Targets on the session's device in the graph's dtype are written by onnxruntime
        directly; others (e.g. bf16 buffers for an fp32 graph, or CPU buffers for a GPU
        session) get a cast copy from the runtime's own output tensors.
        """
        stage_inputs(self._inputs, (images, image_masks, tokens, token_masks), self.cfg)
        bound, staged = output_targets(self._outputs, (keys, values, pad_mask))
        for name, tensor in bound.items():
            key = (tensor.data_ptr(), tensor.dtype, tensor.device)
            if self._bound_outputs.get(name) != key:
                self._bind(name, tensor, output=True)
                self._bound_outputs[name] = key
        if staged and not self._said_staging:
            target, own = staged[0]
            log.info("prefix K/V buffers are %s on %s but the graph writes %s on %s: copying through the "
                     "runtime's output buffers (one extra cast copy per run)",
                     target.dtype, target.device, own.dtype, own.device)
            self._said_staging = True
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            if self._ort_stream is None or stream.cuda_stream != self._ort_stream:
                stream.synchronize()  # the input copies ran on another stream than onnxruntime's
        self._session.run_with_iobinding(self._binding)
        for target, own in staged:
            target.copy_(own)

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "providers": list(self.providers),
            "requested": self.requested,
            "device": str(self.device),
            "precision": self.precision,
            "output_dtype": str(self.output_dtype).replace("torch.", ""),
            "graph": str(self.graph_path),
            "exporter": self.manifest["graph"]["exporter"],
            "num_threads": self.num_threads,
            "engine_cache": str(self.engine_cache_dir) if self.engine_cache_dir else None,
        }
