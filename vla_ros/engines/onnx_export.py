"""`vla-ros export`: the prefix encoder to ONNX, checked against PyTorch, written as an artifact directory.

Export follows the TensorRT samples' split (create_onnx / build_engine / infer):
this module creates the graph and drives the export; artifact.py owns the
directory's layout and manifest, onnx_validate.py the check against PyTorch,
prefix_tensorrt.py the optional engine build, and prefix_onnx.OnnxPrefixRuntime
runs the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
import shutil
import warnings

import torch
from torch import nn

from vla_ros.engines import artifact, prefix_tensorrt
from vla_ros.engines.artifact import ENGINE_FILE, GRAPH_DATA_FILE, GRAPH_FILE
from vla_ros.engines.onnx_validate import validate_graph
from vla_ros.engines.prefix_graph import INPUT_NAMES, OUTPUT_NAMES, PrefixEncoder, validation_inputs
from vla_ros.errors import CheckpointError, ConfigError, EngineError
from vla_ros.model.pi0 import Pi0Model

log = logging.getLogger(__name__)

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


# -- the graph -----------------------------------------------------------------------------------


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


# -- the artifact --------------------------------------------------------------------------------


def export_artifact(
    checkpoint_dir: str | Path, out_dir: str | Path, options: ExportOptions = ExportOptions(),
    progress: bool | None = False,
) -> dict:
    """Export `checkpoint_dir` into the artifact directory `out_dir`; returns the manifest.

    progress None shows tqdm bars only on a terminal; False never.
    """
    from tqdm import tqdm

    from vla_ros.model.checkpoint import load_model

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {checkpoint_dir} does not exist")
    if options.tensorrt:
        prefix_tensorrt.import_tensorrt()  # fail before the slow steps, not after them
    artifact.prepare_out_dir(out_dir, checkpoint_dir, options.overwrite)
    disable = None if progress is None else not progress
    steps = 7 if options.tensorrt else 6  # load, export, check, validate, copy, [tensorrt,] hash
    with tqdm(total=steps, desc="export", unit="step", disable=disable) as bar:

        def step(name: str) -> None:
            bar.set_postfix_str(name)

        step("load")
        model, cfg = load_model(checkpoint_dir, dtype=torch.float32)
        suffix_state = artifact.suffix_state(model)
        if options.precision != "fp32":
            model.to_mixed_precision(options.dtype)
        prefix_bytes = sum(
            p.numel() * p.element_size() for n, p in model.named_parameters() if not artifact.is_suffix_key(n)
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
        suffix = artifact.save_suffix(suffix_state, out_dir)
        copied = artifact.copy_runtime_files(checkpoint_dir, out_dir, cfg)
        bar.update()

        engine = None
        if options.tensorrt:
            step("tensorrt")
            engine = prefix_tensorrt.build_engine(
                graph, out_dir / ENGINE_FILE, options.precision, options.workspace_gib
            )
            bar.update()

        step("hash")
        hashes = artifact.hash_files(out_dir, disable)
        bar.update()

    return artifact.write_manifest(out_dir, {
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
        "suffix": suffix,
        "runtime_files": copied,
        **prefix_tensorrt.manifest_entries(options.precision, options.workspace_gib, engine),
        "versions": _versions(),
        "validation": validation,
        "files": hashes,
    })
