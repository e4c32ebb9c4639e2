"""Captures the static suffix denoiser as one CUDA graph and replays it per inference.

This module and prefix_tensorrt.py are the only two that touch CUDA graphs /
TensorRT. The denoiser's every input and output is a static buffer, so after
capture an inference is: write noise / state (and the prefix K/V, written by the
prefix runtime), replay. `run` replays on the caller's current stream: the
OptimizedEngine's dedicated stream, the one its prefix runtime wrote the K/V on,
so the replay is ordered after the prefix without a host synchronisation.
"""

from __future__ import annotations

import torch

from vla_ros.engines.suffix import StaticSuffixDenoiser
from vla_ros.errors import EngineError


class CudaGraphSuffix:
    """`run()` replays the captured Euler loop; same buffers as the wrapped denoiser.

    `loop` is the denoiser's method to capture: `forward` (default), or a Real-Time
    Chunking loop (`forward_guided`, `forward_trained`), which reads its guidance
    from the denoiser's RTC buffers as well.
    """

    def __init__(self, denoiser: StaticSuffixDenoiser, warmup: int = 3, loop: str = "forward"):
        if not torch.cuda.is_available() or denoiser.actions.device.type != "cuda":
            raise EngineError("suffix 'cuda_graph' needs the model on a CUDA device; use 'eager' on the CPU")
        self.denoiser = denoiser
        self.graph = torch.cuda.CUDAGraph()
        run = getattr(denoiser, loop)
        # Warm-up on a side stream so lazy initialisation (cuBLAS handles, workspaces)
        # happens outside the capture, as CUDA graph capture requires.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(self.graph):
            run()
        torch.cuda.synchronize()

    def run(self) -> torch.Tensor:
        self.graph.replay()  # enqueued on torch's current stream
        return self.denoiser.actions
