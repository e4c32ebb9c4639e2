"""Export the prefix encoder to ONNX and write a self-contained inference artifact.

`vla-ros export` turns a checkpoint directory into ARTIFACT_DIR, which a robot
computer can run without the checkpoint:

    prefix.onnx (+ prefix.onnx.data)  images + prompt -> per-layer K/V, static shapes, batch 1
    suffix.safetensors                only the weights the suffix denoiser needs (fp32)
    config.json, assets/<id>/norm_stats.json, <tokenizer>.model   copied from the checkpoint
    prefix.engine                     (--tensorrt) serialized TensorRT engine for the exporting GPU
    manifest.json                     config, graph IO, precision, exporter, tool versions,
                                      sha256 of every file, the validation errors

Export follows the TensorRT samples' split (create_onnx / build_engine / infer):
this module creates and checks the artifact, `prefix_onnx.OnnxPrefixRuntime`
runs it. Besides prefix_onnx.py, this is the only module that imports tensorrt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
from pathlib import Path
import shutil
import warnings

import torch
from torch import nn

from vla_ros.errors import CheckpointError, ConfigError, EngineError
from vla_ros.model.config import PolicyConfig
from vla_ros.model.pi0 import Pi0Model

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
GRAPH_FILE = "prefix.onnx"
GRAPH_DATA_FILE = GRAPH_FILE + ".data"
SUFFIX_FILE = "suffix.safetensors"
ENGINE_FILE = "prefix.engine"
TRT_CACHE_DIR = "trt_cache"
CONFIG_FILE = "config.json"
NORM_STATS_FILE = "norm_stats.json"
ARTIFACT_FORMAT = "vla_ros.prefix_artifact"
ARTIFACT_FORMAT_VERSION = 1

INPUT_NAMES = ("images", "image_masks", "tokens", "token_masks")
OUTPUT_NAMES = ("keys", "values", "pad_mask")

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXPORTERS = ("auto", "dynamo", "torchscript")
MIN_OPSET = 17
# The dynamo exporter emits opset 18 natively; its down-converter fails on this graph.
DEFAULT_OPSET = 18

# Allowed max |onnx - torch| of keys and values, as a fraction of max(1, max |reference|):
# for references within [-1, 1] (the tiny models) this is a plain absolute bound.
# Half precisions differ by kernel accumulation order over every layer, not by one rounding.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}

# protobuf caps a single ONNX file at 2 GiB; stay well below it (graph + metadata).
EXTERNAL_DATA_THRESHOLD = 1 << 30

# Weights the suffix denoiser reads (pi0-reference section 3); everything else is the prefix.
SUFFIX_KEY_PREFIXES = (
    "paligemma_with_expert.gemma_expert.",
    "action_in_proj.",
    "action_out_proj.",
    "state_proj.",
    "action_time_mlp_in.",
    "action_time_mlp_out.",
    "time_mlp_in.",
    "time_mlp_out.",
)

# onnx.TensorProto.DataType names -> the names used in the manifest (torch's).
_ONNX_TYPE_NAMES = {
    "FLOAT": "float32",
    "FLOAT16": "float16",
    "BFLOAT16": "bfloat16",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}
# Manifest dtype names -> torch dtypes.
DTYPES_BY_NAME = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "uint8": torch.uint8,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}
ONNX_ELEMENT_TYPES = {  # onnx.TensorProto.DataType values, as IO binding takes them
    torch.float32: 1, torch.uint8: 2, torch.int32: 6, torch.int64: 7,
    torch.bool: 9, torch.float16: 10, torch.bfloat16: 16,
}
_ORT_TYPES = {
    "tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
    "tensor(uint8)": torch.uint8, "tensor(int32)": torch.int32, "tensor(int64)": torch.int64,
    "tensor(bool)": torch.bool,
}


def is_suffix_key(name: str) -> bool:
    """True for a state-dict key the suffix denoiser needs (action expert, action heads, time MLPs)."""
    return name.startswith(SUFFIX_KEY_PREFIXES)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """How to export. Field names match the `vla-ros export` flags.

    external_data None chooses by size (always for the full-size models);
    tolerance None takes TOLERANCES[precision].
    """

    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    exporter: str = "auto"
    external_data: bool | None = None
    tensorrt: bool = False
    workspace_gib: float = 8.0
    tolerance: float | None = None
    validate: bool = True
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"got {self.precision!r}, expected one of {list(PRECISIONS)}")
        if not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise ConfigError("opset", f"got {self.opset!r}, expected an integer >= {MIN_OPSET}")
        if self.exporter not in EXPORTERS:
            raise ConfigError("exporter", f"got {self.exporter!r}, expected one of {list(EXPORTERS)}")
        if not self.workspace_gib > 0:
            raise ConfigError("workspace_gib", f"expected a positive size in GiB, got {self.workspace_gib!r}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ConfigError("tolerance", f"expected a positive number, got {self.tolerance!r}")

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def max_error(self) -> float:
        return TOLERANCES[self.precision] if self.tolerance is None else self.tolerance


class PrefixEncoder(nn.Module):
    """`Pi0Model.embed_prefix` with plain tensor outputs, the form an exporter can trace.

    images uint8 (1, N, 224, 224, 3) (the [-1, 1] scaling happens inside), image_masks
    bool (1, N), tokens int64 (1, L), token_masks bool (1, L) ->
    keys, values (layers, 1, KV, P, hd) in the model's compute dtype, pad_mask bool (1, P).
    """

    def __init__(self, model: Pi0Model):
        super().__init__()
        self.model = model

    def forward(self, images, image_masks, tokens, token_masks):
        cache = self.model.embed_prefix(images, image_masks, tokens, token_masks)
        return cache.keys, cache.values, cache.pad_mask


def validation_inputs(cfg: PolicyConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random batch-1 prefix inputs that exercise the masks: camera 1 missing, prompt one-third padding."""
    generator = torch.Generator().manual_seed(seed)
    size, cams, length = cfg.vision.image_size, cfg.num_cameras, cfg.max_token_len
    images = torch.randint(0, 256, (1, cams, size, size, 3), generator=generator, dtype=torch.uint8)
    image_masks = torch.ones(1, cams, dtype=torch.bool)
    if cams > 1:
        # A missing camera arrives as a zero image with mask False, as the policy feeds it.
        image_masks[0, 1] = False
        images[0, 1] = 0
    token_masks = (torch.arange(length) < max(1, length // 3))[None]
    tokens = torch.randint(1, cfg.vocab_size, (1, length), generator=generator, dtype=torch.int64)
    tokens[~token_masks] = 0
    return {"images": images, "image_masks": image_masks, "tokens": tokens, "token_masks": token_masks}


# -- reading an artifact ----------------------------------------------------------------------


def read_manifest(artifact_dir: str | Path) -> dict:
    """The manifest of an artifact written by `vla-ros export`."""
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{artifact_dir} is not an export artifact: no {MANIFEST_FILE} "
            f"(create one with `vla-ros export --checkpoint CHECKPOINT --out {artifact_dir}`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise CheckpointError(f"{path} is not a vla_ros export manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > ARTIFACT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {manifest['format_version']}, this vla_ros reads up to "
            f"{ARTIFACT_FORMAT_VERSION}: update vla_ros or re-export"
        )
    return manifest


def verify_artifact(artifact_dir: str | Path) -> list[str]:
    """Files whose size or sha256 differ from the manifest (empty when the artifact is intact)."""
    artifact_dir = Path(artifact_dir)
    problems = []
    for name, entry in read_manifest(artifact_dir)["files"].items():
        path = artifact_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: contents differ from the manifest")
    return problems


def load_suffix_model(
    artifact_dir: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Pi0Model, PolicyConfig]:
    """A Pi0Model whose suffix parts hold the artifact's weights and whose prefix parts stay on `meta`.

    Only `model.expert`, the action projections and the time MLPs (`state_proj` /
    `action_time_mlp_*` for pi0, `time_mlp_*` for pi0.5) are real, so the prefix
    costs no memory; `denoise_step` works, `embed_prefix` does not. dtype float32
    keeps everything fp32; bfloat16 / float16 give the reference mixed-precision
    split. The tensors are created on `device`: do not call `.to()` on the model
    (meta tensors cannot be copied).
    """
    from safetensors.torch import load_file

    artifact_dir = Path(artifact_dir)
    cfg = PolicyConfig.from_dict(read_manifest(artifact_dir)["config"])
    path = artifact_dir / SUFFIX_FILE
    if not path.is_file():
        raise CheckpointError(
            f"no {SUFFIX_FILE} in {artifact_dir}: re-export the checkpoint with `vla-ros export`"
        )
    with torch.device("meta"):
        model = Pi0Model(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if is_suffix_key(k)}
    state = load_file(str(path))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k}: {tuple(state[k].shape)} vs {expected[k]}" for k in set(expected) & set(state)
                       if tuple(state[k].shape) != expected[k])
    if missing or unexpected or misshaped:
        details = "; ".join(f"{title}: {items[:3]}{' ...' if len(items) > 3 else ''}"
                            for title, items in (("missing", missing), ("unexpected", unexpected),
                                                 ("mis-shaped", misshaped)) if items)
        raise CheckpointError(
            f"{path} does not fit the {cfg.name} config in the manifest ({details}); re-export"
        )
    device = torch.device(device)
    model.load_state_dict({k: v.to(device=device, dtype=torch.float32) for k, v in state.items()},
                          strict=False, assign=True)
    if dtype != torch.float32:
        model.to_mixed_precision(dtype)  # casts the meta prefix too: compute_dtype stays right
    return model.eval(), cfg


# -- TensorRT -----------------------------------------------------------------------------------


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


def tensorrt_ep_config(precision: str, workspace_gib: float = 8.0) -> dict[str, str]:
    """onnxruntime TensorRT-provider options for this artifact; cache paths relative to the artifact.

    The runtime resolves the paths and adds device_id / the CUDA stream.
    """
    return {
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": TRT_CACHE_DIR,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": TRT_CACHE_DIR,
        "trt_fp16_enable": "1" if precision == "fp16" else "0",
        "trt_bf16_enable": "1" if precision == "bf16" else "0",
        "trt_max_workspace_size": str(int(workspace_gib * (1 << 30))),
    }


def build_tensorrt_engine(
    onnx_path: Path, engine_path: Path, precision: str, workspace_gib: float = 8.0
) -> dict:
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


# -- export --------------------------------------------------------------------------------------


def sha256_file(path: Path, progress=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


def _graph_io(path: Path) -> tuple[int, list[dict], list[dict]]:
    """Opset and input/output specs read back from the written graph (not from what was asked)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))

    def spec(value) -> dict:
        tensor = value.type.tensor_type
        type_name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        return {
            "name": value.name,
            "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim],
            "dtype": _ONNX_TYPE_NAMES.get(type_name, type_name.lower()),
        }

    return opset, [spec(v) for v in proto.graph.input], [spec(v) for v in proto.graph.output]


_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_export():
    """Silence the exporters' tracer warnings and optimizer chatter (errors still show)."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _remove_graph(directory: Path) -> None:
    for name in (GRAPH_FILE, GRAPH_DATA_FILE):
        (directory / name).unlink(missing_ok=True)


def _export_dynamo(module: nn.Module, args: tuple, path: Path, opset: int, external: bool) -> None:
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(
            module, args, str(path), dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES), external_data=external, optimize=True, verbose=False,
        )
    written, _, _ = _graph_io(path)
    if written != opset:
        raise EngineError(f"the dynamo exporter wrote opset {written}, not the requested {opset}")


def _export_torchscript(module: nn.Module, args: tuple, path: Path, opset: int, external: bool) -> None:
    import onnx

    # Over 2 GB the TorchScript exporter writes one file per tensor: export into a
    # scratch dir, then gather the weights into the single prefix.onnx.data.
    target = path.parent / ".torchscript_export" / path.name if external else path
    target.parent.mkdir(exist_ok=True)
    try:
        with _quiet_export(), torch.no_grad():
            torch.onnx.export(
                module, args, str(target), dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES), do_constant_folding=True,
            )
        if external:
            proto = onnx.load(str(target))
            onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=GRAPH_DATA_FILE, size_threshold=1024)
    finally:
        if external:
            shutil.rmtree(target.parent, ignore_errors=True)


def export_graph(
    model: Pi0Model, path: Path, options: ExportOptions, external: bool
) -> tuple[str, str | None]:
    """Write `model`'s prefix encoder to `path`; returns (exporter used, why dynamo was not used)."""
    module = PrefixEncoder(model).eval()
    inputs = validation_inputs(model.cfg, options.seed)
    args = tuple(inputs[name] for name in INPUT_NAMES)
    reason = None
    exporter = options.exporter
    if exporter == "auto" and options.opset < DEFAULT_OPSET:
        exporter, reason = "torchscript", f"opset {options.opset} requested; the dynamo exporter writes 18+"
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(module, args, path, options.opset, external)
            return "dynamo", None
        except Exception as exc:  # the exporter raises many types; the fallback is the remedy
            if exporter == "dynamo":
                raise EngineError(f"the dynamo ONNX exporter failed: {type(exc).__name__}: {exc}") from exc
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("the dynamo ONNX exporter failed (%s); using the TorchScript exporter", reason)
            _remove_graph(path.parent)
    try:
        _export_torchscript(module, args, path, options.opset, external)
    except Exception as exc:
        raise EngineError(f"the TorchScript ONNX exporter failed: {type(exc).__name__}: {exc}") from exc
    return "torchscript", reason


def _error_stats(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out, ref = out.float(), ref.float()
    max_abs = (out - ref).abs().max().item() if torch.isfinite(out).all() else float("inf")
    max_ref = ref.abs().max().item()
    # Relative to the largest reference magnitude: element-wise ratios explode near zero.
    return {"max_abs": max_abs, "max_rel": max_abs / max(max_ref, 1e-30), "max_ref": max_ref}


def _validation_session(path: Path):
    """An onnxruntime session for validation: CPU, else CUDA when usable; (session, provider, why_not)."""
    import onnxruntime as ort

    candidates = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        candidates.append("CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    failures = []
    for provider in candidates:
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
        except Exception as exc:  # onnxruntime raises its own types (e.g. NOT_IMPLEMENTED for bf16 on CPU)
            failures.append(f"{provider}: {str(exc).strip().splitlines()[0]}")
            continue
        if session.get_providers()[0] == provider:
            return session, provider, None
        failures.append(f"{provider}: not usable")
    return None, None, "; ".join(failures)


def validate_graph(model: Pi0Model, path: Path, precision: str, max_error: float, seed: int = 0) -> dict:
    """Compare onnxruntime's K/V with PyTorch's on random inputs (a masked camera, a padded prompt).

    Raises EngineError beyond `max_error` * max(1, max |reference|) or on any pad-mask
    difference; returns the report stored in the manifest.
    """
    import onnxruntime as ort

    inputs = validation_inputs(model.cfg, seed)
    with torch.no_grad():
        ref = model.embed_prefix(**inputs)
    report = {
        "reference": f"PyTorch Pi0Model.embed_prefix ({precision}, cpu)",
        "inputs": {
            "seed": seed,
            "masked_cameras": [i for i, m in enumerate(inputs["image_masks"][0].tolist()) if not m],
            "prompt_tokens": int(inputs["token_masks"].sum()),
            "max_token_len": model.cfg.max_token_len,
        },
        "tolerance": {"max_error": max_error, "applies_to": "max |onnx - torch| / max(1, max |torch|)"},
    }
    session, provider, why_not = _validation_session(path)
    if session is None:
        log.warning("could not validate %s here (%s); %s graphs are meant for GPU providers",
                    path, why_not, precision)
        return {**report, "status": "skipped", "reason": why_not}
    binding = session.io_binding()
    for name in INPUT_NAMES:
        binding.bind_cpu_input(name, inputs[name].numpy())
    outputs = {}
    for spec in session.get_outputs():
        dtype = _ORT_TYPES[spec.type]
        outputs[spec.name] = torch.empty(spec.shape, dtype=dtype)
        binding.bind_output(spec.name, "cpu", 0, ONNX_ELEMENT_TYPES[dtype], list(spec.shape),
                            outputs[spec.name].data_ptr())
    session.run_with_iobinding(binding)
    keys, values = _error_stats(outputs["keys"], ref.keys), _error_stats(outputs["values"], ref.values)
    pad_equal = bool(torch.equal(outputs["pad_mask"], ref.pad_mask))
    report.update(provider=provider, keys=keys, values=values, pad_mask_equal=pad_equal,
                  onnxruntime=ort.__version__)
    failed = [f"{name} max abs error {stats['max_abs']:.3g} > {max_error * max(1.0, stats['max_ref']):.3g}"
              for name, stats in (("keys", keys), ("values", values))
              if not stats["max_abs"] <= max_error * max(1.0, stats["max_ref"])]
    if not pad_equal:
        failed.append("pad_mask differs")
    report["status"] = "failed" if failed else "passed"
    if failed:
        raise EngineError(
            f"the exported graph {path} does not match PyTorch on {provider}: {'; '.join(failed)} "
            f"({precision}, tolerance {max_error:g}). No manifest was written, so the artifact cannot be "
            "used; "
            "try the other exporter (--exporter torchscript / dynamo) or report the error values above"
        )
    return report


def ort_type_to_torch(type_string: str) -> torch.dtype:
    """onnxruntime's 'tensor(float)' style type names -> torch dtypes."""
    if type_string not in _ORT_TYPES:
        raise EngineError(
            f"unsupported graph tensor type {type_string}; expected one of {sorted(_ORT_TYPES)}"
        )
    return _ORT_TYPES[type_string]


def _prepare_out_dir(out_dir: Path, checkpoint_dir: Path, overwrite: bool) -> None:
    if out_dir.resolve() == checkpoint_dir.resolve():
        raise ConfigError("out", "ARTIFACT_DIR must differ from the checkpoint directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError("out", f"{out_dir} is not empty; choose a new directory or pass --overwrite "
                                     "to replace a previous export")
        if not (out_dir / MANIFEST_FILE).is_file() and not (out_dir / GRAPH_FILE).is_file():
            raise ConfigError("out", f"{out_dir} is not empty and holds no previous export; refusing to "
                                     "delete it with --overwrite")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _copy_runtime_files(checkpoint_dir: Path, out_dir: Path, cfg: PolicyConfig) -> list[str]:
    """config.json (with the resolved vla_ros config), norm stats and tokenizer, same relative paths."""
    from vla_ros.policy import find_tokenizer

    meta = {}
    if (checkpoint_dir / CONFIG_FILE).is_file():
        meta = json.loads((checkpoint_dir / CONFIG_FILE).read_text())
    # Resolved once here, so that the artifact never needs model.safetensors to know its sizes.
    meta["vla_ros"] = cfg.to_dict()
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    stats = sorted(checkpoint_dir.glob(f"assets/**/{NORM_STATS_FILE}"))
    if (checkpoint_dir / NORM_STATS_FILE).is_file():
        stats.append(checkpoint_dir / NORM_STATS_FILE)
    if not stats:
        raise CheckpointError(f"no normalization statistics in {checkpoint_dir}: expected "
                              f"assets/<asset_id>/{NORM_STATS_FILE}; the artifact would not be deployable")
    copied = [CONFIG_FILE]
    for source in [*stats, find_tokenizer(checkpoint_dir)]:
        relative = source.relative_to(checkpoint_dir)
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, out_dir / relative)
        copied.append(relative.as_posix())
    return copied


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import onnx
    import onnxruntime

    try:
        vla_ros_version = version("vla_ros")
    except PackageNotFoundError:
        vla_ros_version = "unknown (not installed)"
    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "vla_ros": vla_ros_version}
    try:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return versions


def export_artifact(
    checkpoint_dir: str | Path, out_dir: str | Path, options: ExportOptions = ExportOptions(),
    progress: bool | None = False,
) -> dict:
    """Export `checkpoint_dir` into the artifact directory `out_dir`; returns the manifest.

    progress None shows tqdm bars only on a terminal; False never.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    from vla_ros.model.checkpoint import load_model

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {checkpoint_dir} does not exist")
    if options.tensorrt:
        import_tensorrt()  # fail before the slow steps, not after them
    _prepare_out_dir(out_dir, checkpoint_dir, options.overwrite)
    disable = None if progress is None else not progress
    steps = 7 if options.tensorrt else 6  # load, export, check, validate, copy, [tensorrt,] hash
    with tqdm(total=steps, desc="export", unit="step", disable=disable) as bar:

        def step(name: str) -> None:
            bar.set_postfix_str(name)

        step("load")
        model, cfg = load_model(checkpoint_dir, dtype=torch.float32)
        # Lossless fp32 copies taken before any cast: the suffix keeps the checkpoint's values.
        suffix_state = {
            k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if is_suffix_key(k)
        }
        if options.precision != "fp32":
            model.to_mixed_precision(options.dtype)
        prefix_bytes = sum(
            p.numel() * p.element_size() for n, p in model.named_parameters() if not is_suffix_key(n)
        )
        external = options.external_data
        if external is None:
            external = prefix_bytes >= EXTERNAL_DATA_THRESHOLD
        bar.update()

        step("export")
        graph = out_dir / GRAPH_FILE
        exporter, fallback_reason = export_graph(model, graph, options, external)
        bar.update()

        step("check")
        import onnx

        onnx.checker.check_model(str(graph))  # a path, so that graphs over 2 GB are checked too
        opset, inputs, outputs = _graph_io(graph)
        bar.update()

        step("validate")
        if options.validate:
            validation = validate_graph(model, graph, options.precision, options.max_error, options.seed)
        else:
            validation = {"status": "skipped", "reason": "validation disabled"}
        del model  # the full model is no longer needed; the TensorRT build wants the memory
        bar.update()

        step("copy")
        save_file(suffix_state, str(out_dir / SUFFIX_FILE), metadata={"format": "pt"})
        copied = _copy_runtime_files(checkpoint_dir, out_dir, cfg)
        bar.update()

        engine = None
        if options.tensorrt:
            step("tensorrt")
            engine = build_tensorrt_engine(
                graph, out_dir / ENGINE_FILE, options.precision, options.workspace_gib
            )
            bar.update()

        step("hash")
        files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
        hashes = {}
        with tqdm(total=sum(p.stat().st_size for p in files), desc="sha256", unit="B", unit_scale=True,
                  leave=False, disable=disable) as hash_bar:
            for path in files:
                hashes[path.relative_to(out_dir).as_posix()] = {"sha256": sha256_file(path, hash_bar),
                                                                "bytes": path.stat().st_size}
        bar.update()

    manifest = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_checkpoint": str(checkpoint_dir.resolve()),
        "config": cfg.to_dict(),
        "precision": options.precision,
        "graph": {
            "file": GRAPH_FILE,
            "external_data": GRAPH_DATA_FILE if (out_dir / GRAPH_DATA_FILE).is_file() else None,
            "opset": opset,
            "exporter": exporter,
            "exporter_fallback_reason": fallback_reason,
            "inputs": inputs,
            "outputs": outputs,
        },
        "suffix": {"file": SUFFIX_FILE, "dtype": "float32", "tensors": len(suffix_state),
                   "parameters": int(sum(v.numel() for v in suffix_state.values()))},
        "runtime_files": copied,
        "tensorrt_ep": tensorrt_ep_config(options.precision, options.workspace_gib),
        "tensorrt_engine": engine,
        "versions": _versions(),
        "validation": validation,
        "files": hashes,
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
