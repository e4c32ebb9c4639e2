"""Chooses and builds the inference engine from PolicyOptions.

Heavy and optional imports (onnxruntime, TensorRT, CUDA graph capture) happen
here, lazily, so that importing vla_ros stays cheap and CPU-only machines never
touch GPU-only modules.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vla_ros.engines.base import Engine
from vla_ros.model.checkpoint import load_model
from vla_ros.model.config import PolicyConfig

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        log.warning("policy.device is 'cuda' but no CUDA device is available; using the CPU")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision != "auto":
        return _DTYPES[precision]
    # The reference runs fp32 on the CPU and the bf16/fp32 split on GPUs.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_engine(directory: Path, options) -> tuple[Engine, PolicyConfig]:
    from vla_ros.engines.reference import ReferenceEngine

    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.precision, device)
    model, cfg = load_model(directory, dtype=dtype, device=device)
    return ReferenceEngine(model, options.num_steps), cfg
