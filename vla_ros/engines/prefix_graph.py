"""The exported prefix graph's interface, shared by the exporter, its validation and the runtime.

Input and output names, the dtype tables that turn onnxruntime's type names into
torch dtypes and torch dtypes into IO-binding element types, the module that is
traced, the inputs it is traced and validated with, and the input staging the
onnxruntime and TensorRT runtimes share.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vla_ros.errors import EngineError
from vla_ros.model.config import PolicyConfig
from vla_ros.model.pi0 import Pi0Model

INPUT_NAMES = ("images", "image_masks", "tokens", "token_masks")
OUTPUT_NAMES = ("keys", "values", "pad_mask")

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
        if source.numel() != buffer.numel():
            raise EngineError(
                f"prefix input '{name}' has shape {tuple(source.shape)}; the exported graph takes "
                f"{tuple(buffer.shape)} (batch 1, {cfg.num_cameras} cameras, {cfg.max_token_len} tokens)"
            )
        buffer.copy_(source.reshape(buffer.shape))


def output_targets(
    own: dict[str, torch.Tensor], targets
) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Where a runtime writes each output (OUTPUT_NAMES order), and the (target, own) copies left after.

    The caller's buffer is written directly where device, dtype and layout match
    (the suffix's static K/V cache: no copy); otherwise the runtime's own output
    tensor, then a cast copy into the target.
    """
    bound, staged = {}, []
    for name, target in zip(OUTPUT_NAMES, targets):
        mine = own[name]
        if tuple(target.shape) != tuple(mine.shape):
            raise EngineError(
                f"output buffer '{name}' has shape {tuple(target.shape)}; "
                f"the prefix writes {tuple(mine.shape)}"
            )
        direct = target.device == mine.device and target.dtype == mine.dtype and target.is_contiguous()
        bound[name] = target if direct else mine
        if not direct:
            staged.append((target, mine))
    return bound, staged


class PrefixEncoder(nn.Module):
    """`Pi0Model.embed_prefix` with plain tensor outputs, the form an exporter can trace.

    images uint8 (1, N, 224, 224, 3) (the [-1, 1] scaling happens inside), image_masks
    bool (1, N), tokens int64 (1, L), token_masks bool (1, L) ->
    keys, values (layers, 1, KV, P, hd) in the model's compute dtype, pad_mask bool (1, P).
    """

    def __init__(self, model: Pi0Model):
        super().__init__()
        self.model = model

    def forward(self, images, image_masks, tokens, token_masks):
        cache = self.model.embed_prefix(images, image_masks, tokens, token_masks)
        return cache.keys, cache.values, cache.pad_mask


def validation_inputs(cfg: PolicyConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random batch-1 prefix inputs that exercise the masks: camera 1 missing, prompt one-third padding."""
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
    return {"images": images, "image_masks": image_masks, "tokens": tokens, "token_masks": token_masks}
