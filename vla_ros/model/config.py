"""Model sizes for pi0 / pi0.5 / pi0-FAST, SmolVLA and the notes' expert designs, and the named configs.

Sizes follow (docs/model.md, "Architecture"). The tiny and mid configurations exist so
that tests and benchmarks can build matching models without any download; their
sizes are part of the public interface (external tools build the same shapes).
"""

from __future__ import annotations

import dataclasses
import difflib
import math

from vla_ros.errors import ConfigError


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(name, f"expected a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int = 14
    image_size: int = 224

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _positive(f"vision.{field.name}", getattr(self, field.name))
        if self.width % self.num_heads:
            raise ConfigError("vision.num_heads", f"must divide vision.width={self.width}")
        if self.image_size % self.patch_size:
            raise ConfigError("vision.patch_size", f"must divide vision.image_size={self.image_size}")

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """One Gemma stack: the prefix language model or the action expert."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _positive(f"gemma.{field.name}", getattr(self, field.name))
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("gemma.num_kv_heads", f"must divide num_heads={self.num_heads}")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """The autoregressive decode stage: the language model writes tokens after the prefix.

    pi0-FAST decodes its action chunk as FAST tokens mapped into the top of the
    PaliGemma vocabulary, `pg_id = vocab_size - 1 - fast_skip_tokens - fast_id`
    (docs/model.md, "pi0-FAST action tokens"). `max_decoding_steps` sizes the
    static K/V cache (prefix + this many new tokens).
    """

    max_decoding_steps: int = 256
    fast_skip_tokens: int = 128

    def __post_init__(self) -> None:
        _positive("decode.max_decoding_steps", self.max_decoding_steps)
        if isinstance(self.fast_skip_tokens, bool) or not isinstance(self.fast_skip_tokens, int) \
                or self.fast_skip_tokens < 0:
            raise ConfigError(
                "decode.fast_skip_tokens", f"expected an integer >= 0, got {self.fast_skip_tokens!r}"
            )


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """A whole pi0, pi0.5 or pi0-FAST policy.

    pi05 selects pi0.5: AdaRMS time conditioning in the expert, no state token,
    the discretized state inside the prompt and quantile normalization.
    `decode` set and `expert` None is pi0-FAST: no flow-matching expert, the
    language model decodes action tokens after a prompt that carries the
    discretized state.
    """

    name: str
    pi05: bool
    vision: VisionConfig
    prefix: GemmaConfig
    expert: GemmaConfig | None
    vocab_size: int = 257152
    action_horizon: int = 50
    action_dim: int = 32
    max_token_len: int = 48
    num_cameras: int = 3
    decode: DecodeConfig | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "action_horizon", "action_dim", "max_token_len", "num_cameras"):
            _positive(name, getattr(self, name))
        if self.expert is None:
            if self.decode is None:
                raise ConfigError("expert", "a policy needs an action expert or a decode stage (pi0-FAST)")
            if self.pi05:
                raise ConfigError("pi05", "pi0.5 needs its action expert; pi0-FAST sets pi05 false")
            if self.vocab_size <= self.decode.fast_skip_tokens + 1:
                raise ConfigError("vocab_size", f"{self.vocab_size} leaves no room for FAST ids below the "
                                                f"{self.decode.fast_skip_tokens} skipped ones")
            return
        if self.decode is not None:
            raise ConfigError("decode", "a decode stage beside a flow-matching expert is not supported yet")
        # Both experts attend jointly, layer by layer, in one head space.
        for name in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self.prefix, name) != getattr(self.expert, name):
                raise ConfigError(
                    f"expert.{name}",
                    f"must equal prefix.{name}={getattr(self.prefix, name)} "
                    f"(got {getattr(self.expert, name)}): the experts attend jointly",
                )

    @property
    def variant(self) -> str:
        if self.decode is not None:
            return "pi0fast"
        return "pi05" if self.pi05 else "pi0"

    @property
    def is_fast(self) -> bool:
        """pi0-FAST: actions are decoded as tokens, not denoised."""
        return self.decode is not None

    @property
    def state_in_prompt(self) -> bool:
        """The discretized state is part of the prompt (pi0.5, pi0-FAST), not a suffix token (pi0)."""
        return self.pi05 or self.is_fast

    @property
    def prefix_len(self) -> int:
        return self.num_cameras * self.vision.num_tokens + self.max_token_len

    @property
    def suffix_len(self) -> int:
        return self.action_horizon + (0 if self.pi05 else 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyConfig":
        data = dict(data)
        try:
            vision = VisionConfig(**data.pop("vision"))
            prefix = GemmaConfig(**data.pop("prefix"))
            expert = data.pop("expert")
            expert = None if expert is None else GemmaConfig(**expert)
            decode = data.pop("decode", None)
            decode = None if decode is None else DecodeConfig(**decode)
            return cls(vision=vision, prefix=prefix, expert=expert, decode=decode, **data)
        except (KeyError, TypeError) as exc:
            raise ConfigError("config", f"not a vla_ros policy config ({exc})") from exc


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """One Llama-style stack (SmolLM2's text model, SmolVLA's action expert).

    Pre-RMSNorm blocks (`weight * x / rms(x)`, eps `rms_eps`), grouped-query
    attention without biases, a SiLU-gated MLP. `rope_theta` is the RoPE base
    the stack declares (what transformers' LlamaModel applies); SmolVLA
    overrides it (`SmolVLAConfig.rope_theta`).
    """

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim"):
            _positive(f"llama.{name}", getattr(self, name))
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("llama.num_kv_heads", f"must divide num_heads={self.num_heads}")
        for name in ("rms_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"llama.{name}", f"expected a positive number, got {value!r}")
        if self.head_dim % 2:
            raise ConfigError("llama.head_dim", f"must be even for RoPE, got {self.head_dim}")


def smolvla_expert_mlp_dim(width: int) -> int:
    """LeRobot's expert MLP size for an expert `width` wide: 4 * int(2w/3), rounded up to a multiple of 256.

    (`smolvlm_with_expert.get_intermediate_size`; 720 -> 2048, 48 -> 256.)
    """
    hidden = int(4 * int(2 * width / 3))
    return 256 * math.ceil(hidden / 256)


@dataclasses.dataclass(frozen=True)
class SmolVLAConfig:
    """A whole SmolVLA policy (LeRobot 0.6.1's `smolvla`): SmolVLM2 prefix, interleaved action expert.

    vision: the SigLIP-style tower (SmolVLM's, 512 px, patch 16), whose
        tokens go through a pixel shuffle by `scale_factor` (64 tokens per
        image at 512 / 16 / 4) and a bias-free connector.
    text: the Llama text model, cut to its first `depth` layers
        (LeRobot's num_vlm_layers).
    expert: as many layers, `expert.width` wide, in the text model's head
        space (same heads, K/V heads and head_dim). Layers i with
        i % self_attn_every_n_layers == 0 attend to [prefix; actions] (the
        action tokens causally among themselves); the others cross-attend to
        the text model's cached K/V of the same layer, projected by the
        expert's own k_proj / v_proj.
    rope_theta: the RoPE base of both stacks: LeRobot applies its own
        rotation with base 10000 whatever the VLM's config says.
    The state (padded to action_dim) is one token at the end of the prefix.
    """

    name: str
    vision: VisionConfig
    text: LlamaConfig
    expert: LlamaConfig
    scale_factor: int = 4
    vocab_size: int = 49280
    action_horizon: int = 50
    action_dim: int = 32
    max_token_len: int = 48
    num_cameras: int = 3
    self_attn_every_n_layers: int = 2
    rope_theta: float = 10000.0
    min_period: float = 4e-3
    max_period: float = 4.0

    # What the pi0-family code paths ask of any config.
    pi05 = False
    decode = None
    family = "smolvla"

    def __post_init__(self) -> None:
        for name in ("scale_factor", "vocab_size", "action_horizon", "action_dim", "max_token_len",
                     "num_cameras", "self_attn_every_n_layers"):
            _positive(name, getattr(self, name))
        side = self.vision.image_size // self.vision.patch_size
        if side % self.scale_factor:
            raise ConfigError(
                "scale_factor", f"{self.scale_factor} must divide the {side} patches per image side"
            )
        for name in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self.text, name) != getattr(self.expert, name):
                raise ConfigError(
                    f"expert.{name}",
                    f"must equal text.{name}={getattr(self.text, name)} (got {getattr(self.expert, name)}): "
                    "the expert works in the text model's head space, layer by layer",
                )
        if self.expert.width % 2:
            raise ConfigError(
                "expert.width", f"must be even (sine-cosine time embedding), got {self.expert.width}"
            )
        if not 0 < self.min_period < self.max_period:
            raise ConfigError("min_period", f"expected 0 < min_period < max_period, got "
                                            f"{self.min_period}, {self.max_period}")

    @property
    def variant(self) -> str:
        return "smolvla"

    @property
    def is_fast(self) -> bool:
        return False

    @property
    def state_in_prompt(self) -> bool:
        return False

    @property
    def prefix(self) -> LlamaConfig:
        """The prefix language model (the text stack), as pi0 configs name it."""
        return self.text

    @property
    def tokens_per_image(self) -> int:
        return self.vision.num_tokens // self.scale_factor**2

    @property
    def self_attention_layers(self) -> tuple[int, ...]:
        """Expert layers that self-attend over [prefix; actions]; the others cross-attend."""
        return tuple(i for i in range(self.expert.depth) if i % self.self_attn_every_n_layers == 0)

    def is_self_attention(self, layer: int) -> bool:
        return layer % self.self_attn_every_n_layers == 0

    @property
    def prefix_len(self) -> int:
        """Image tokens of every slot, the prompt budget and the state token."""
        return self.num_cameras * self.tokens_per_image + self.max_token_len + 1

    @property
    def suffix_len(self) -> int:
        return self.action_horizon

    def to_dict(self) -> dict:
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "SmolVLAConfig":
        data = dict(data)
        data.pop("family", None)
        try:
            return cls(vision=VisionConfig(**data.pop("vision")), text=LlamaConfig(**data.pop("text")),
                       expert=LlamaConfig(**data.pop("expert")), **data)
        except (KeyError, TypeError) as exc:
            raise ConfigError("config", f"not a vla_ros SmolVLA config ({exc})") from exc


@dataclasses.dataclass(frozen=True)
class Qwen3Config(LlamaConfig):
    """One Qwen3 text stack: Llama blocks plus an RMSNorm over each query and key head before RoPE.

    Grouped-query attention without biases, a SiLU-gated MLP, `head_dim` free
    of `width / num_heads` (as transformers' Qwen3Config); the defaults are
    Qwen3's eps 1e-6 and RoPE base 1e6.
    """

    rms_eps: float = 1e-6
    rope_theta: float = 1000000.0


def _same_head_space(backbone: LlamaConfig, expert: LlamaConfig, why: str) -> None:
    """The expert attends in the backbone's head space: same heads, K/V heads, head_dim and RoPE base."""
    for name in ("num_heads", "num_kv_heads", "head_dim", "rope_theta"):
        if getattr(backbone, name) != getattr(expert, name):
            raise ConfigError(
                f"expert.{name}",
                f"must equal backbone.{name}={getattr(backbone, name)} (got {getattr(expert, name)}): {why}",
            )
    if expert.width % 2:
        raise ConfigError("expert.width", f"must be even (sine-cosine time embedding), got {expert.width}")


def every_nth_layer(depth: int, n: int) -> tuple[int, ...]:
    """Backbone layers n-1, 2n-1, ... < depth: a layer map ending on the last backbone layer."""
    return tuple(range(n - 1, depth, n))


class _ExpertDesign:
    """What the two expert designs of the notes share: names, the prefix, and their JSON form.

    Subclasses are frozen dataclasses with `family`, `backbone` and `expert`
    fields; `_STACK` is the config class of both stacks.
    """

    _STACK: type = LlamaConfig
    _WHAT = "expert design"

    @property
    def variant(self) -> str:
        return self.family

    @property
    def is_fast(self) -> bool:
        return False

    @property
    def prefix(self) -> LlamaConfig:
        """The prefix language model, as pi0 configs name it."""
        return self.backbone

    def to_dict(self) -> dict:
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict):
        data = dict(data)
        data.pop("family", None)
        try:
            return cls(backbone=cls._STACK(**data.pop("backbone")), expert=cls._STACK(**data.pop("expert")),
                       **data)
        except (KeyError, TypeError) as exc:
            raise ConfigError("config", f"not a vla_ros {cls._WHAT} config ({exc})") from exc


@dataclasses.dataclass(frozen=True)
class FusionExpertConfig(_ExpertDesign):
    """The deep-fusion action expert of the notes (a LLaVA-3D-based VLA): Llama backbone + narrow expert.

    backbone: the Llama language model over the prefix (image embeddings and
        prompt), as in pi0 bidirectional over the prefix.
    expert: Llama blocks `expert.width` wide (<= the backbone's) in the
        backbone's head space (same heads, K/V heads, head_dim, RoPE base):
        its q/k/v/o projections map its own width into that space, so the
        two attend jointly, layer by layer, without adapters.
    layer_map: expert layer i joins backbone layer layer_map[i] (strictly
        increasing); backbone layers without an expert layer run alone and
        the action tokens pass them unchanged. None maps layer i onto layer i
        (then the depths must be equal).
    The suffix is pi0's: a state token and `action_horizon` action tokens,
    time joined to each action token by pi0's concatenation MLP; masks and
    positions are pi0's (docs/model.md, "Expert designs from the notes").
    """

    name: str
    backbone: LlamaConfig
    expert: LlamaConfig
    layer_map: tuple[int, ...] | None = None
    vocab_size: int = 32000
    action_horizon: int = 50
    action_dim: int = 32

    # What the pi0-family code paths ask of any named config (checkpoint.py scans NAMED_CONFIGS).
    pi05 = False
    decode = None
    vision = None
    family = "llava3d-expert"
    _WHAT = "deep-fusion expert"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "action_horizon", "action_dim"):
            _positive(name, getattr(self, name))
        _same_head_space(self.backbone, self.expert, "the expert attends jointly in the backbone's heads")
        if self.expert.width > self.backbone.width:
            raise ConfigError("expert.width", f"must not exceed backbone.width={self.backbone.width} "
                                              f"(got {self.expert.width}): the expert is the narrow one")
        if self.layer_map is None:
            if self.expert.depth != self.backbone.depth:
                raise ConfigError("layer_map", f"needed: expert.depth={self.expert.depth} differs from "
                                               f"backbone.depth={self.backbone.depth}")
            return
        if isinstance(self.layer_map, (str, bytes)) or not hasattr(self.layer_map, "__iter__"):
            raise ConfigError("layer_map", f"expected a list of backbone layers, got {self.layer_map!r}")
        layer_map = tuple(self.layer_map)
        object.__setattr__(self, "layer_map", layer_map)  # YAML / JSON give a list
        if len(layer_map) != self.expert.depth:
            raise ConfigError("layer_map", f"has {len(layer_map)} entries, expert.depth={self.expert.depth}")
        for index, layer in enumerate(layer_map):
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.backbone.depth:
                raise ConfigError(f"layer_map[{index}]", f"expected a backbone layer in "
                                                         f"[0, {self.backbone.depth}), got {layer!r}")
            if index and layer <= layer_map[index - 1]:
                raise ConfigError(f"layer_map[{index}]", f"must exceed layer_map[{index - 1}]="
                                                         f"{layer_map[index - 1]} (strictly increasing), "
                                                         f"got {layer}")

    @property
    def joint_layers(self) -> tuple[int, ...]:
        """The backbone layer each expert layer joins."""
        return tuple(range(self.expert.depth)) if self.layer_map is None else self.layer_map

    @property
    def suffix_len(self) -> int:
        return self.action_horizon + 1


# Qwen3's <|im_end|>: the named config's reasoning stop token. A checkpoint of the notes' design
# sets its own (the id of the `<|traj_future_start|>` token it adds to the tokenizer).
QWEN3_IM_END = 151645


@dataclasses.dataclass(frozen=True)
class AlpamayoExpertConfig(_ExpertDesign):
    """The "reason, then act" design of the notes (Alpamayo-R1): Qwen3 backbone, expert over its cache.

    backbone: the Qwen3 language model; it runs causally over the prompt,
        then decodes reasoning text greedily until `stop_token_id` or
        `max_reasoning_tokens` (the stop token is fed too: it ends the cache).
    expert: a Qwen3 stack (no token embedding) with the backbone's depth and
        head space (the notes copy the backbone's text configuration); expert
        layer i attends over the backbone's cached K/V of layer i plus the
        action tokens' own, at positions continuing after the cache.
    non_causal_actions: the action tokens attend to each other in both
        directions (the notes' `expert_non_causal_attention`, default on);
        False makes them causal.
    Time is added to each action token's embedding (an MLP of the sine-cosine
    embedding of t); `num_samples` trajectories are denoised at once over one
    cache, `action_horizon` future steps of `action_dim` each.
    """

    name: str
    backbone: LlamaConfig
    expert: LlamaConfig
    vocab_size: int = 151936
    action_horizon: int = 64
    action_dim: int = 2
    num_samples: int = 6
    max_reasoning_tokens: int = 256
    stop_token_id: int = QWEN3_IM_END
    non_causal_actions: bool = True

    pi05 = False
    decode = None
    vision = None
    family = "alpamayo-expert"
    _STACK = Qwen3Config
    _WHAT = "Alpamayo expert"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "action_horizon", "action_dim", "num_samples", "max_reasoning_tokens"):
            _positive(name, getattr(self, name))
        _same_head_space(self.backbone, self.expert, "the expert attends over the backbone's cache")
        if self.expert.depth != self.backbone.depth:
            raise ConfigError("expert.depth", f"must equal backbone.depth={self.backbone.depth} "
                              f"(got {self.expert.depth}): expert layer i reads cache layer i")
        token = self.stop_token_id
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < self.vocab_size:
            raise ConfigError("stop_token_id", f"expected an id in [0, {self.vocab_size}), got {token!r}")
        if not isinstance(self.non_causal_actions, bool):
            raise ConfigError("non_causal_actions", f"expected a bool, got {self.non_causal_actions!r}")

    @property
    def suffix_len(self) -> int:
        return self.action_horizon


_SIGLIP_SO400M = VisionConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16)
_GEMMA_2B = GemmaConfig(width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1, head_dim=256)
_GEMMA_300M = GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256)

_TINY_VISION = VisionConfig(width=32, depth=2, mlp_dim=64, num_heads=2)
_TINY_PREFIX = GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16)
_TINY_EXPERT = GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16)

_MID_VISION = VisionConfig(width=384, depth=4, mlp_dim=1536, num_heads=6)
_MID_PREFIX = GemmaConfig(width=512, depth=4, mlp_dim=2048, num_heads=8, num_kv_heads=1, head_dim=64)
_MID_EXPERT = GemmaConfig(width=256, depth=4, mlp_dim=1024, num_heads=8, num_kv_heads=1, head_dim=64)

# pi0-FAST keeps the full PaliGemma vocabulary even when tiny, so that FAST ids map into
# the top of it exactly as with the real model.
PALIGEMMA_VOCAB = 257152
FAST_DECODE = DecodeConfig(max_decoding_steps=256)

# Tiny vocabularies come from the tokenizer trained beside the checkpoint; 512 is
# the default size `vla-ros make-tiny` trains.
TINY_VOCAB = 512

# SmolVLM2-500M-Video-Instruct's sizes (vision defaults of transformers' SmolVLMVisionConfig: 12 layers,
# MLP 3072), the text model cut to LeRobot's num_vlm_layers = 16, the expert 0.75 as wide.
_SMOLVLM_VISION = VisionConfig(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16, image_size=512)
_SMOLLM2_TEXT = LlamaConfig(width=960, depth=16, mlp_dim=2560, num_heads=15, num_kv_heads=5, head_dim=64,
                            rms_eps=1e-5, rope_theta=100000.0)
_SMOLVLA_EXPERT = dataclasses.replace(_SMOLLM2_TEXT, width=720, mlp_dim=smolvla_expert_mlp_dim(720))
_TINY_SMOLVLM_VISION = VisionConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=16, image_size=512)
_TINY_SMOLLM2_TEXT = LlamaConfig(width=64, depth=4, mlp_dim=128, num_heads=4, num_kv_heads=2, head_dim=16,
                                 rms_eps=1e-5, rope_theta=100000.0)
_TINY_SMOLVLA_EXPERT = dataclasses.replace(_TINY_SMOLLM2_TEXT, width=48, mlp_dim=smolvla_expert_mlp_dim(48))

# The deep-fusion design of the notes at LLaVA-3D's sizes (its Llama-2-7B / Vicuna-7B language model:
# no GQA, vocabulary 32000); the expert 1024 wide with a 4x MLP, its 16 layers on every second backbone layer.
_LLAMA2_7B = LlamaConfig(width=4096, depth=32, mlp_dim=11008, num_heads=32, num_kv_heads=32, head_dim=128,
                         rms_eps=1e-5, rope_theta=10000.0)
_LLAVA3D_EXPERT = dataclasses.replace(_LLAMA2_7B, width=1024, depth=16, mlp_dim=4096)
_TINY_LLAVA3D = LlamaConfig(width=64, depth=4, mlp_dim=128, num_heads=4, num_kv_heads=4, head_dim=16,
                            rms_eps=1e-5, rope_theta=10000.0)
_TINY_LLAVA3D_EXPERT = dataclasses.replace(_TINY_LLAVA3D, width=32, depth=2, mlp_dim=128)
# The "reason, then act" design at Qwen3-8B's sizes (its config.json); the expert copies the text config.
# The tiny one has head_dim * heads (128) != width (64), as Qwen3 allows.
_QWEN3_8B = Qwen3Config(width=4096, depth=36, mlp_dim=12288, num_heads=32, num_kv_heads=8, head_dim=128)
_TINY_QWEN3 = Qwen3Config(width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=2, head_dim=32)

AnyConfig = PolicyConfig | SmolVLAConfig | FusionExpertConfig | AlpamayoExpertConfig

NAMED_CONFIGS: dict[str, AnyConfig] = {
    "pi0": PolicyConfig("pi0", False, _SIGLIP_SO400M, _GEMMA_2B, _GEMMA_300M, max_token_len=48),
    "pi05": PolicyConfig("pi05", True, _SIGLIP_SO400M, _GEMMA_2B, _GEMMA_300M, max_token_len=200),
    "pi0-mid": PolicyConfig("pi0-mid", False, _MID_VISION, _MID_PREFIX, _MID_EXPERT, max_token_len=48),
    "pi05-mid": PolicyConfig("pi05-mid", True, _MID_VISION, _MID_PREFIX, _MID_EXPERT, max_token_len=200),
    "pi0-tiny": PolicyConfig(
        "pi0-tiny", False, _TINY_VISION, _TINY_PREFIX, _TINY_EXPERT, vocab_size=TINY_VOCAB, max_token_len=48
    ),
    "pi05-tiny": PolicyConfig(
        "pi05-tiny", True, _TINY_VISION, _TINY_PREFIX, _TINY_EXPERT, vocab_size=TINY_VOCAB, max_token_len=200
    ),
    "pi0fast": PolicyConfig(
        "pi0fast", False, _SIGLIP_SO400M, _GEMMA_2B, None, vocab_size=PALIGEMMA_VOCAB, max_token_len=200,
        decode=FAST_DECODE,
    ),
    "pi0fast-tiny": PolicyConfig(
        "pi0fast-tiny", False, _TINY_VISION, _TINY_PREFIX, None, vocab_size=PALIGEMMA_VOCAB,
        max_token_len=200, decode=FAST_DECODE,
    ),
    "smolvla": SmolVLAConfig("smolvla", _SMOLVLM_VISION, _SMOLLM2_TEXT, _SMOLVLA_EXPERT, vocab_size=49280),
    "smolvla-tiny": SmolVLAConfig(
        "smolvla-tiny", _TINY_SMOLVLM_VISION, _TINY_SMOLLM2_TEXT, _TINY_SMOLVLA_EXPERT, vocab_size=TINY_VOCAB
    ),    "llava3d-expert": FusionExpertConfig(
        "llava3d-expert", _LLAMA2_7B, _LLAVA3D_EXPERT, layer_map=every_nth_layer(32, 2), vocab_size=32000
    ),
    "llava3d-expert-tiny": FusionExpertConfig(
        "llava3d-expert-tiny", _TINY_LLAVA3D, _TINY_LLAVA3D_EXPERT, layer_map=every_nth_layer(4, 2),
        vocab_size=TINY_VOCAB,
    ),
    "alpamayo-expert": AlpamayoExpertConfig("alpamayo-expert", _QWEN3_8B, _QWEN3_8B, vocab_size=151936),
    "alpamayo-expert-tiny": AlpamayoExpertConfig(
        "alpamayo-expert-tiny", _TINY_QWEN3, _TINY_QWEN3, vocab_size=TINY_VOCAB, num_samples=3,
        max_reasoning_tokens=8, stop_token_id=2,
    ),
}


def get_config(name: str, **overrides) -> AnyConfig:
    """A named configuration, optionally with fields replaced (e.g. vocab_size)."""
    if name not in NAMED_CONFIGS:
        close = difflib.get_close_matches(name, NAMED_CONFIGS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            "config", f"unknown policy config '{name}', expected one of {sorted(NAMED_CONFIGS)}{hint}"
        )
    return dataclasses.replace(NAMED_CONFIGS[name], **overrides)


def get_runnable_config(name: str, parameter: str = "--config") -> PolicyConfig | SmolVLAConfig:
    """A named configuration that the engines, checkpoints and tools run (not a model-only design)."""
    cfg = get_config(name)
    if isinstance(cfg, _ExpertDesign):
        runnable = sorted(n for n, c in NAMED_CONFIGS.items() if not isinstance(c, _ExpertDesign))
        raise ConfigError(
            parameter,
            f"'{name}' is a model design from the notes (vla_ros/model/, checked against transformers) with "
            f"no engine, checkpoint format or tool support yet; runnable configs: {runnable}",
        )
    return cfg
