"""`vla-ros export`: the prefix encoder to ONNX, checked against PyTorch, written as an artifact directory.

pi0 / pi0.5 artifacts carry the suffix denoiser's weights beside the graph;
pi0-FAST ones the language model its decode stage steps, and a graph that also
outputs the logits of the last prompt token (prefix_graph.DecodePrefixEncoder).

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
import re
import shutil
import warnings

import torch
from torch import nn

from vla_ros.engines import artifact, prefix_tensorrt
from vla_ros.engines.artifact import ENGINE_FILE, GRAPH_DATA_FILE, GRAPH_FILE
from vla_ros.engines.onnx_validate import validate_graph
from vla_ros.engines.prefix_graph import graph_output_names, INPUT_NAMES, make_encoder, validation_inputs
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
    tokenizer: str | None = None  # a tokenizer outside the checkpoint (policy.tokenizer), copied in
    # pi0-FAST: a FAST action tokenizer directory outside the checkpoint (policy.action_tokenizer), copied in
    action_tokenizer: str | None = None
    # The graph's image input: float32 in [-1, 1] (LeRobot checkpoints, whose resize is float and
    # never rounded) or uint8 (openpi's). export_artifact sets it from the checkpoint's provenance.
    float_images: bool = False

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


def _output_names(module: nn.Module) -> list[str]:
    return list(graph_output_names(module.model.cfg))


def _export_dynamo(module: nn.Module, args: tuple, path: Path, opset: int, external: bool) -> None:
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(
            module, args, str(path), dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
            output_names=_output_names(module), external_data=external, optimize=True, verbose=False,
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
                output_names=_output_names(module), do_constant_folding=True,
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
    """Write `model`'s prefix encoder to `path`; returns (exporter used, why dynamo was not used).

    `model` is a Pi0Model, or a Pi0FastModel whose graph also outputs last_logits.
    """
    module = make_encoder(model).eval()
    inputs = validation_inputs(model.cfg, options.seed, options.float_images)
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


# -- per-layer outputs straight from their layers ------------------------------------------------
# PrefixEncoder returns the model's stacked (L, ...) K/V unbound into per-layer outputs; the
# exporters keep that as Unsqueeze -> Concat (the stack) -> Slice / Split / Gather -> Squeeze,
# two whole-cache copies inside the graph that no onnxruntime optimizer removes. This pass
# renames each layer's K/V tensor to its output name, so the node computing it writes the
# bound buffer (the suffix's cache) itself, and drops the chain that became dead.

def _constants(graph) -> dict[str, list[int]]:
    """Small integer constants by tensor name (initializers and Constant nodes), as flat lists."""
    from onnx import numpy_helper, TensorProto

    values = {}
    tensors = [(t.name, t) for t in graph.initializer]
    tensors += [(node.output[0], attr.t) for node in graph.node if node.op_type == "Constant"
                for attr in node.attribute if attr.name == "value"]
    integers = (TensorProto.INT32, TensorProto.INT64)
    for name, tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL or tensor.data_type not in integers:
            continue
        values[name] = [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
    return values


def _ints(node, name: str, position: int | None, constants: dict[str, list[int]]) -> list[int] | None:
    """An integer-list operand: attribute `name` (older opsets) or input `position` (newer)."""
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints) if attr.ints else [int(attr.i)]
    if position is not None and len(node.input) > position and node.input[position]:
        return constants.get(node.input[position])
    return None


def _layer_source(name: str, producers: dict, constants: dict[str, list[int]]) -> tuple[str, list] | None:
    """(the per-layer tensor that output `name` copies, the chain's nodes), or None if not that form.

    The form: Squeeze(axis 0) <- Slice [i, i+1) or Split in ones, on axis 0 <-
    Concat(axis 0) <- Unsqueeze(axis 0) of the i-th layer's tensor.
    """
    squeeze = producers.get(name)
    if squeeze is None or squeeze.op_type != "Squeeze" or _ints(squeeze, "axes", 1, constants) != [0]:
        return None
    select = producers.get(squeeze.input[0])
    if select is None:
        return None
    if select.op_type == "Slice":
        starts, ends = _ints(select, "starts", 1, constants), _ints(select, "ends", 2, constants)
        axes = _ints(select, "axes", 3, constants) or [0]
        steps = _ints(select, "steps", 4, constants) or [1]
        if axes != [0] or steps != [1] or not starts or not ends or ends[0] != starts[0] + 1:
            return None
        index = starts[0]
    elif select.op_type == "Split":
        sizes = _ints(select, "split", 1, constants)
        if _ints(select, "axis", None, constants) not in (None, [0]) or (sizes and set(sizes) != {1}):
            return None
        index = list(select.output).index(squeeze.input[0])
    else:
        return None
    concat = producers.get(select.input[0])
    if concat is None or concat.op_type != "Concat" or _ints(concat, "axis", None, constants) != [0]:
        return None
    if select.op_type == "Split" and len(select.output) != len(concat.input):
        return None
    if not 0 <= index < len(concat.input):
        return None
    unsqueeze = producers.get(concat.input[index])
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or _ints(unsqueeze, "axes", 1, constants) != [0]:
        return None
    return unsqueeze.input[0], [squeeze, select, concat, unsqueeze]


def route_layer_outputs(path: Path) -> int:
    """Rewrite the graph at `path` so each keys_i / values_i is its layer's own tensor; returns how many.

    Outputs whose producer chain does not have the stacked form are left as they
    are (still correct, with the copies). The weights (external data) are neither
    loaded nor rewritten; the validation that follows runs on the rewritten graph.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = _constants(graph)
    fixed = {t.name for t in graph.input} | {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    routed, candidates = 0, []
    for output in graph.output:
        if not re.fullmatch(r"(keys|values)_\d+", output.name):
            continue
        found = _layer_source(output.name, producers, constants)
        if found is None or found[0] in fixed or found[0] in outputs:
            continue
        source, chain = found
        graph.node.remove(chain[0])  # the Squeeze that wrote the output
        producers.pop(output.name)
        for node in graph.node:
            node.input[:] = [output.name if name == source else name for name in node.input]
            node.output[:] = [output.name if name == source else name for name in node.output]
        for info in graph.value_info:
            if info.name == source:
                info.name = output.name
        producers = {out: node for node in graph.node for out in node.output}
        candidates += [node for node in chain[1:] if node not in candidates]
        routed += 1
    # Drop what nothing reads any more (a Split / Concat shared by the layers goes with the last one).
    removed = True
    while removed:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in candidates if node in graph.node and not set(node.output) & used]
        for node in dead:
            graph.node.remove(node)
        removed = bool(dead)
    if routed:
        onnx.save_model(proto, str(path))
    return routed


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
        # Fail before the slow steps, not after them: the package, and flags for this precision.
        prefix_tensorrt.builder_flags(prefix_tensorrt.import_tensorrt(), options.precision)
    artifact.prepare_out_dir(out_dir, checkpoint_dir, options.overwrite)
    disable = None if progress is None else not progress
    steps = 7 if options.tensorrt else 6  # load, export, check, validate, copy, [tensorrt,] hash
    with tqdm(total=steps, desc="export", unit="step", disable=disable) as bar:

        def step(name: str) -> None:
            bar.set_postfix_str(name)

        step("load")
        from vla_ros.model.lerobot_layout import read_lerobot_config

        options = dataclasses.replace(options, float_images=read_lerobot_config(checkpoint_dir) is not None)
        model, cfg = load_model(checkpoint_dir, dtype=torch.float32)
        # What runs after the prefix: the suffix denoiser's weights, or the decode stage's language model.
        stage_state = artifact.decode_state(model) if cfg.is_fast else artifact.suffix_state(model)
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
        routed = route_layer_outputs(graph)
        if cfg.is_fast:
            routed = cfg.prefix.depth  # DecodePrefixEncoder returns each layer's own K/V: nothing to reroute
        bar.update()

        step("check")
        import onnx

        onnx.checker.check_model(str(graph))  # a path, so that graphs over 2 GB are checked too
        opset, inputs, outputs = _graph_io(graph)
        bar.update()

        step("validate")
        if options.validate:
            validation = validate_graph(
                model, graph, options.precision, options.max_error, options.seed, options.float_images
            )
        else:
            validation = {"status": "skipped", "reason": "validation disabled"}
        del model  # the full model is no longer needed; the TensorRT build wants the memory
        bar.update()

        step("copy")
        suffix = decode = None
        if cfg.is_fast:
            decode = artifact.save_decode(stage_state, out_dir)
        else:
            suffix = artifact.save_suffix(stage_state, out_dir)
        del stage_state
        copied = artifact.copy_runtime_files(
            checkpoint_dir, out_dir, cfg, options.tokenizer, options.action_tokenizer
        )
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
        # The family: pi0 / pi05 (prefix + flow-matching suffix) or pi0fast (prefix + decode stage).
        "variant": cfg.variant,
        "stages": ["prefix", "decode"] if cfg.is_fast else ["prefix", "suffix"],
        "config": cfg.to_dict(),
        "precision": options.precision,
        "graph": {
            "file": GRAPH_FILE,
            "external_data": GRAPH_DATA_FILE if (out_dir / GRAPH_DATA_FILE).is_file() else None,
            "opset": opset,
            "exporter": exporter,
            "exporter_fallback_reason": fallback_reason,
            # keys_i / values_i computed in place, not stacked and sliced inside the graph
            "kv_outputs_from_layers": routed,
            "inputs": inputs,
            "outputs": outputs,
        },
        "suffix": suffix,
        "decode": decode,
        "runtime_files": copied,
        **prefix_tensorrt.manifest_entries(options.precision, options.workspace_gib, engine),
        "versions": _versions(),
        "validation": validation,
        "files": hashes,
    })
