"""The optimised engine: a prefix runtime (PyTorch, ONNX or TensorRT) feeding the static suffix denoiser.

The prefix runtime writes the K/V cache into the denoiser's static buffers (the
ONNX and TensorRT runtimes by address, layer by layer, where the layout allows:
prefix_graph.py), the noise and state are copied into theirs, and the suffix
runs as one call: eager, torch.compile'd, or a replayed CUDA graph.

On CUDA everything runs on one dedicated stream (cuda_stream.py): the prefix
runtime's own when it has one (onnxruntime's session is created on it), else a
new one. Input copies, prefix, K/V hand-over and the suffix are ordered by that
stream alone; the host waits once, when it reads the actions back.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from vla_ros.engines.base import Engine, ModelInputs
from vla_ros.engines.cpu_packed import is_packed
from vla_ros.engines.cuda_stream import dedicated_stream, running_on, stream_handle
from vla_ros.engines.guidance import ModelGuidance
from vla_ros.engines.suffix import StaticSuffixDenoiser
from vla_ros.errors import EngineError

log = logging.getLogger(__name__)


class OptimizedEngine(Engine):
    name = "optimized"

    def __init__(self, prefix_runtime, denoiser: StaticSuffixDenoiser, suffix_mode: str = "eager"):
        self.prefix = prefix_runtime
        self.denoiser = denoiser
        self.suffix_mode = suffix_mode
        self._state_in_prefix = getattr(denoiser.model, "state_in_prefix", False)
        self.device = denoiser.actions.device
        self.stream = None
        if self.device.type == "cuda":
            self.stream = getattr(prefix_runtime, "stream", None)
            if self.stream is None:
                self.stream = dedicated_stream(self.device)
            if self.stream is not None:
                # The buffers were filled on the loading stream; order the dedicated one after it.
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self._run = self._runner("forward")
        self._rtc_runs: dict[str, object] = {}  # Real-Time Chunking loops, made on first use

    def _runner(self, loop: str):
        """How `loop` (a StaticSuffixDenoiser method) runs in this suffix mode."""
        if self.suffix_mode == "cuda_graph":
            from vla_ros.engines.suffix_cuda_graph import CudaGraphSuffix

            return CudaGraphSuffix(self.denoiser, loop=loop).run
        if self.suffix_mode == "compiled":
            return torch.compile(getattr(self.denoiser, loop), dynamic=False)
        return getattr(self.denoiser, loop)

    def prepare_guidance(self, modes=("guided", "trained")) -> None:
        """Build (on CUDA: capture) Real-Time Chunking loops: at their first guided chunk, which the
        node's warm-up runs with aggregation.mode rtc; only the modes used cost a graph."""
        for mode in modes:
            loop = f"forward_{mode}"
            if loop not in self._rtc_runs:
                if self.stream is not None:
                    self.stream.synchronize()  # the capture's warm-up runs read the K/V the prefix writes
                self._rtc_runs[loop] = self._runner(loop)

    def encode_prefix(self, inputs: ModelInputs) -> None:
        d = self.denoiser
        # SmolVLA: the state is the prefix's last token, so its prefix runtime takes it.
        state = {"state": np.asarray(inputs.state, dtype=np.float32)[None]} if self._state_in_prefix else {}
        with running_on(self.stream):
            self.prefix.run(
                inputs.images[None],
                inputs.image_masks[None],
                inputs.tokens[None].astype(np.int64),
                inputs.token_masks[None],
                d.prefix_keys,
                d.prefix_values,
                d.prefix_pad,
                **state,
            )

    @torch.no_grad()
    def denoise(self, inputs: ModelInputs, guidance: ModelGuidance | None = None) -> np.ndarray:
        d = self.denoiser
        run = self._run
        if guidance is not None:
            if guidance.settings.jacobian != "identity":
                raise EngineError(
                    "rtc.jacobian 'vjp' needs a backward pass through the action expert, which the "
                    "optimized suffix (static buffers, no autograd) does not run; use 'identity' "
                    "(LeRobot's guidance) or the reference engine (policy.engine / --engine 'reference')"
                )
            self.prepare_guidance((guidance.mode,))
            run = self._rtc_runs[f"forward_{guidance.mode}"]
        noise = np.asarray(inputs.noise, dtype=np.float32)
        if noise.size != d.noise.numel():
            raise EngineError(
                f"noise of shape {noise.shape} for a suffix built for {d.num_samples} sample(s) of "
                f"{tuple(d.noise.shape[1:])} (policy.num_samples)"
            )
        with running_on(self.stream):
            d.noise.copy_(torch.from_numpy(noise).reshape(d.noise.shape))
            d.state.copy_(torch.from_numpy(np.asarray(inputs.state, dtype=np.float32))[None])
            if guidance is not None:
                d.set_guidance(guidance)
            actions = run().cpu().numpy().copy()
        return actions if noise.ndim == 3 else actions[0]

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "device": str(self.device),
            "suffix": self.suffix_mode,
            "suffix_dtype": str(self.denoiser.dtype).replace("torch.", ""),
            "packed_weights": is_packed(self.denoiser.model),
            "prefix": self.prefix.name,
            "cuda_stream": None if self.stream is None else (
                "dedicated" if stream_handle(self.stream) else "default"),
            **{f"prefix_{k}": v for k, v in self.prefix.describe().items() if k != "engine"},
        }
