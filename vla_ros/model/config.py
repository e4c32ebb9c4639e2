"""Model sizes for pi0 / pi0.5 / pi0-FAST and SmolVLA, as frozen dataclasses, plus the named configurations.

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

NAMED_CONFIGS: dict[str, PolicyConfig | SmolVLAConfig] = {
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
    ),
}


def get_config(name: str, **overrides) -> PolicyConfig | SmolVLAConfig:
    """A named configuration, optionally with fields replaced (e.g. vocab_size)."""
    if name not in NAMED_CONFIGS:
        close = difflib.get_close_matches(name, NAMED_CONFIGS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            "config", f"unknown policy config '{name}', expected one of {sorted(NAMED_CONFIGS)}{hint}"
        )
    return dataclasses.replace(NAMED_CONFIGS[name], **overrides)
