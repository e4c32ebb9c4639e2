"""`vla-ros export`: a checkpoint -> a deployable artifact directory (ONNX prefix + suffix or decode weights).

The artifact holds prefix.onnx (validated against PyTorch), suffix.safetensors
(pi0 / pi0.5) or decode.safetensors and the FAST tokenizer (pi0-FAST, whose
graph also gives the logits of the last prompt token), config.json, the norm
stats, the tokenizer and manifest.json; with --tensorrt also a serialized
TensorRT engine for this GPU. See vla_ros/engines/onnx_export.py and artifact.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="checkpoint directory (model.safetensors, ...)")
    parser.add_argument("--out", required=True, type=Path, help="artifact directory to write (ARTIFACT_DIR)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32 (any provider, the CPU default) or the fp16 / bf16 mixed-precision split "
                             "(GPU providers; onnxruntime's CPU provider cannot run bf16)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or newer (default 18)")
    parser.add_argument("--tokenizer", default="",
                        help="tokenizer file or directory when it is not beside the checkpoint (LeRobot's)")
    parser.add_argument("--action-tokenizer", default="",
                        help="pi0-FAST: the FAST tokenizer directory when it is not beside the checkpoint")
    parser.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"),
                        help="auto tries torch.onnx's dynamo exporter and falls back to TorchScript")
    parser.add_argument("--tensorrt", action="store_true",
                        help="also build prefix.engine with TensorRT for this GPU (needs tensorrt)")
    parser.add_argument("--workspace-gib", type=float, default=8.0, help="TensorRT builder workspace limit")
    parser.add_argument("--external-data", choices=("auto", "always", "never"), default="auto",
                        help="weights in prefix.onnx.data (auto: when the prefix is 1 GiB or more)")
    parser.add_argument("--tolerance", type=float,
                        help="max K/V (pi0-FAST: and logits) error vs PyTorch, relative to max(1, max |K/V|) "
                             "(default fp32 1e-4, fp16 1e-2, bf16 5e-2)")
    parser.add_argument("--no-validate", action="store_true", help="skip the onnxruntime vs PyTorch check")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation inputs")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_out_dir(out: Path, checkpoint: Path, overwrite: bool) -> None:
    """Fail before the slow export when --out may not take it (the rules of artifact.prepare_out_dir)."""
    from vla_ros.engines.artifact import GRAPH_FILE, MANIFEST_FILE
    from vla_ros.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a directory; choose a new directory")
    if out.resolve() == checkpoint.resolve():
        raise ConfigError("out", "ARTIFACT_DIR must differ from the checkpoint directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError("out", f"{out} is not empty; choose a new directory or pass --overwrite "
                                     "to replace a previous export")
        if not (out / MANIFEST_FILE).is_file() and not (out / GRAPH_FILE).is_file():
            raise ConfigError("out", f"{out} is not empty and holds no previous export; refusing to "
                                     "delete it with --overwrite")


def export_into(checkpoint: Path, out: Path, options, progress: bool | None = None) -> dict:
    """Export into a hidden sibling of `out`, then move it into place; returns the manifest.

    A failed (or interrupted) export leaves nothing behind: no empty or
    partial `out`, and a previous export there (--overwrite) stays until the
    new one is complete. Files end up 0644, directories 0755.
    """
    import dataclasses

    from vla_ros.engines.onnx_export import export_artifact
    from vla_ros.tools.file_modes import staged_directory

    check_out_dir(out, checkpoint, options.overwrite)
    with staged_directory(out) as staging:
        into_staging = dataclasses.replace(options, overwrite=False)
        manifest = export_artifact(checkpoint, staging, into_staging, progress)
    return manifest


def _logits_summary(validation: dict) -> str:
    """The last_logits part of the validation line (decode models), else nothing."""
    logits = validation.get("last_logits")
    if not logits:
        return ""
    return f"last logits max abs {logits['max_abs']:.2e} (rel {logits['max_rel']:.2e}), "


def run(args: argparse.Namespace) -> int:
    import time

    from vla_ros.engines.onnx_export import ExportOptions

    options = ExportOptions(
        precision=args.precision,
        opset=args.opset,
        exporter=args.exporter,
        external_data={"auto": None, "always": True, "never": False}[args.external_data],
        tensorrt=args.tensorrt,
        workspace_gib=args.workspace_gib,
        tolerance=args.tolerance,
        validate=not args.no_validate,
        seed=args.seed,
        overwrite=args.overwrite,
        tokenizer=args.tokenizer or None,
        action_tokenizer=args.action_tokenizer or None,
    )
    start = time.perf_counter()
    manifest = export_into(args.checkpoint, args.out, options, progress=None)
    graph, validation = manifest["graph"], manifest["validation"]
    reason = graph["exporter_fallback_reason"]
    fallback = f" (not dynamo: {reason})" if reason else ""
    print(f"exported {manifest['config']['name']} ({manifest['variant']}, {manifest['precision']}) "
          f"to {args.out} "
          f"in {time.perf_counter() - start:.1f} s: {graph['exporter']} exporter{fallback}, "
          f"opset {graph['opset']}")
    for name, entry in manifest["files"].items():
        print(f"  {name:<40} {_size(entry['bytes']):>10}")
    print(f"  {'manifest.json':<40} {_size((args.out / 'manifest.json').stat().st_size):>10}")
    if validation["status"] == "passed":
        print(f"validation on {validation['provider']} vs PyTorch: "
              f"keys max abs {validation['keys']['max_abs']:.2e} (rel {validation['keys']['max_rel']:.2e}), "
              f"values max abs {validation['values']['max_abs']:.2e} "
              f"(rel {validation['values']['max_rel']:.2e}), "
              f"{_logits_summary(validation)}pad mask equal; "
              f"tolerance {validation['tolerance']['max_error']:g}")
    else:
        print(f"validation skipped: {validation['reason']}")
    if manifest["tensorrt_engine"]:
        engine = manifest["tensorrt_engine"]
        print(f"TensorRT {engine['tensorrt_version']} engine for {engine['gpu']}: {engine['file']}")
    return 0
