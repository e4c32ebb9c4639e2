"""The optimised engine: a prefix runtime (PyTorch or ONNX) feeding the static suffix denoiser.

The prefix runtime writes the K/V cache straight into the denoiser's static
buffers, the noise and state are copied into theirs, and the suffix runs as
one call: eager, torch.compile'd, or a replayed CUDA graph.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from vla_ros.engines.base import Engine, ModelInputs
from vla_ros.engines.cpu_packed import is_packed
from vla_ros.engines.suffix import StaticSuffixDenoiser

log = logging.getLogger(__name__)


class OptimizedEngine(Engine):
    name = "optimized"

    def __init__(self, prefix_runtime, denoiser: StaticSuffixDenoiser, suffix_mode: str = "eager"):
        self.prefix = prefix_runtime
        self.denoiser = denoiser
        self.suffix_mode = suffix_mode
        self.device = denoiser.actions.device
        if suffix_mode == "cuda_graph":
            from vla_ros.engines.suffix_cuda_graph import CudaGraphSuffix

            self._run = CudaGraphSuffix(denoiser).run
        elif suffix_mode == "compiled":
            self._run = torch.compile(denoiser.forward, dynamic=False)
        else:
            self._run = denoiser.forward

    def encode_prefix(self, inputs: ModelInputs) -> None:
        d = self.denoiser
        self.prefix.run(
            inputs.images[None],
            inputs.image_masks[None],
            inputs.tokens[None].astype(np.int64),
            inputs.token_masks[None],
            d.prefix_keys,
            d.prefix_values,
            d.prefix_pad,
        )

    @torch.no_grad()
    def denoise(self, inputs: ModelInputs) -> np.ndarray:
        d = self.denoiser
        d.noise.copy_(torch.from_numpy(np.asarray(inputs.noise, dtype=np.float32))[None])
        d.state.copy_(torch.from_numpy(np.asarray(inputs.state, dtype=np.float32))[None])
        return self._run()[0].cpu().numpy().copy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "device": str(self.device),
            "suffix": self.suffix_mode,
            "suffix_dtype": str(self.denoiser.dtype).replace("torch.", ""),
            "packed_weights": is_packed(self.denoiser.model),
            "prefix": self.prefix.name,
            **{f"prefix_{k}": v for k, v in self.prefix.describe().items() if k != "engine"},
        }
