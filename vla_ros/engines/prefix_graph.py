"""The exported prefix graph's interface, shared by the exporter, its validation and the runtime.

Input and output names, the dtype tables that turn onnxruntime's type names into
torch dtypes and torch dtypes into IO-binding element types, the module that is
traced, the inputs it is traced and validated with, and the input staging and
output hand-over the onnxruntime and TensorRT runtimes share.

Why one output per layer: both runtimes bind an output to one pointer and a
dense shape (no strides). The suffix keeps prefix and suffix K/V in one buffer
per layer, (L, 1, KV, P + S, hd), so the prefix part of all layers together is
not contiguous (each layer's suffix rows sit between it and the next layer) and
a stacked (L, 1, KV, P, hd) output can only be written elsewhere and copied.
Each layer's prefix part (1, KV, P, hd) is contiguous when KV == 1, which holds
for every pi0 / pi0.5 Gemma (multi-query attention): there a per-layer output
is bound to it and the runtime writes the suffix's K/V by address, no copy.

Decode models (pi0-FAST) have one more output, `last_logits` (1, vocab) fp32:
the logits of the last real prompt token, from which the decode stage picks its
first token. `DecodePrefixEncoder` computes the last layer's attention, MLP,
final norm and LM head for that one gathered token only (the cache needs every
token's K/V, the logits one token's hidden state), which keeps the graph and
its work small: the head alone over all P tokens would be P x vocab outputs.
The runtimes bind `last_logits` by address to the decode stage's
`first_logits` buffer where they can (`logits_target`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vla_ros.errors import EngineError
from vla_ros.model.config import PolicyConfig
from vla_ros.model.gemma import KVCache
from vla_ros.model.pi0 import Pi0Model

INPUT_NAMES = ("images", "image_masks", "tokens", "token_masks")
PAD_MASK = "pad_mask"
LAST_LOGITS = "last_logits"  # decode models only: (1, vocab) fp32 of the last real prompt token
# Artifacts exported before the per-layer outputs: still run, through one copy per output.
STACKED_OUTPUT_NAMES = ("keys", "values", PAD_MASK)


def output_names(depth: int, logits: bool = False) -> tuple[str, ...]:
    """The graph's outputs for a `depth`-layer prefix: keys_0 .. keys_{L-1}, values_0 .., pad_mask.

    `logits` (decode models): last_logits after them.
    """
    names = (*(f"keys_{i}" for i in range(depth)), *(f"values_{i}" for i in range(depth)), PAD_MASK)
    return (*names, LAST_LOGITS) if logits else names


def graph_output_names(cfg: PolicyConfig) -> tuple[str, ...]:
    """The outputs the prefix graph of `cfg` has (pi0 / pi0.5: K/V and pad mask; pi0-FAST: + last_logits)."""
    return output_names(cfg.prefix.depth, logits=cfg.is_fast)


ONNX_ELEMENT_TYPES = {  # onnx.TensorProto.DataType values, as IO binding takes them
    torch.float32: 1, torch.uint8: 2, torch.int32: 6, torch.int64: 7,
    torch.bool: 9, torch.float16: 10, torch.bfloat16: 16,
}
_ORT_TYPES = {
    "tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
    "tensor(uint8)": torch.uint8, "tensor(int32)": torch.int32, "tensor(int64)": torch.int64,
    "tensor(bool)": torch.bool,
}


def ort_type_to_torch(type_string: str) -> torch.dtype:
    """onnxruntime's 'tensor(float)' style type names -> torch dtypes."""
    if type_string not in _ORT_TYPES:
        raise EngineError(
            f"unsupported graph tensor type {type_string}; expected one of {sorted(_ORT_TYPES)}"
        )
    return _ORT_TYPES[type_string]


def stage_inputs(buffers: dict[str, torch.Tensor], values, cfg: PolicyConfig) -> None:
    """Copy the prefix inputs (INPUT_NAMES order; numpy or torch, batched or not) into static buffers."""
    for name, value in zip(INPUT_NAMES, values):
        buffer = buffers[name]
        if isinstance(value, torch.Tensor):
            source = value
        else:
            array = np.asarray(value)
            source = torch.from_numpy(array if array.flags.writeable else array.copy())
        if name == "images" and buffer.dtype == torch.uint8 and source.is_floating_point():
            # Float images in [-1, 1] into a graph that takes uint8 (an older export): the
            # nearest level, at most half a level (1/255 in [-1, 1] units) away.
            source = ((source.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
        elif name == "images" and buffer.is_floating_point() and not source.is_floating_point():
            # uint8 images into a graph that takes float [-1, 1] (a LeRobot export run the openpi way).
            source = source.float() / 255.0 * 2.0 - 1.0
        if source.numel() != buffer.numel():
            raise EngineError(
                f"prefix input '{name}' has shape {tuple(source.shape)}; the exported graph takes "
                f"{tuple(buffer.shape)} (batch 1, {cfg.num_cameras} cameras, {cfg.max_token_len} tokens)"
            )
        buffer.copy_(source.reshape(buffer.shape))


def check_graph_io(source, inputs, outputs, depth: int, remedy: str, logits: bool = False) -> None:
    """EngineError unless a graph / engine has INPUT_NAMES and the per-layer (or older stacked) outputs.

    `logits`: a decode model's graph, which must also have last_logits (there is no older form).
    """
    outputs = set(outputs)
    accepted = [set(output_names(depth, logits))] + ([] if logits else [set(STACKED_OUTPUT_NAMES)])
    if set(inputs) == set(INPUT_NAMES) and outputs in accepted:
        return
    raise EngineError(
        f"{source} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; expected "
        f"{list(INPUT_NAMES)} -> keys_0..keys_{depth - 1}, values_0..values_{depth - 1}, pad_mask"
        f"{', ' + LAST_LOGITS if logits else ''}: {remedy}"
    )


def split_logits(outputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(the K/V and pad-mask outputs, the last_logits output or None) of a runtime's output tensors."""
    kv = {name: tensor for name, tensor in outputs.items() if name != LAST_LOGITS}
    return kv, outputs.get(LAST_LOGITS)


def logits_target(own: torch.Tensor, target: torch.Tensor | None, alignment: int = 1) -> torch.Tensor:
    """Where a runtime writes last_logits: `target` (the decode stage's first_logits) where it can bind it.

    That is when `target` has the output's shape (batch and vocab), device and
    dtype, is one dense block and its address is a multiple of `alignment` bytes;
    otherwise the runtime's own tensor `own`, which `run` returns for the caller to copy.
    """
    if target is None:
        return own
    if target.numel() != own.numel():
        raise EngineError(
            f"the logits buffer has shape {tuple(target.shape)}; the prefix writes {tuple(own.shape)} "
            "(is the artifact from a model with another vocabulary?)"
        )
    direct = (target.device == own.device and target.dtype == own.dtype and target.is_contiguous()
              and target.data_ptr() % alignment == 0)
    return target.view(own.shape) if direct else own


def kv_shape(shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """(L, 1, KV, P, hd), the keys / values buffer shape a graph with these output shapes fills."""
    if "keys" in shapes:
        return tuple(shapes["keys"])
    depth = sum(1 for name in shapes if name.startswith("keys_"))
    return (depth, *shapes["keys_0"])


def output_regions(
    names, keys: torch.Tensor, values: torch.Tensor, pad_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The part of the caller's buffers each graph output fills, by output name.

    keys / values are (L, 1, KV, P, hd) (views into the suffix's K/V buffers);
    per-layer graphs fill keys[l] from keys_l, stacked (older) graphs fill all of keys.
    """
    names = set(names)
    if names == set(STACKED_OUTPUT_NAMES):
        return {"keys": keys, "values": values, PAD_MASK: pad_mask}
    depth = keys.shape[0]
    if names != set(output_names(depth)):
        raise EngineError(
            f"the prefix graph has outputs {sorted(names)}; the suffix's K/V buffers have {depth} layers, "
            f"expected keys_0..keys_{depth - 1}, values_0..values_{depth - 1}, pad_mask: re-export with "
            "`vla-ros export`"
        )
    regions = {f"keys_{i}": keys[i] for i in range(depth)}
    regions.update({f"values_{i}": values[i] for i in range(depth)})
    regions[PAD_MASK] = pad_mask
    return regions


def output_targets(
    own: dict[str, torch.Tensor], regions: dict[str, torch.Tensor], alignment: int = 1
) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Where a runtime writes each output, and the (target, own) copies left after.

    A region of the caller's buffers is written directly (bound by address, no
    copy) where its device and dtype match the output's, its memory is one
    dense block (is_contiguous) and its address a multiple of `alignment` bytes
    (TensorRT: 256); otherwise the runtime writes its own output tensor
    `own[name]` and a (cast) copy follows.
    """
    bound, staged = {}, []
    for name, mine in own.items():
        target = regions[name]
        if tuple(target.shape) != tuple(mine.shape):
            raise EngineError(
                f"output buffer '{name}' has shape {tuple(target.shape)}; "
                f"the prefix writes {tuple(mine.shape)}"
            )
        direct = (target.device == mine.device and target.dtype == mine.dtype and target.is_contiguous()
                  and target.data_ptr() % alignment == 0)
        bound[name] = target if direct else mine
        if not direct:
            staged.append((target, mine))
    return bound, staged


def staging_reason(target: torch.Tensor, own: torch.Tensor, alignment: int = 1) -> str:
    """Why an output region could not be bound by address (for the one log line a runtime writes)."""
    if target.device != own.device:
        return f"the K/V buffers are on {target.device}, the runtime writes on {own.device}"
    if target.dtype != own.dtype:
        return f"the K/V buffers are {target.dtype}, the graph writes {own.dtype}"
    if not target.is_contiguous():
        return (f"a layer's K/V region {tuple(target.shape)} with strides {target.stride()} is not one "
                "dense block (num_kv_heads > 1, or a stacked graph from an older export)")
    return f"a K/V region's address is not a multiple of {alignment} bytes"


class PrefixEncoder(nn.Module):
    """`Pi0Model.embed_prefix` with plain tensor outputs, the form an exporter can trace.

    images uint8 (1, N, 224, 224, 3) (the [-1, 1] scaling happens inside) or float32 in
    [-1, 1] (LeRobot checkpoints), image_masks
    bool (1, N), tokens int64 (1, L), token_masks bool (1, L) ->
    keys_0 .. keys_{L-1}, values_0 .. values_{L-1} (1, KV, P, hd each) in the model's
    compute dtype, pad_mask bool (1, P): the `output_names` order.
    """

    def __init__(self, model: Pi0Model):
        super().__init__()
        self.model = model

    def forward(self, images, image_masks, tokens, token_masks):
        cache = self.model.embed_prefix(images, image_masks, tokens, token_masks)
        return (*cache.keys.unbind(0), *cache.values.unbind(0), cache.pad_mask)


class DecodePrefixEncoder(nn.Module):
    """The prefix of a decode model (pi0-FAST) with plain tensor outputs: K/V, pad mask, last logits.

    Same inputs as PrefixEncoder; outputs keys_0 .. keys_{L-1}, values_0 ..
    values_{L-1} (1, KV, P, hd each, the model's compute dtype), pad_mask bool
    (1, P) and last_logits fp32 (1, vocab): `Pi0FastModel.prefix_parts`, which
    runs the last layer's K/V over all tokens but its query,
    attention output, MLP, the final norm and the LM head over the last real
    prompt token only (gathered by index, so the graph has no data-dependent
    shapes). The head is a matmul with the (vocab, W) weight as it is stored,
    never transposed, so a tied head shares the embedding's initializer.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, image_masks, tokens, token_masks):
        keys, values, pad, logits = self.model.prefix_parts(images, image_masks, tokens, token_masks)
        return (*keys, *values, pad, logits)


def make_encoder(model) -> nn.Module:
    """The module traced for `model`'s graph: DecodePrefixEncoder for decode models, else PrefixEncoder."""
    return DecodePrefixEncoder(model) if model.cfg.is_fast else PrefixEncoder(model)


def reference_prefix(model, inputs: dict[str, torch.Tensor]) -> KVCache:
    """PyTorch's `embed_prefix` (last_logits set for decode models): what validation compares against."""
    with torch.no_grad():
        return model.embed_prefix(**inputs)


def validation_inputs(
    cfg: PolicyConfig, seed: int = 0, float_images: bool = False
) -> dict[str, torch.Tensor]:
    """Random batch-1 prefix inputs that exercise the masks: camera 1 missing, prompt one-third padding.

    ``float_images``: the images as float32 in [-1, 1] (the graph of a LeRobot
    checkpoint takes its float resize unrounded) instead of uint8.
    """
    generator = torch.Generator().manual_seed(seed)
    size, cams, length = cfg.vision.image_size, cfg.num_cameras, cfg.max_token_len
    images = torch.randint(0, 256, (1, cams, size, size, 3), generator=generator, dtype=torch.uint8)
    image_masks = torch.ones(1, cams, dtype=torch.bool)
    if cams > 1:
        # A missing camera arrives as a zero image with mask False, as the policy feeds it.
        image_masks[0, 1] = False
        images[0, 1] = 0
    token_masks = (torch.arange(length) < max(1, length // 3))[None]
    tokens = torch.randint(1, cfg.vocab_size, (1, length), generator=generator, dtype=torch.int64)
    tokens[~token_masks] = 0
    if float_images:
        images = images.float() / 255.0 * 2.0 - 1.0
    return {"images": images, "image_masks": image_masks, "tokens": tokens, "token_masks": token_masks}
