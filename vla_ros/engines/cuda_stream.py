"""One dedicated CUDA stream per engine, for the prefix runtime and the suffix (eager or graph replay).

Why a stream of our own: TensorRT warns that enqueueing on the legacy default
stream (torch's current stream unless changed) costs extra synchronisations, and
onnxruntime treats stream 0 as "no stream given" and then synchronises every
run. With one non-default stream handed to every runtime, the input copies, the
prefix engine, the K/V hand-over and the suffix are ordered by the stream alone:
the host waits once, when it reads the actions back.

Everything here is feature-detected and returns None / a no-op on the CPU, so
CPU engines never touch torch.cuda.
"""

from __future__ import annotations

import contextlib

import torch


def dedicated_stream(device: torch.device | str | None) -> "torch.cuda.Stream | None":
    """A new non-default CUDA stream on `device`, or None for the CPU or a torch without CUDA streams."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda" or not hasattr(torch.cuda, "Stream") or not torch.cuda.is_available():
        return None
    try:
        return torch.cuda.Stream(device=device)
    except (RuntimeError, AssertionError):  # a torch built without CUDA, or a driver that fails
        return None


def stream_handle(stream: "torch.cuda.Stream | None") -> int | None:
    """The cudaStream_t of `stream` as an integer, None for no stream or the legacy default stream (0)."""
    if stream is None:
        return None
    handle = int(stream.cuda_stream)
    return handle or None


@contextlib.contextmanager
def running_on(stream: "torch.cuda.Stream | None"):
    """Run the block on `stream`, ordered after the caller's current stream and before its later work.

    No host synchronisation: events only (`wait_stream`), and nothing at all when
    the caller already runs on `stream`. None (the CPU) is a plain no-op.
    """
    if stream is None:
        yield
        return
    caller = torch.cuda.current_stream(stream.device)
    same = caller.cuda_stream == stream.cuda_stream
    if not same:
        stream.wait_stream(caller)
    with torch.cuda.device(stream.device), torch.cuda.stream(stream):
        yield
    if not same:
        caller.wait_stream(stream)
