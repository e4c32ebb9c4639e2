"""The arithmetic a pi inference needs, and what this machine can do: a latency bound.

`vla-ros bench` prints the bound beside its measurements, so that a target
like "3 s at full size" can be judged against the hardware it runs on: the
figure is the matmul FLOPs of one inference divided by the peak of a large
matmul measured here, now, in the engine's precision.

Decode models (pi0-FAST) also write tokens one at a time after the prefix. A
decode step is one token through the language model (attending to the cache
so far) and the LM head over the whole vocabulary: a few FLOPs per weight, so
at batch 1 it is bound by reading the weights, not by matmul throughput. Its
bound is the roofline max(FLOPs / matmul peak, bytes read / memory bandwidth),
both measured here.
"""

from __future__ import annotations

import time

from vla_ros.model.config import GemmaConfig, LlamaConfig, PolicyConfig, SmolVLAConfig


def _gemma_layer(cfg: GemmaConfig | LlamaConfig, tokens: int, keys: int, kv_only: bool = False) -> float:
    """One Gemma or Llama layer (the same products: q/k/v/o, a gated MLP of three, QK^T and PV)."""
    q_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    if kv_only:  # the prefix's last layer: its K/V is all the cache needs
        return 2.0 * tokens * cfg.width * 2 * kv_width
    projections = cfg.width * (q_width + 2 * kv_width) + q_width * cfg.width + 3 * cfg.width * cfg.mlp_dim
    attention = 2 * keys * q_width  # QK^T and PV per query token
    return 2.0 * tokens * (projections + attention)


def lm_head_flops(cfg: PolicyConfig, tokens: int = 1) -> float:
    """The LM head (final-normed hidden -> logits over the vocabulary) for `tokens` rows."""
    return 2.0 * tokens * cfg.prefix.width * cfg.vocab_size


def decode_step_flops(cfg: PolicyConfig, keys: int) -> float:
    """One decoded token: every LM layer over it, attending to `keys` keys (cache + itself), and the head."""
    return cfg.prefix.depth * _gemma_layer(cfg.prefix, 1, keys) + lm_head_flops(cfg)


def decode_flops(cfg: PolicyConfig, prefix_tokens: int, tokens: int) -> float:
    """Producing `tokens` tokens after a prefix of `prefix_tokens`: `tokens - 1` decode steps.

    The first token comes from the prefix's logits (counted in the prefix);
    step i (1-based) feeds token i, which attends to the prefix, the i - 1
    tokens before it and itself.
    """
    return sum(decode_step_flops(cfg, prefix_tokens + i) for i in range(1, tokens))


def inference_flops(
    cfg: PolicyConfig, cameras: int, prompt_tokens: int, num_steps: int = 10, decode_tokens: int = 0
) -> dict:
    """Matmul / convolution FLOPs of one inference: {'prefix', 'suffix', 'decode', 'total'}.

    cameras and prompt_tokens are what the compacting PyTorch prefix encodes
    (masked cameras and prompt padding dropped). Elementwise work is left out.
    pi0 / pi0.5: the prefix builds the cache (its last layer only K/V), the
    suffix runs `num_steps` denoising steps; 'decode' is 0. pi0-FAST: the
    prefix runs every layer in full (as Pi0FastModel.prefix does, although only
    the last token's output is used) and the LM head on the last token; 'decode'
    is `decode_tokens` tokens (decode_flops); 'suffix' is 0. SmolVLA: `smolvla_flops`.
    """
    if isinstance(cfg, SmolVLAConfig):
        return smolvla_flops(cfg, cameras, prompt_tokens, num_steps)
    vision = _vision_flops(cfg, cameras)
    p = cameras * cfg.vision.num_tokens + prompt_tokens
    if cfg.is_fast:
        # Pi0FastModel.prefix_parts: the last layer's K/V over every token, then the whole layer
        # (its q/k/v projection included) for the last one.
        last = _gemma_layer(cfg.prefix, p, p, kv_only=True) + _gemma_layer(cfg.prefix, 1, p)
        prefix = vision + (cfg.prefix.depth - 1) * _gemma_layer(cfg.prefix, p, p) + last + lm_head_flops(cfg)
        decode = decode_flops(cfg, p, decode_tokens) if decode_tokens else 0.0
        return {"prefix": prefix, "suffix": 0.0, "decode": decode, "total": prefix + decode}
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
    return {"prefix": prefix, "suffix": suffix, "decode": 0.0, "total": prefix + suffix}


def _vision_flops(cfg: PolicyConfig | SmolVLAConfig, cameras: int) -> float:
    """SigLIP over `cameras` images: patch embedding, the layers, and the projector into the text width.

    SmolVLA's connector (pixel shuffle by s, then (s^2 w) -> text width over
    t / s^2 tokens) has the same product count as PaliGemma's projector.
    """
    v = cfg.vision
    t = v.num_tokens
    vision_layer = 2.0 * t * (4 * v.width * v.width + 2 * v.width * v.mlp_dim + 2 * t * v.width)
    patch = 2.0 * t * (3 * v.patch_size**2) * v.width
    projector = 2.0 * t * v.width * cfg.prefix.width
    return cameras * (v.depth * vision_layer + patch + projector)


def smolvla_flops(cfg: SmolVLAConfig, cameras: int, prompt_tokens: int, num_steps: int = 10) -> dict:
    """SmolVLA's matmul FLOPs as the optimised engine runs them (engines/suffix_smolvla.py).

    prefix: the vision tower and connector per present camera, the state
    projection (one row), the text layers over the compacted prefix
    (cameras x tokens_per_image + prompt_tokens + the state token; the last
    layer only K/V). suffix: once per inference, the cross-attention layers'
    k_proj / v_proj over the static prefix buffer (cfg.prefix_len rows, padding
    included); per Euler step the action heads (the time half of the
    action-time MLP is precomputed), self-attention layers over that buffer
    plus the H action rows, cross-attention layers over the buffer.
    """
    text, e = cfg.text, cfg.expert
    p = cameras * cfg.tokens_per_image + prompt_tokens + 1
    language = (text.depth - 1) * _gemma_layer(text, p, p) + _gemma_layer(text, p, p, kv_only=True)
    prefix = _vision_flops(cfg, cameras) + 2.0 * cfg.action_dim * text.width + language
    h, buffer = cfg.action_horizon, cfg.prefix_len
    q_width, kv_width = e.num_heads * e.head_dim, e.num_kv_heads * e.head_dim
    # action_in / out_proj, the action half of action_time_mlp_in, action_time_mlp_out
    heads = 2.0 * h * (2 * cfg.action_dim * e.width + 2 * e.width * e.width)
    cross = 2.0 * h * (2 * e.width * q_width + 3 * e.width * e.mlp_dim + 2 * buffer * q_width)
    step = heads
    cross_kv = 0.0
    for index in range(e.depth):
        if cfg.is_self_attention(index):
            step += _gemma_layer(e, h, buffer + h)
        else:
            step += cross
            cross_kv += 2.0 * buffer * 2 * kv_width * kv_width
    suffix = cross_kv + num_steps * step
    return {"prefix": prefix, "suffix": suffix, "decode": 0.0, "total": prefix + suffix}


def decode_weight_count(cfg: PolicyConfig) -> int:
    """Parameters a decode step reads: every LM layer (norms included), the final norm and the LM head."""
    g = cfg.prefix
    q_width, kv_width = g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
    layer = g.width * (q_width + 2 * kv_width) + q_width * g.width + 3 * g.width * g.mlp_dim + 2 * g.width
    return g.depth * layer + g.width + cfg.vocab_size * g.width


def decode_step_bytes(cfg: PolicyConfig, keys: int, element_size: int) -> float:
    """Bytes one decode step must read at least: its weights and the K/V of `keys` cached tokens."""
    g = cfg.prefix
    cache = g.depth * 2 * g.num_kv_heads * g.head_dim * keys
    return float(element_size * (decode_weight_count(cfg) + cache))


def decode_bound(cfg: PolicyConfig, prefix_tokens: int, tokens: int, element_size: int, peak_flops: float,
                 bandwidth: float) -> dict:
    """Per decode step, averaged over the `tokens - 1` steps of an inference: FLOPs, bytes and bounds (s)."""
    steps = max(tokens - 1, 1)
    flops = decode_flops(cfg, prefix_tokens, tokens) / steps
    mean_keys = prefix_tokens + (steps + 1) / 2  # keys of the average step
    nbytes = decode_step_bytes(cfg, round(mean_keys), element_size)
    compute_s, memory_s = flops / peak_flops, nbytes / bandwidth
    return {
        "step_flops": flops,
        "step_bytes": nbytes,
        "compute_bound_s": compute_s,
        "memory_bound_s": memory_s,
        "bound_s": max(compute_s, memory_s),
        "bandwidth": bandwidth,
    }


def _synchronize(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _best_time(fn, device, seconds: float) -> float:
    fn()
    _synchronize(device)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        fn()
        _synchronize(device)
        now = time.perf_counter()
        best = min(best, now - start)
        if now >= deadline:
            return best


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

    return 2.0 * rows * inner * outer / _best_time(product, device, seconds)


def memory_bandwidth(device, megabytes: int = 256, seconds: float = 0.3) -> float:
    """Bytes/s of a large device-memory copy here (read + write counted), best of a few runs."""
    import torch

    count = megabytes * 2**20 // 4
    source = torch.ones(count, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    return 2.0 * source.nbytes / _best_time(lambda: target.copy_(source), device, seconds)
