"""The autoregressive decode stage: one token per step over a static K/V cache.

After the prefix encoder has filled the front of the cache with the prompt's
K/V (and given the logits of its last token), the language model writes new
tokens one at a time: pi0-FAST's action tokens, and later the reasoning text of
"reason, then act" policies. What a straightforward port does per token, and
what this module does instead:

- the cache is concatenated with each new token's K/V (every layer copies the
  whole cache, every token): here it is allocated once, prefix rows plus
  `max_new_tokens` rows, and each step writes its one row in place
  (`index_copy_` at a slot held in a device tensor);
- the token, its RoPE position, the slot, the key mask and the chosen next
  token all live in static buffers, and the choice of the next token (argmax,
  or the Gumbel-max form of temperature sampling) happens inside the step, so
  a step reads nothing from the host: on CUDA the step is captured once as a
  CUDA graph and replayed per token (`CudaGraphDecodeStep`); on the CPU it runs
  eagerly;
- stop tokens are checked on the host every `check_every` tokens on a GPU
  (every token on the CPU, where reading is free); tokens decoded past a stop
  are discarded, so the result is the same as stopping at once.

`ConcatCacheDecoder` is the straightforward form, kept as the bench baseline
and as a second reference (model/pi0_fast.py `decode_step`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from vla_ros.engines.base import Engine, ModelInputs
from vla_ros.engines.suffix import aligned_rows
from vla_ros.errors import EngineError
from vla_ros.model.gemma import KVCache
from vla_ros.model.layers import apply_rope, attention, attention_bias, linear, rope_cos_sin


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """Generated token ids, stop token excluded; `stop` is the stop id met, None if the budget ran out."""

    ids: np.ndarray
    stop: int | None

    @property
    def num_tokens(self) -> int:
        """Tokens the model produced, the stop token included."""
        return len(self.ids) + (self.stop is not None)


def _cut_at_stop(ids: np.ndarray, stop_ids) -> DecodeResult:
    for index, token in enumerate(ids.tolist()):
        if token in stop_ids:
            return DecodeResult(ids=ids[:index].copy(), stop=int(token))
    return DecodeResult(ids=ids.copy(), stop=None)


def _budget(size: int, asked: int | None) -> int:
    if asked is not None and int(asked) < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {asked}")
    return size if asked is None else min(int(asked), size)


def _generator(device, seed: int | None) -> torch.Generator:
    """A sampler's generator: seeded, or from fresh entropy when `seed` is None (policy.seed -1)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def gumbel_choice(logits: torch.Tensor, temperature: torch.Tensor | float, generator=None) -> torch.Tensor:
    """A sample of softmax(logits / temperature) (B, V) -> (B,), as argmax(logits / T + Gumbel noise).

    The Gumbel-max form samples exactly the categorical distribution with
    one argmax and no host-side branching, so it can sit inside a CUDA graph.
    """
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return (logits / temperature + gumbel).argmax(dim=-1)


class StaticDecoder(nn.Module):
    """Decodes up to `max_new_tokens` for batch size 1 with `model`'s language model.

    Buffers: `keys` / `values` (L, 1, KV, P + N, hd), each layer starting on a
    256-byte boundary like the suffix's, `prefix_keys` / `prefix_values` /
    `prefix_pad` the front views the prefix runtimes fill; `valid` (1, P + N)
    the key mask. `step()` feeds `token` at `position` into `slot`, writes the
    next token into `token` and `history[count]`, and advances.

    `temperature` 0 decodes greedily; above 0 it samples (fixed at
    construction: greedy and sampled steps are different graphs).
    `position_gap`: RoPE positions skipped between the prompt and the first
    decoded token (openpi: 1, LeRobot: 0; engines/factory.py).
    """

    def __init__(self, model, max_new_tokens: int, temperature: float = 0.0,
                 device: torch.device | str | None = None, seed: int | None = None, position_gap: int = 0):
        super().__init__()
        self.position_gap = int(position_gap)
        cfg = model.cfg
        self.model = model  # shares the weights
        self.cfg = cfg
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        device = torch.device(device) if device is not None else model.device
        self.dtype = model.compute_dtype
        lm = cfg.prefix
        self.plen = cfg.prefix_len
        rows = self.plen + self.max_new_tokens
        element = torch.empty((), dtype=self.dtype).element_size()
        stored = aligned_rows(rows, lm.num_kv_heads, lm.head_dim, element)
        for name in ("keys", "values"):
            shape = (lm.depth, 1, lm.num_kv_heads, stored, lm.head_dim)
            padded = torch.zeros(shape, dtype=self.dtype, device=device)
            self.register_buffer(name, padded[:, :, :, :rows], persistent=False)

        def buffer(name, *shape, dtype):
            self.register_buffer(name, torch.zeros(*shape, dtype=dtype, device=device), persistent=False)

        buffer("prefix_pad", 1, self.plen, dtype=torch.bool)
        buffer("valid", 1, rows, dtype=torch.bool)
        buffer("token", 1, 1, dtype=torch.int64)
        buffer("position", 1, 1, dtype=torch.int64)
        buffer("slot", 1, dtype=torch.int64)
        buffer("count", 1, dtype=torch.int64)
        buffer("history", self.max_new_tokens, dtype=torch.int64)
        buffer("first_logits", 1, cfg.vocab_size, dtype=torch.float32)
        buffer("logits", 1, cfg.vocab_size, dtype=torch.float32)  # the last step's
        # Sampling draws from this generator on every device (a CUDA graph registers it).
        self.generator = _generator(device, seed) if self.temperature > 0.0 else None

    @property
    def prefix_keys(self) -> torch.Tensor:
        return self.keys[:, :, :, : self.plen]

    @property
    def prefix_values(self) -> torch.Tensor:
        return self.values[:, :, :, : self.plen]

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature > 0.0:
            return gumbel_choice(logits, self.temperature, self.generator)
        return logits.argmax(dim=-1)

    # -- per inference -------------------------------------------------------------------------
    @torch.no_grad()
    def start(self, first_logits: torch.Tensor | None = None) -> None:
        """Reset the decoded rows and choose the first token from the prefix's last logits.

        `first_logits` None takes them from the `first_logits` buffer (the
        prefix runtimes write it by address).
        """
        if first_logits is not None:
            self.first_logits.copy_(first_logits.reshape(1, -1))
        self.valid.zero_()
        self.valid[:, : self.plen].copy_(self.prefix_pad)
        self.position.copy_(self.prefix_pad.sum(dim=1, keepdim=True) + self.position_gap)
        self.slot.fill_(self.plen)
        self.count.fill_(1)
        first = self.choose(self.first_logits)
        self.history[:1].copy_(first)
        self.token.copy_(first.view(1, 1))

    # -- one token -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """Feed `token`, choose the next one: reads and writes static buffers only."""
        model = self.model
        lm = model.language_model
        self.valid.index_fill_(1, self.slot, True)
        mask = attention_bias(self.valid[:, None, :])
        cos, sin = rope_cos_sin(self.position, self.cfg.prefix.head_dim)
        hidden = model.embed_text(self.token)
        for index, layer in enumerate(lm.layers):
            normed, _ = layer.input_layernorm(hidden)
            q, k, v = layer.self_attn.qkv(normed)
            self.keys[index].index_copy_(2, self.slot, apply_rope(k, cos, sin).to(self.dtype))
            self.values[index].index_copy_(2, self.slot, v.to(self.dtype))
            attn = attention(apply_rope(q, cos, sin), self.keys[index], self.values[index], mask)
            hidden = hidden + linear(layer.self_attn.o_proj, attn).to(hidden.dtype)
            normed, _ = layer.post_attention_layernorm(hidden)
            hidden = hidden + layer.mlp(normed).to(hidden.dtype)
        out, _ = lm.norm(hidden)
        self.logits.copy_(model.logits(out[:, -1]))
        chosen = self.choose(self.logits)
        self.history.index_copy_(0, self.count, chosen)
        self.token.copy_(chosen.view(1, 1))
        self.position.add_(1)
        self.slot.add_(1)
        self.count.add_(1)

    def generate(self, stop_ids=(), max_new_tokens: int | None = None, run_step=None,
                 check_every: int = 1) -> DecodeResult:
        """Decode after `start()`: at most `max_new_tokens` (<= the buffers' size) tokens."""
        budget = _budget(self.max_new_tokens, max_new_tokens)
        run_step = run_step or self.step
        stop_ids = frozenset(int(s) for s in stop_ids)
        produced = 1
        while produced < budget:
            # Every token is in exactly one window of `check_every`, read once it is written.
            if stop_ids and produced % check_every == 0:
                if stop_ids & set(self.history[produced - check_every:produced].tolist()):
                    break
            run_step()
            produced += 1
        return _cut_at_stop(self.history[:produced].cpu().numpy(), stop_ids)


class CudaGraphDecodeStep:
    """`run()` replays one captured decode step on torch's current stream."""

    def __init__(self, decoder: StaticDecoder, warmup: int = 2):
        if not torch.cuda.is_available() or decoder.keys.device.type != "cuda":
            raise EngineError("decode 'cuda_graph' needs the model on a CUDA device; use 'eager' on the CPU")
        self.decoder = decoder
        self.graph = torch.cuda.CUDAGraph()
        if decoder.generator is not None:
            register = getattr(self.graph, "register_generator_state", None)
            if register is None:
                raise EngineError(
                    "sampling (policy.temperature > 0) inside a CUDA graph needs torch's "
                    "CUDAGraph.register_generator_state; set policy.suffix 'eager' or temperature 0"
                )
            register(decoder.generator)
        # Warm-up steps write decoded rows: never more than the buffers hold.
        warmup = min(warmup, decoder.max_new_tokens - 1)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            decoder.start()
            for _ in range(warmup):
                decoder.step()
        torch.cuda.current_stream().wait_stream(stream)
        decoder.start()
        with torch.cuda.graph(self.graph):
            decoder.step()
        torch.cuda.synchronize()

    def run(self) -> None:
        self.graph.replay()


class ConcatCacheDecoder:
    """The straightforward decode: the cache grows by concatenation every token (bench baseline).

    Samples like StaticDecoder (`temperature` > 0: Gumbel-max with a generator
    seeded by `seed`), so the reference engine honours policy.temperature too.
    """

    def __init__(self, model, max_new_tokens: int, position_gap: int = 0, temperature: float = 0.0,
                 seed: int | None = None):
        self.model = model
        self.max_new_tokens = int(max_new_tokens)
        self.position_gap = int(position_gap)
        self.temperature = float(temperature)
        self.generator = _generator(model.device, seed) if self.temperature > 0.0 else None

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature > 0.0:
            return gumbel_choice(logits, self.temperature, self.generator)
        return logits.argmax(dim=-1)

    @torch.no_grad()
    def generate(self, cache: KVCache, first_logits: torch.Tensor, stop_ids=(),
                 max_new_tokens: int | None = None, logits_out: list | None = None) -> DecodeResult:
        """Decode after the prefix `cache`; `logits_out` (a list) receives each token's logits (1, V)."""
        budget = _budget(self.max_new_tokens, max_new_tokens)
        if logits_out is not None:
            logits_out.append(first_logits.reshape(1, -1))
        stop_ids = frozenset(int(s) for s in stop_ids)
        position = cache.pad_mask.sum(dim=1) + self.position_gap
        token = self.choose(first_logits.reshape(1, -1))
        ids = [int(token)]
        for step in range(1, budget):
            if ids[-1] in stop_ids:
                break
            logits, cache = self.model.decode_step(cache, token, position + step - 1)
            if logits_out is not None:
                logits_out.append(logits)
            token = self.choose(logits)
            ids.append(int(token))
        return _cut_at_stop(np.asarray(ids, dtype=np.int64), stop_ids)


class DecodeEngine(Engine):
    """The optimised decode engine: a prefix runtime filling a StaticDecoder's cache, then per-token steps.

    `mode` "cuda_graph" replays one captured step per token (the CUDA default);
    "eager" runs the step as Python (the CPU). On CUDA everything runs on one
    dedicated stream, as in OptimizedEngine.
    """

    name = "optimized"
    stage = "decode"

    def __init__(self, prefix_runtime, decoder: StaticDecoder, mode: str = "eager", check_every: int = 8):
        from vla_ros.engines.cuda_stream import dedicated_stream

        self.prefix = prefix_runtime
        self.decoder = decoder
        self.mode = mode
        self.device = decoder.keys.device
        self.stream = None
        if self.device.type == "cuda":
            self.stream = getattr(prefix_runtime, "stream", None) or dedicated_stream(self.device)
            if self.stream is not None:
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self.check_every = check_every if self.device.type == "cuda" else 1
        self._run_step = decoder.step
        if decoder.max_new_tokens < 2:
            mode = self.mode = "eager"  # one token comes from the prefix: no step ever runs
        if mode == "cuda_graph":
            from vla_ros.engines.cuda_stream import running_on

            with running_on(self.stream):
                self._run_step = CudaGraphDecodeStep(decoder).run

    def encode_prefix(self, inputs: ModelInputs) -> None:
        from vla_ros.engines.cuda_stream import running_on

        d = self.decoder
        with running_on(self.stream):
            logits = self.prefix.run(
                inputs.images[None], inputs.image_masks[None], inputs.tokens[None].astype(np.int64),
                inputs.token_masks[None], d.prefix_keys, d.prefix_values, d.prefix_pad,
            )
            if logits is not None:  # runtimes that bind the buffer by address return None
                d.first_logits.copy_(logits.reshape(1, -1))

    def denoise(self, inputs: ModelInputs, guidance=None) -> np.ndarray:
        raise NotImplementedError("pi0-FAST has no flow-matching stage; use decode()")

    @torch.no_grad()
    def decode(self, stop_ids=(), max_new_tokens: int | None = None) -> DecodeResult:
        from vla_ros.engines.cuda_stream import running_on

        with running_on(self.stream):
            self.decoder.start()
            return self.decoder.generate(stop_ids, max_new_tokens, self._run_step, self.check_every)

    def describe(self) -> dict:
        from vla_ros.engines.cpu_packed import is_packed

        return {
            "engine": self.name,
            "device": str(self.device),
            "decode": self.mode,
            "decode_dtype": str(self.decoder.dtype).replace("torch.", ""),
            "max_new_tokens": self.decoder.max_new_tokens,
            "temperature": self.decoder.temperature,
            "packed_weights": is_packed(self.decoder.model),
            "prefix": self.prefix.name,
            **{f"prefix_{k}": v for k, v in self.prefix.describe().items() if k != "engine"},
        }


class ReferenceDecodeEngine(Engine):
    """Eager `Pi0FastModel.prefix` + the concatenating decode: the reference for DecodeEngine."""

    name = "reference"
    stage = "decode"

    def __init__(self, model, max_new_tokens: int, position_gap: int = 0, temperature: float = 0.0,
                 seed: int | None = None):
        self.model = model
        self.device = model.device
        self.decoder = ConcatCacheDecoder(model, max_new_tokens, position_gap, temperature, seed)
        self._prefix = None

    @torch.no_grad()
    def encode_prefix(self, inputs: ModelInputs) -> None:
        from vla_ros.engines.reference import batch_tensors

        self._prefix = self.model.prefix(**batch_tensors(inputs, self.device))

    def denoise(self, inputs: ModelInputs, guidance=None) -> np.ndarray:
        raise NotImplementedError("pi0-FAST has no flow-matching stage; use decode()")

    def decode(self, stop_ids=(), max_new_tokens: int | None = None) -> DecodeResult:
        if self._prefix is None:
            raise RuntimeError("encode_prefix must run before decode")
        cache, logits = self._prefix
        return self.decoder.generate(cache, logits, stop_ids, max_new_tokens)

    def describe(self) -> dict:
        return {"engine": self.name, "device": str(self.device), "dtype": str(self.model.compute_dtype),
                "decode": "concatenating cache"}
