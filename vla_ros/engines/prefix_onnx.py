"""The prefix encoder on onnxruntime: images + prompt -> K/V, written into the suffix runtime's buffers.

Runs `prefix.onnx` from an artifact made by `vla-ros export`. Everything is
allocated once in __init__ (the pattern of the TensorRT samples' infer.py): input
staging tensors on the session's device, bound to the graph by pointer, and
output tensors for the outputs the caller's buffers cannot take directly.
`run` binds each layer's K/V output to that layer's region of the caller's
buffers (prefix_graph.output_regions): where the region is one dense block of
the graph's dtype on the session's device (the suffix's static cache, one KV
head) onnxruntime writes the suffix's K/V by address and nothing is copied;
`copied_outputs` names the outputs that went through a copy in the last run.
A decode model's graph also outputs `last_logits`: bound by address to the
buffer `bind_logits` names (the decode stage's `first_logits`) where it can be,
else written to the runtime's own tensor, which `run` returns for the caller to copy.

On a GPU the session runs on one dedicated CUDA stream (cuda_stream.py), handed
to the CUDA provider as `user_compute_stream` (onnxruntime 1.17+), and each run
skips onnxruntime's end-of-run synchronisation: the suffix that follows on the
same stream is ordered after the K/V without the host waiting. An older
onnxruntime runs on its own stream: then, and only then, run() waits for the
staged inputs and keeps onnxruntime's synchronisation.

Provider choice: onnxruntime-gpu lists the TensorRT and CUDA providers even on
machines without a GPU or without the CUDA/TensorRT libraries, so a provider
counts as usable only when it is listed AND torch sees a CUDA device; and since
onnxruntime itself falls back silently when a provider fails to load, the
providers of the created session are checked again. `auto` never picks
onnxruntime's TensorRT provider: for a multi-gigabyte prefix graph it hits
protobuf's 2 GB limit and builds its engine inside the first session (minutes,
in the node's configure); the artifact's own `prefix.engine` (prefix_tensorrt.py,
chosen by the factory before onnxruntime) is the TensorRT path. The provider
is used only when asked for by name; its options and engine cache come from
prefix_tensorrt.py, which with suffix_cuda_graph.py are the only modules that
touch TensorRT / CUDA graphs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from vla_ros.engines import prefix_tensorrt
from vla_ros.engines.artifact import read_manifest
from vla_ros.engines.cuda_stream import dedicated_stream, running_on, stream_handle
from vla_ros.engines.prefix_graph import (
    check_graph_io,
    kv_shape,
    LAST_LOGITS,
    logits_target,
    ONNX_ELEMENT_TYPES,
    ort_type_to_torch,
    output_regions,
    output_targets,
    split_logits,
    stage_inputs,
    staging_reason,
)
from vla_ros.errors import ConfigError, EngineError
from vla_ros.model.config import PolicyConfig

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_CHOICES = ("auto", "tensorrt", "cuda", "openvino", "cpu")
# auto: the native prefix.engine is chosen before onnxruntime (factory.resolve_prefix_engine);
# onnxruntime's TensorRT provider only when asked for (see the module docstring).
_PREFERENCE = {
    "auto": (CUDA, OPENVINO, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
    "cuda": (CUDA, CPU),
    "openvino": (OPENVINO, CPU),
    "cpu": (CPU,),
}
_GPU_PROVIDERS = (TENSORRT, CUDA)
# onnxruntime's Python API takes `user_compute_stream` from 1.17 (microsoft/onnxruntime#19229).
USER_STREAM_MIN_VERSION = (1, 17)
# Run option that skips the providers' end-of-run stream synchronisation.
NO_SYNC_RUN_OPTION = "disable_synchronize_execution_providers"


def takes_user_stream(version: str) -> bool:
    """Whether this onnxruntime version accepts a CUDA stream through the Python provider options."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= USER_STREAM_MIN_VERSION


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

    providers: "auto" (CUDA, then OpenVINO, then CPU, each only when usable), or
    force "tensorrt" / "cuda" / "openvino" / "cpu" (an unusable forced provider
    logs one warning and the next one is used; "tensorrt" is onnxruntime's
    TensorRT provider, never chosen by auto). num_threads sets onnxruntime's intra-op
    threads (None: its default, one per core). engine_cache_dir holds the
    TensorRT provider's engine and timing caches (default: a folder in the
    artifact, or under ~/.cache/vla_ros when the artifact is read-only).
    cpu_bf16 sets the OpenVINO provider's inference precision (None: bf16 where
    the CPU has native bf16 matmuls; False for fp32 parity). stream: the CUDA
    stream a GPU session runs on (None: a new dedicated one; `self.stream`
    holds it, None on the CPU).
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
        stream: "torch.cuda.Stream | None" = None,
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
        self.stream = None
        if chain[0] in _GPU_PROVIDERS:
            self.stream = stream if stream is not None else dedicated_stream(torch.device("cuda", device_id))
        # The stream handed to onnxruntime; None: onnxruntime runs on a stream of its own.
        self._ort_stream = stream_handle(self.stream) if takes_user_stream(ort.__version__) else None
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
            self.stream = self._ort_stream = None
        self._run_options = ort.RunOptions()
        if self._ort_stream is not None:
            # Ordered by the shared stream: the caller synchronises when it reads results.
            self._run_options.add_run_config_entry(NO_SYNC_RUN_OPTION, "1")

        self._inputs = {
            spec.name: torch.zeros(spec.shape, dtype=ort_type_to_torch(spec.type), device=self.device)
            for spec in self._session.get_inputs()
        }
        self._outputs = {
            spec.name: torch.empty(spec.shape, dtype=ort_type_to_torch(spec.type), device=self.device)
            for spec in self._session.get_outputs()
        }
        check_graph_io(self.graph_path, self._inputs, self._outputs, self.cfg.prefix.depth,
                       "re-export with `vla-ros export`", logits=self.cfg.is_fast)
        self._kv_outputs, self._logits_output = split_logits(self._outputs)
        self.logits_buffer: torch.Tensor | None = None
        self._binding = self._session.io_binding()
        for name, tensor in self._inputs.items():
            self._bind(name, tensor, output=False)
        self._bound_outputs: dict[str, tuple[int, torch.dtype, torch.device]] = {}
        self._said_staging = False
        self.copied_outputs: tuple[str, ...] = ()
        if self.stream is not None:
            # The buffers above were zeroed on the loading stream; order the dedicated one after it.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))

    # -- session setup ---------------------------------------------------------------------------
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
    def has_logits(self) -> bool:
        """Whether the graph outputs last_logits (decode models)."""
        return self._logits_output is not None

    def bind_logits(self, buffer: torch.Tensor | None) -> None:
        """Where `run` writes last_logits from now on (the decode stage's first_logits); None: return them."""
        if buffer is not None and not self.has_logits:
            raise EngineError(f"{self.graph_path} has no {LAST_LOGITS} output (not a decode model's graph)")
        self.logits_buffer = buffer

    @property
    def kv_shape(self) -> tuple[int, ...]:
        """(L, 1, KV, P, hd): the keys / values buffers `run` fills."""
        return kv_shape(self.output_shapes)

    @property
    def output_dtype(self) -> torch.dtype:
        """dtype of the graph's keys / values (the export precision)."""
        return self._outputs["keys" if "keys" in self._outputs else "keys_0"].dtype

    def allocate_outputs(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fresh (keys, values, pad_mask) buffers of the graph's shapes; defaults bind directly (no copy)."""
        device = self.device if device is None else torch.device(device)
        dtype = self.output_dtype if dtype is None else dtype
        return (torch.zeros(self.kv_shape, dtype=dtype, device=device),
                torch.zeros(self.kv_shape, dtype=dtype, device=device),
                torch.zeros(self.output_shapes["pad_mask"], dtype=torch.bool, device=device))

    def run(self, images, image_masks, tokens, token_masks,
            keys: torch.Tensor, values: torch.Tensor, pad_mask: torch.Tensor,
            logits: torch.Tensor | None = None) -> torch.Tensor | None:
        """Encode one observation into keys, values (layers, 1, KV, P, hd) and pad_mask (1, P), in place.

        Decode models: last_logits (1, vocab) fp32 goes to `logits` (default: the
        `bind_logits` buffer) by address where that buffer is dense fp32 on the
        session's device, and run returns None; otherwise run returns the
        runtime's own last_logits tensor (valid until the next run) to copy.
        Graphs without last_logits return None.

        Inputs are numpy arrays or torch tensors, batched (1, ...) or not: images uint8
        (N, 224, 224, 3), image_masks bool (N,), tokens int (L,), token_masks bool (L,).
        Each layer's K and V are written by onnxruntime straight into keys[l] / values[l]
        where that region is dense, on the session's device and in the graph's dtype
        (the suffix's buffers with one KV head); others (bf16 buffers for an fp32 graph,
        CPU buffers for a GPU session) get a cast copy from the runtime's own outputs.
        On a GPU the work is queued on `self.stream`, ordered after the caller's
        current stream and before its later work, without a host synchronisation.
        """
        regions = output_regions(self._kv_outputs, keys, values, pad_mask)
        bound, staged = output_targets(self._kv_outputs, regions)
        returned = None
        if self._logits_output is not None:
            target = self.logits_buffer if logits is None else logits
            bound[LAST_LOGITS] = logits_target(self._logits_output, target)
            if bound[LAST_LOGITS] is self._logits_output:
                returned = self._logits_output
        for name, tensor in bound.items():
            key = (tensor.data_ptr(), tensor.dtype, tensor.device)
            if self._bound_outputs.get(name) != key:
                self._bind(name, tensor, output=True)
                self._bound_outputs[name] = key
        if staged and not self._said_staging:
            log.info("%d of %d prefix outputs are not written by address: one cast copy each per run (%s)",
                     len(staged), len(bound), staging_reason(*staged[0]))
            self._said_staging = True
        self.copied_outputs = tuple(name for name, tensor in bound.items() if tensor is self._outputs[name])
        with running_on(self.stream):
            stage_inputs(self._inputs, (images, image_masks, tokens, token_masks), self.cfg)
            if self.device.type == "cuda" and self._ort_stream is None:
                # onnxruntime runs on a stream of its own: the staged inputs must be in place.
                torch.cuda.current_stream(self.device).synchronize()
            self._session.run_with_iobinding(self._binding, self._run_options)
            for target, own in staged:
                target.copy_(own)
        return returned

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
            "cuda_stream": "dedicated" if self._ort_stream else ("onnxruntime's" if self.stream else None),
            "copied_outputs": len(self.copied_outputs),
            **({"logits_by_address": logits_target(self._logits_output, self.logits_buffer)
                is not self._logits_output} if self.has_logits else {}),
        }
