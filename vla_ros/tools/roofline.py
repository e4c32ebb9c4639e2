"""The arithmetic a pi0 inference needs, and what this machine's matmuls can do: a latency bound.

`vla-ros bench` prints the bound beside its measurements, so that a target
like "3 s at full size" can be judged against the hardware it runs on: the
figure is the matmul FLOPs of one inference divided by the peak of a large
matmul measured here, now, in the engine's precision.
"""

from __future__ import annotations

import time

from vla_ros.model.config import GemmaConfig, PolicyConfig


def _gemma_layer(cfg: GemmaConfig, tokens: int, keys: int, kv_only: bool = False) -> float:
    q_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    if kv_only:  # the prefix's last layer: its K/V is all the cache needs
        return 2.0 * tokens * cfg.width * 2 * kv_width
    projections = cfg.width * (q_width + 2 * kv_width) + q_width * cfg.width + 3 * cfg.width * cfg.mlp_dim
    attention = 2 * keys * q_width  # QK^T and PV per query token
    return 2.0 * tokens * (projections + attention)


def inference_flops(cfg: PolicyConfig, cameras: int, prompt_tokens: int, num_steps: int = 10) -> dict:
    """Matmul / convolution FLOPs of one inference: {'prefix', 'suffix', 'total'}.

    cameras and prompt_tokens are what the compacting PyTorch prefix encodes
    (masked cameras and prompt padding dropped). Elementwise work is left out.
    """
    v = cfg.vision
    t = v.num_tokens
    vision_layer = 2.0 * t * (4 * v.width * v.width + 2 * v.width * v.mlp_dim + 2 * t * v.width)
    patch = 2.0 * t * (3 * v.patch_size**2) * v.width
    projector = 2.0 * t * v.width * cfg.prefix.width
    vision = cameras * (v.depth * vision_layer + patch + projector)
    p = cameras * t + prompt_tokens
    language = (cfg.prefix.depth - 1) * _gemma_layer(cfg.prefix, p, p) + _gemma_layer(
        cfg.prefix, p, p, kv_only=True
    )
    s = cfg.suffix_len
    e = cfg.expert
    heads = 2.0 * cfg.action_horizon * cfg.action_dim * e.width * 2  # action in / out projections
    if not cfg.pi05:
        heads += 2.0 * cfg.action_horizon * (2 * e.width * e.width + e.width * e.width)  # action-time MLP
    step = e.depth * _gemma_layer(e, s, p + s) + heads
    prefix = vision + language
    suffix = num_steps * step
    return {"prefix": prefix, "suffix": suffix, "total": prefix + suffix}


def matmul_peak_flops(dtype, device, packed: bool, seconds: float = 0.5) -> float:
    """FLOP/s of a large (816 x 2048 x 16384, a Gemma-2B MLP product) matmul here, best of a few runs."""
    import torch
    import torch.nn.functional as F

    rows, inner, outer = 816, 2048, 16384
    x = torch.randn(rows, inner, device=device).to(dtype)
    weight = torch.randn(outer, inner, device=device).to(dtype)
    if packed:
        from vla_ros.engines.cpu_packed import PackedLinear

        layer = PackedLinear(weight, None, rows)

        def product():
            return layer(x)

    else:

        def product():
            return F.linear(x, weight)

    def synchronize():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    product()
    synchronize()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        product()
        synchronize()
        now = time.perf_counter()
        best = min(best, now - start)
        if now >= deadline:
            break
    return 2.0 * rows * inner * outer / best
