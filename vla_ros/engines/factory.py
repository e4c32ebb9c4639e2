"""Chooses and builds the inference engine from PolicyOptions.

Heavy and optional imports (onnxruntime, TensorRT, CUDA graph capture) happen
here, lazily, so that importing vla_ros stays cheap and CPU-only machines never
touch GPU-only modules.

Defaults (`auto`):
- device: CUDA when available, else CPU;
- precision: the reference engine runs fp32 on the CPU (it is the parity
  baseline); optimised engines run bf16 wherever the hardware does bf16 matmuls
  natively (CUDA, CPUs with AMX or AVX512-BF16), fp32 elsewhere;
- prefix: PyTorch for a checkpoint directory; for an exported artifact
  directory (it holds no prefix weights) its serialized TensorRT engine where
  that runs here, else the ONNX graph under onnxruntime (its CUDA provider on a
  GPU, never its TensorRT provider unless asked for; OpenVINO's provider on a
  CPU where onnxruntime-openvino is installed);
- suffix: a replayed CUDA graph on CUDA, eager static buffers on the CPU;
- decode (pi0-FAST): the same prefix choice (an artifact's graph also gives
  the first logits, written into the decoder's buffer), then the static-cache
  decode step, a replayed CUDA graph on CUDA, eager on the CPU;
- weights: bf16 models on the CPU are packed for oneDNN (engines/cpu_packed.py).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from vla_ros.engines.base import Engine
from vla_ros.errors import ConfigError
from vla_ros.model.config import PolicyConfig

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MANIFEST_FILE = "manifest.json"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16 present (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        log.warning("policy.device is 'cuda' but no CUDA device is available; using the CPU")
        return torch.device("cpu")
    return torch.device(device)


# Below this size a policy is dispatch-bound on the CPU: bf16 casts cost more than its
# matmuls save (measured: pi0-tiny suffix 1.27x faster than the reference in fp32, 0.95x in
# bf16; pi0-mid, 159 M parameters, 2x faster in bf16).
BF16_MIN_CPU_PARAMETERS = 20_000_000


def count_parameters(cfg: PolicyConfig) -> int:
    from vla_ros.model.checkpoint import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).parameters())


def resolve_dtype(
    precision: str, device: torch.device, reference: bool = False, cfg: PolicyConfig | None = None
) -> torch.dtype:
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16
    if reference or not cpu_has_native_bf16():
        return torch.float32
    if cfg is not None and count_parameters(cfg) < BF16_MIN_CPU_PARAMETERS:
        return torch.float32
    return torch.bfloat16


def resolve_suffix(suffix: str, device: torch.device) -> str:
    if suffix == "auto":
        return "cuda_graph" if device.type == "cuda" else "eager"
    if suffix == "cuda_graph" and device.type != "cuda":
        log.warning("policy.suffix 'cuda_graph' needs CUDA; running the static suffix eagerly on the CPU")
        return "eager"
    return suffix


def pack_for_cpu(model, suffix: str = "eager", inplace: bool = False):
    """The model with its bf16 CPU layers packed (engines/cpu_packed.py), or as it is if that can't apply."""
    from vla_ros.engines import cpu_packed

    if model.compute_dtype != torch.bfloat16 or model.device.type != "cpu":
        return model
    if not cpu_packed.packing_available():
        log.info("oneDNN packed linear ops unavailable in this torch build; using plain bf16 matmuls")
        return model
    if model.cfg.variant == "smolvla":
        from vla_ros.engines.suffix_smolvla import pack_smolvla

        return pack_smolvla(model, expert=suffix != "compiled", inplace=inplace)
    return cpu_packed.pack_model(model, expert=suffix != "compiled", inplace=inplace)


def cpu_onnx_providers() -> str:
    """onnxruntime providers for a CPU engine: OpenVINO (bf16 matmuls) where installed, else the CPU's."""
    import onnxruntime

    from vla_ros.engines.prefix_onnx import OPENVINO

    return "openvino" if OPENVINO in onnxruntime.get_available_providers() else "cpu"


def is_artifact_dir(directory: Path) -> bool:
    return (Path(directory) / MANIFEST_FILE).is_file()


def resolve_prefix_engine(engine: str, directory: Path, device: torch.device) -> str:
    """'pytorch', 'onnx' or 'tensorrt' for `policy.engine` and the directory it names.

    auto: PyTorch for a checkpoint directory; for an artifact, the serialized
    TensorRT engine where it runs on `device` (CUDA, the building TensorRT
    version, GPU model and compute capability), else the ONNX graph under
    onnxruntime (its CUDA provider on a GPU: its TensorRT provider is never the
    automatic choice, see prefix_onnx.py). A forced 'tensorrt' that can't run
    here warns once and takes the ONNX graph.
    """
    artifacts = is_artifact_dir(directory)
    if engine in ("onnx", "tensorrt") and not artifacts:
        raise ConfigError(
            "policy.engine",
            f"'{engine}' needs an exported artifact directory ({directory} has no {MANIFEST_FILE}); "
            f"run `vla-ros export --checkpoint {directory} --out ARTIFACT_DIR"
            f"{' --tensorrt' if engine == 'tensorrt' else ''}` first",
        )
    if engine == "pytorch" and artifacts:
        raise ConfigError(
            "policy.engine", "'pytorch' needs a checkpoint directory; artifacts hold no prefix weights"
        )
    if engine == "auto" and not artifacts:
        return "pytorch"
    if engine not in ("auto", "tensorrt"):
        return engine
    from vla_ros.engines.artifact import read_manifest
    from vla_ros.engines.prefix_tensorrt import engine_unusable_reason

    if device.type != "cuda":
        reason = "policy.device is the CPU"
    else:
        reason = engine_unusable_reason(read_manifest(directory), _device_index(device))
    if reason is None:
        return "tensorrt"
    if engine == "tensorrt":
        log.warning(
            "policy.engine 'tensorrt' can't run here: %s; running the ONNX graph with onnxruntime", reason
        )
    return "onnx"


def _device_index(device: torch.device) -> int:
    """The CUDA device index `device` names (a bare 'cuda' is torch's current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def build_engine(directory: Path, options, source: str = "openpi") -> tuple[Engine, PolicyConfig]:
    """Engine and model config for a checkpoint or exported artifact directory.

    `source` ("openpi" / "lerobot", the checkpoint's provenance) sets the
    conventions of the decode stage that differ between them (see StaticDecoder).

    `options.num_steps` None: the checkpoint's (`Policy.from_checkpoint` resolves it before).
    """
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    directory = Path(directory)
    num_steps = options.num_steps
    if num_steps is None:
        from vla_ros.policy import checkpoint_num_steps

        num_steps = checkpoint_num_steps(directory)
    device = resolve_device(options.device)
    reference = options.engine == "reference" or options.suffix == "reference"
    artifacts = is_artifact_dir(directory)
    cfg = None
    if not artifacts or (options.precision == "auto" and device.type == "cpu"):
        from vla_ros.model.checkpoint import config_from_checkpoint

        cfg = config_from_checkpoint(directory)
    if cfg is not None and cfg.variant == "smolvla":
        return _build_smolvla_engine(directory, options, cfg, device, num_steps, reference, artifacts)
    dtype = resolve_dtype(options.precision, device, reference, cfg)
    if cfg is None and artifacts:
        cfg = config_from_manifest(directory)  # the family decides the stages; the manifest says which
    if cfg is not None and cfg.is_fast:
        return _build_decode_engine(directory, options, cfg, device, dtype, reference, source)

    if reference:
        if artifacts:
            raise ConfigError(
                "policy.engine", "'reference' needs a checkpoint directory, not an exported artifact"
            )
        from vla_ros.engines.reference import ReferenceEngine
        from vla_ros.model.checkpoint import load_model

        model, cfg = load_model(directory, dtype=dtype, device=device)
        return ReferenceEngine(model, num_steps), cfg

    from vla_ros.engines.optimized import OptimizedEngine
    from vla_ros.engines.suffix import StaticSuffixDenoiser

    suffix_mode = resolve_suffix(options.suffix, device)
    prefix_engine = resolve_prefix_engine(options.engine, directory, device)
    if prefix_engine == "pytorch":
        from vla_ros.model.checkpoint import load_model

        model, cfg = load_model(directory, dtype=dtype, device=device)
    else:
        from vla_ros.engines.artifact import load_suffix_model

        model, cfg = load_suffix_model(directory, dtype=dtype, device=device)
    if options.pack_weights:
        model = pack_for_cpu(model, suffix_mode, inplace=True)
    if prefix_engine == "pytorch":
        from vla_ros.engines.prefix_torch import TorchPrefixRuntime

        prefix = TorchPrefixRuntime(model)
    else:
        prefix = _artifact_prefix(prefix_engine, directory, options, device, dtype)
    denoiser = StaticSuffixDenoiser(model, num_steps, device, num_samples=options.num_samples)
    return OptimizedEngine(prefix, denoiser, suffix_mode), cfg


# openpi's pi0-FAST decodes its first token at RoPE position prefill_len + 1, one past the
# prompt's next free position (pi0_fast.py sample_actions); LeRobot 0.6.1 continues without a gap.
OPENPI_DECODE_POSITION_GAP = 1


def resolve_decode(mode: str, device: torch.device) -> str:
    """The decode step's runtime: a replayed CUDA graph on CUDA (policy.suffix auto), else eager."""
    if mode in ("auto", "cuda_graph") and device.type == "cuda":
        return "cuda_graph"
    if mode == "cuda_graph":
        log.warning("policy.suffix 'cuda_graph' (the decode step) needs CUDA; running it eagerly on the CPU")
    return "eager"


def config_from_manifest(directory: Path) -> PolicyConfig:
    """The model config an artifact directory was exported with."""
    from vla_ros.engines.artifact import read_manifest

    return PolicyConfig.from_dict(read_manifest(directory)["config"])


def _build_decode_engine(
    directory: Path, options, cfg: PolicyConfig, device: torch.device, dtype, reference: bool, source: str
):
    """A decode engine (pi0-FAST): a prefix runtime filling a static-cache decoder.

    For a checkpoint directory the prefix is PyTorch (or the reference engine);
    for an exported artifact it is the artifact's TensorRT engine or its ONNX
    graph under onnxruntime (`resolve_prefix_engine`), the graph's last_logits
    bound to the decoder's first_logits, and the decoder steps the language
    model loaded from the artifact's decode.safetensors.
    """
    from vla_ros.engines.decode import DecodeEngine, ReferenceDecodeEngine, StaticDecoder

    max_new = options.max_decoding_steps or cfg.decode.max_decoding_steps
    if options.suffix == "compiled":
        raise ConfigError("policy.suffix", "'compiled' is not available for the decode stage; use 'auto'")
    gap = OPENPI_DECODE_POSITION_GAP if source == "openpi" else 0
    if reference:
        if is_artifact_dir(directory):
            raise ConfigError(
                "policy.engine", "'reference' needs a checkpoint directory, not an exported artifact"
            )
        from vla_ros.model.checkpoint import load_model

        model, cfg = load_model(directory, dtype=dtype, device=device)
        return ReferenceDecodeEngine(model, max_new, gap, options.temperature, options.seed), cfg
    prefix_engine = resolve_prefix_engine(options.engine, directory, device)
    if prefix_engine == "pytorch":
        from vla_ros.model.checkpoint import load_model

        model, cfg = load_model(directory, dtype=dtype, device=device)
    else:
        from vla_ros.engines.artifact import load_decode_model

        model, cfg = load_decode_model(directory, dtype=dtype, device=device)
    if options.pack_weights:
        model = pack_for_cpu(model, "compiled", inplace=True)  # no expert to pack
    decoder = StaticDecoder(model, max_new, options.temperature, device, seed=options.seed, position_gap=gap)
    if prefix_engine == "pytorch":
        from vla_ros.engines.prefix_torch import TorchPrefixRuntime

        prefix = TorchPrefixRuntime(model)
    else:
        prefix = _artifact_prefix(prefix_engine, directory, options, device, dtype)
        prefix.bind_logits(decoder.first_logits)  # written by address where the runtime can
    return DecodeEngine(prefix, decoder, resolve_decode(options.suffix, device)), cfg


def _build_smolvla_engine(
    directory: Path, options, cfg, device: torch.device, num_steps: int, reference: bool, artifacts: bool
):
    """SmolVLA's engine for a checkpoint directory: optimised (auto, pytorch) or the eager reference.

    The optimised engine is the PyTorch prefix (state token included) and the
    static suffix (engines/suffix_smolvla.py), bf16 with packed weights where
    the CPU does bf16 natively (above BF16_MIN_CPU_PARAMETERS).
    """
    from vla_ros.model.checkpoint import load_model

    if artifacts or options.engine in ("onnx", "tensorrt"):
        raise ConfigError(
            "policy.engine", f"'{options.engine}': SmolVLA has no exported prefix yet; "
            "give a checkpoint directory and policy.engine 'auto', 'pytorch' or 'reference'"
        )
    dtype = resolve_dtype(options.precision, device, reference, cfg)
    if reference:
        from vla_ros.engines.reference import ReferenceEngine

        model, cfg = load_model(directory, dtype=dtype, device=device)
        return ReferenceEngine(model, num_steps), cfg
    from vla_ros.engines.optimized import OptimizedEngine
    from vla_ros.engines.prefix_torch import TorchPrefixRuntime
    from vla_ros.engines.suffix_smolvla import SmolVLASuffixDenoiser

    if options.suffix == "compiled":
        raise ConfigError(
            "policy.suffix", "'compiled': SmolVLA's static suffix runs eagerly or as a CUDA graph; use 'auto'"
        )
    suffix_mode = resolve_suffix(options.suffix, device)
    model, cfg = load_model(directory, dtype=dtype, device=device)
    if options.pack_weights:
        model = pack_for_cpu(model, suffix_mode, inplace=True)
    denoiser = SmolVLASuffixDenoiser(model, num_steps, device, num_samples=options.num_samples)
    return OptimizedEngine(TorchPrefixRuntime(model), denoiser, suffix_mode), cfg


def _artifact_prefix(prefix_engine: str, directory: Path, options, device: torch.device, dtype):
    """The artifact's prefix runtime: its TensorRT engine ('tensorrt') or its ONNX graph ('onnx')."""
    if prefix_engine == "tensorrt":
        from vla_ros.engines.prefix_tensorrt import TensorRTPrefixRuntime

        return TensorRTPrefixRuntime(directory, device_id=_device_index(device))
    from vla_ros.engines.prefix_onnx import OnnxPrefixRuntime

    providers = "auto" if device.type == "cuda" else cpu_onnx_providers()
    return OnnxPrefixRuntime(
        directory,
        providers=providers,
        num_threads=options.num_threads,
        device_id=_device_index(device) if device.type == "cuda" else 0,
        cpu_bf16=dtype == torch.bfloat16,
    )
