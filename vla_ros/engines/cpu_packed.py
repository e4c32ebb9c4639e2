"""oneDNN-packed bf16 layers for the CPU engines.

`F.linear` on a plain bf16 weight makes oneDNN reorder the whole weight into
its blocked layout on every call. At the suffix's 51 rows that reorder costs
more than the product itself (measured on an AVX512-BF16 CPU, 2 threads:
0.31-0.51 TFLOP/s plain vs 0.75-0.79 packed); at the prefix's ~800 rows it
still costs about 10%. Packing once at load removes it. The same kernels take
fused post-ops, so the GeGLU's GELU and gate*up product, and SigLIP's GELU,
never make a separate pass over the (tokens x mlp_dim) activations: at full
size those passes cost as much per layer as the attention does.

`pack_model` returns a copy of the model whose bf16 layers are replaced by
packed ones; every other tensor is shared with the original, so a caller that
keeps the original (the benchmark's baseline) pays only for the packed
weights. Engines that own their model pack it in place.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from vla_ros.model.config import GemmaConfig
from vla_ros.model.gemma import GemmaSelfAttention
from vla_ros.model.layers import attention
from vla_ros.model.pi0 import Pi0Model
from vla_ros.model.siglip import SiglipAttention, SiglipMLP

# Row count the packed layout is tuned for. oneDNN accepts any row count at run
# time; this only steers its choice of blocking.
PREFIX_ROWS = 816
SUFFIX_ROWS = 51


@functools.lru_cache(maxsize=1)
def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed linear ops and they run here."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.ones(8, 16, dtype=torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 4)
        out = torch.ops.mkldnn._linear_pointwise(
            torch.ones(4, 16, dtype=torch.bfloat16), packed, None, "none", [], ""
        )
    except (AttributeError, RuntimeError):
        return False
    return bool(torch.all(out == 16))


class PackedLinear(nn.Module):
    """A bf16 Linear with its weight in oneDNN's blocked layout; optional fused post-op."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int):
        super().__init__()
        self.dtype = weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
        self.bias = None if bias is None else bias.detach().to(weight.dtype)

    @classmethod
    def of(cls, *layers: nn.Linear, rows: int) -> "PackedLinear":
        """One packed product for several Linears over the same input (outputs concatenated)."""
        weight = torch.cat([layer.weight for layer in layers])
        biases = [layer.bias for layer in layers]
        bias = None if biases[0] is None else torch.cat(biases)
        return cls(weight, bias, rows)

    def forward(self, x: torch.Tensor, post: str = "none", algorithm: str = "") -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x.to(self.dtype), self.packed, self.bias, post, [], algorithm
        )

    def times(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """linear(x) * other in one kernel."""
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), other, self.packed, self.bias, "mul")


class PackedGemmaAttention(nn.Module):
    """GemmaSelfAttention's projections with q, k and v as one product."""

    def __init__(self, attn: GemmaSelfAttention, rows: int):
        super().__init__()
        cfg: GemmaConfig = attn.cfg
        self.cfg = cfg
        self.qkv_proj = PackedLinear.of(attn.q_proj, attn.k_proj, attn.v_proj, rows=rows)
        self.o_proj = PackedLinear.of(attn.o_proj, rows=rows)
        q_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.widths = [q_width, kv_width, kv_width]

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv_proj(x).split(self.widths, dim=-1)
        head_dim = self.cfg.head_dim
        return tuple(t.view(batch, tokens, -1, head_dim).transpose(1, 2) for t in (q, k, v))

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The unused q costs one 2048x2048 product, once per inference (the last prefix layer).
        return self.qkv(x)[1:]


class PackedGatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with the activation and the product fused into the GEMMs.

    `activation`: the oneDNN post-op (and its argument) of the gate's GEMM.
    """

    activation: tuple[str, ...] = ()

    def __init__(self, mlp: nn.Module, rows: int):
        super().__init__()
        self.gate_proj = PackedLinear.of(mlp.gate_proj, rows=rows)
        self.up_proj = PackedLinear.of(mlp.up_proj, rows=rows)
        self.down_proj = PackedLinear.of(mlp.down_proj, rows=rows)

    def gated(self, x: torch.Tensor) -> torch.Tensor:
        """act(gate(x)) * up(x), in the packed dtype (what `down_proj` takes)."""
        x = x.to(self.gate_proj.dtype)
        return self.up_proj.times(x, self.gate_proj(x, *self.activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gated(x))


class PackedGeGLU(PackedGatedMLP):
    """Gemma's GeGLU: the tanh-approximated GELU."""

    activation = ("gelu", "tanh")


class PackedSiglipAttention(nn.Module):

    def __init__(self, attn: SiglipAttention, rows: int):
        super().__init__()
        self.num_heads = attn.num_heads
        self.qkv_proj = PackedLinear.of(attn.q_proj, attn.k_proj, attn.v_proj, rows=rows)
        self.out_proj = PackedLinear.of(attn.out_proj, rows=rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv_proj(x).view(batch, tokens, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.out_proj(attention(q, k, v, None))


class PackedSiglipMLP(nn.Module):

    def __init__(self, mlp: SiglipMLP, rows: int):
        super().__init__()
        self.fc1 = PackedLinear.of(mlp.fc1, rows=rows)
        self.fc2 = PackedLinear.of(mlp.fc2, rows=rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x, "gelu", "tanh"))


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(module, PackedLinear) for module in model.modules())


def _packable(layer: nn.Linear) -> bool:
    return layer.weight.dtype == torch.bfloat16 and layer.weight.device.type == "cpu"


def pack_model(model: Pi0Model, expert: bool = True, inplace: bool = False) -> Pi0Model:
    """A copy of `model` with its bf16 CPU layers packed; all other tensors are shared.

    expert=False leaves the action expert plain, for a torch.compile'd suffix:
    dynamo cannot trace oneDNN's opaque packed tensors. inplace=True packs
    `model` itself, layer by layer, so each plain weight is freed as soon as its
    packed form exists: loading peaks near one copy of the weights, not two.
    """
    if inplace:
        packed = model
    else:
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        packed = copy.deepcopy(model, memo=shared)
    pali = packed.paligemma_with_expert.paligemma.model
    for layer in pali.vision_tower.vision_model.encoder.layers:
        if _packable(layer.self_attn.q_proj):
            layer.self_attn = PackedSiglipAttention(layer.self_attn, PREFIX_ROWS)
        if _packable(layer.mlp.fc1):
            layer.mlp = PackedSiglipMLP(layer.mlp, PREFIX_ROWS)
    if _packable(pali.multi_modal_projector.linear):
        pali.multi_modal_projector.linear = PackedLinear.of(
            pali.multi_modal_projector.linear, rows=PREFIX_ROWS
        )
    stacks = [(packed.language_model, PREFIX_ROWS)] + ([(packed.expert, SUFFIX_ROWS)] if expert else [])
    for stack, rows in stacks:
        for layer in stack.layers:
            if _packable(layer.self_attn.q_proj):
                layer.self_attn = PackedGemmaAttention(layer.self_attn, rows)
            if _packable(layer.mlp.gate_proj):
                layer.mlp = PackedGeGLU(layer.mlp, rows)
    return packed
