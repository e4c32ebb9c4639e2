"""Checks an exported prefix graph against PyTorch before the artifact gets a manifest.

The report lands in the manifest, so a deployed artifact carries the error it
was measured with; a failed check raises, and without a manifest the artifact
cannot be loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vla_ros.engines.prefix_graph import (
    INPUT_NAMES,
    LAST_LOGITS,
    ONNX_ELEMENT_TYPES,
    ort_type_to_torch,
    validation_inputs,
)
from vla_ros.errors import EngineError
from vla_ros.model.pi0 import Pi0Model

log = logging.getLogger(__name__)


def _error_stats(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out, ref = out.float(), ref.float()
    max_abs = (out - ref).abs().max().item() if torch.isfinite(out).all() else float("inf")
    max_ref = ref.abs().max().item()
    # Relative to the largest reference magnitude: element-wise ratios explode near zero.
    return {"max_abs": max_abs, "max_rel": max_abs / max(max_ref, 1e-30), "max_ref": max_ref}


def _stacked(outputs: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """(L, 1, KV, P, hd) from the per-layer outputs name_0 .. name_{L-1} (or an older stacked output)."""
    if name in outputs:
        return outputs[name]
    layers = sorted((k for k in outputs if k.startswith(f"{name}_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return torch.stack([outputs[k] for k in layers])


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


def validate_graph(
    model: Pi0Model, path: Path, precision: str, max_error: float, seed: int = 0, float_images: bool = False
) -> dict:
    """Compare onnxruntime's K/V with PyTorch's on random inputs (a masked camera, a padded prompt).

    Decode models (pi0-FAST) also compare last_logits, the logits of the last
    real prompt token, with `Pi0FastModel.embed_prefix`'s. Raises EngineError
    beyond `max_error` * max(1, max |reference|) or on any pad-mask
    difference; returns the report stored in the manifest.
    """
    import onnxruntime as ort

    inputs = validation_inputs(model.cfg, seed, float_images)
    with torch.no_grad():
        ref = model.embed_prefix(**inputs)
    report = {
        "reference": f"PyTorch {type(model).__name__}.embed_prefix ({precision}, cpu)",
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
        dtype = ort_type_to_torch(spec.type)
        outputs[spec.name] = torch.empty(spec.shape, dtype=dtype)
        binding.bind_output(spec.name, "cpu", 0, ONNX_ELEMENT_TYPES[dtype], list(spec.shape),
                            outputs[spec.name].data_ptr())
    session.run_with_iobinding(binding)
    compared = {name: _error_stats(_stacked(outputs, name), reference)
                for name, reference in (("keys", ref.keys), ("values", ref.values))}
    if ref.last_logits is not None:
        if LAST_LOGITS not in outputs:
            raise EngineError(f"the exported graph {path} has no {LAST_LOGITS} output, which the decode "
                              "stage starts from")
        compared[LAST_LOGITS] = _error_stats(outputs[LAST_LOGITS], ref.last_logits.reshape(1, -1))
        compared[LAST_LOGITS]["argmax_equal"] = bool(
            int(outputs[LAST_LOGITS].argmax()) == int(ref.last_logits.reshape(-1).argmax())
        )
    pad_equal = bool(torch.equal(outputs["pad_mask"], ref.pad_mask))
    report.update(provider=provider, **compared, pad_mask_equal=pad_equal, onnxruntime=ort.__version__)
    failed = [f"{name} max abs error {stats['max_abs']:.3g} > {max_error * max(1.0, stats['max_ref']):.3g}"
              for name, stats in compared.items()
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
