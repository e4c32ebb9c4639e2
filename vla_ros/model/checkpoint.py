"""Checkpoint I/O in the openpi / LeRobot PyTorch layout (docs/model.md, "Checkpoint key layout").

A checkpoint directory holds `model.safetensors`, `config.json`, norm stats
(`assets/<id>/norm_stats.json` or `norm_stats.json`) and a SentencePiece model.
LeRobot policy directories (`vla_ros/model/lerobot_layout.py`) are read too:
their sizes come from the weight shapes and LeRobot's config.json (SmolVLA's
head counts, which shapes do not fix, from the VLM's config.json kept beside it).
Only safetensors and JSON are read: nothing in a checkpoint is ever executed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
import re

from safetensors import safe_open
from safetensors.torch import save_file
import torch

from vla_ros.errors import CheckpointError, ConfigError
from vla_ros.model.config import (
    DecodeConfig,
    GemmaConfig,
    get_config,
    LlamaConfig,
    NAMED_CONFIGS,
    PolicyConfig,
    SmolVLAConfig,
    VisionConfig,
)
from vla_ros.model.pi0 import Pi0Model

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_PREFIX = "paligemma_with_expert.paligemma."
EMBED_KEY = _PREFIX + "model.language_model.embed_tokens.weight"
LM_HEAD_KEY = _PREFIX + "lm_head.weight"
# Present in some exports, never used by inference.
_IGNORED_KEYS = re.compile(
    r"(gemma_expert\.lm_head\.weight|vlm_with_expert\.vlm\.lm_head\.weight|\.rotary_emb\.inv_freq"
    r"|position_ids)$"
)
# Some LeRobot / transformers versions save SigLIP without its `vision_model.` level.
_FLAT_VISION = re.compile(r"^(paligemma_with_expert\.paligemma\.model\.vision_tower\.)(?!vision_model\.)")

# openpi / LeRobot variant names for the Gemma stacks.
GEMMA_VARIANTS = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
}
for _name in ("gemma_2b", "gemma_300m"):
    GEMMA_VARIANTS[_name + "_lora"] = GEMMA_VARIANTS[_name]


def _mismatch_error(path: Path, missing, unexpected, misshaped) -> CheckpointError:
    def section(title: str, items: list[str]) -> str:
        if not items:
            return ""
        shown = "\n    ".join(items[:5])
        more = f"\n    ... and {len(items) - 5} more" if len(items) > 5 else ""
        return f"\n  {title} ({len(items)}):\n    {shown}{more}"

    return CheckpointError(
        f"{path} does not fit the model:"
        + section("missing keys", missing)
        + section("unexpected keys", unexpected)
        + section("mis-shaped keys (key: checkpoint vs model)", misshaped)
        + "\n  Check that config.json describes this checkpoint (pi0 vs pi0.5, variant sizes)."
    )


class _TensorFile:
    """Lazy, memory-mapped access to a safetensors file with the key layout normalised."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise CheckpointError(
                f"no {WEIGHTS_FILE} in {path.parent} (pi0 checkpoints are safetensors only)"
            )
        try:
            self._file = safe_open(str(path), framework="pt")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
        self.names: dict[str, str] = {}  # normalised key -> key in the file
        for key in self._file.keys():
            norm = key[len("model.") :] if key.startswith("model.") else key
            norm = _FLAT_VISION.sub(r"\1vision_model.", norm)
            if not _IGNORED_KEYS.search(norm):
                self.names[norm] = key
        self._rename_time_mlps()

    def _rename_time_mlps(self) -> None:
        # Some exports swap the pi0 / pi0.5 time-MLP names; the shapes say which it is.
        pi05 = self.is_pi05
        wrong, right = ("action_time_mlp", "time_mlp") if pi05 else ("time_mlp", "action_time_mlp")
        if f"{right}_in.weight" in self.names or f"{wrong}_in.weight" not in self.names:
            return
        for suffix in ("_in.weight", "_in.bias", "_out.weight", "_out.bias"):
            if wrong + suffix in self.names:
                self.names[right + suffix] = self.names.pop(wrong + suffix)

    @property
    def is_fast(self) -> bool:
        """pi0-FAST: a PaliGemma with neither an action expert nor action projections."""
        return "action_in_proj.weight" not in self.names and not any(
            k.startswith("paligemma_with_expert.gemma_expert.") for k in self.names
        )

    @property
    def is_pi05(self) -> bool:
        return any(".input_layernorm.dense." in k for k in self.names) or (
            "state_proj.weight" not in self.names and "time_mlp_in.weight" in self.names
        )

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(self.names[key]).get_shape())

    def tensor(self, key: str) -> torch.Tensor:
        return self._file.get_tensor(self.names[key])

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return len({m.group(1) for k in self.names if (m := regex.search(k))})


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} must hold a JSON object {{...}} of model settings, got a JSON {_json_kind(data)}"
        )
    return data


def _json_kind(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def read_config_json(directory: str | Path) -> dict:
    """The checkpoint's config.json as a dict ({} when absent).

    Raises:
        CheckpointError: not valid JSON, or not a JSON object (naming the file).
    """
    return _read_json(Path(directory) / CONFIG_FILE)


def _infer_vision(tensors: _TensorFile, meta: dict) -> VisionConfig:
    base = _PREFIX + "model.vision_tower.vision_model."
    patch = tensors.shape(base + "embeddings.patch_embedding.weight")  # (W, 3, p, p)
    width, patch_size = patch[0], patch[2]
    tokens = tensors.shape(base + "embeddings.position_embedding.weight")[0]
    depth = tensors.count(r"vision_model\.encoder\.layers\.(\d+)\.")
    mlp = tensors.shape(base + "encoder.layers.0.mlp.fc1.weight")[0]
    # Heads are not visible in the shapes; So400m uses head_dim 72.
    heads = int(meta.get("vision_num_heads", 16 if width == 1152 else max(1, width // 16)))
    return VisionConfig(width, depth, mlp, heads, patch_size, int(round(tokens**0.5)) * patch_size)


def _gemma_from(meta: dict, key: str, fallback: GemmaConfig) -> GemmaConfig:
    variant = meta.get(key)
    if variant is None:
        return fallback
    if variant not in GEMMA_VARIANTS:
        raise ConfigError(
            f"config.json:{key}", f"unknown variant '{variant}', expected one of {sorted(GEMMA_VARIANTS)}"
        )
    return GEMMA_VARIANTS[variant]


def config_from_checkpoint(directory: Path, tensors: _TensorFile | None = None) -> PolicyConfig:
    """Model sizes from config.json (ours, openpi's or LeRobot's), completed from the tensor shapes."""
    from vla_ros.model.lerobot_layout import is_lerobot_config, parse_lerobot_config

    directory = Path(directory)
    meta = _read_json(directory / CONFIG_FILE)
    lerobot = parse_lerobot_config(meta, directory / CONFIG_FILE) if is_lerobot_config(meta) else None
    if "vla_ros" in meta:
        if not isinstance(meta["vla_ros"], dict):
            raise CheckpointError(f"{directory / CONFIG_FILE}: 'vla_ros' must be a JSON object")
        if meta["vla_ros"].get("family") == SmolVLAConfig.family:
            return SmolVLAConfig.from_dict(meta["vla_ros"])
        return PolicyConfig.from_dict(meta["vla_ros"])
    tensors = tensors or _TensorFile(directory / WEIGHTS_FILE)
    if lerobot is not None:
        return _config_from_lerobot(lerobot, tensors, meta)
    if tensors.is_fast:
        return _fast_config(tensors, meta, directory / CONFIG_FILE)
    pi05 = tensors.is_pi05
    declared = meta.get("type") or meta.get("model_type")
    if declared in ("pi0", "pi05") and (declared == "pi05") != pi05:
        log.warning(
            "config.json says %s but the weights are %s; trusting the weights",
            declared,
            "pi05" if pi05 else "pi0",
        )
    full = get_config("pi05" if pi05 else "pi0")
    prefix = _gemma_from(meta, "paligemma_variant", full.prefix)
    expert = _gemma_from(meta, "action_expert_variant", full.expert)
    vocab = tensors.shape(EMBED_KEY if EMBED_KEY in tensors.names else LM_HEAD_KEY)[0]
    action_dim = tensors.shape("action_in_proj.weight")[1]
    horizon = int(meta.get("action_horizon", meta.get("chunk_size", 50)))
    max_len = int(meta.get("max_token_len", meta.get("tokenizer_max_length", full.max_token_len)))
    return PolicyConfig(
        name=str(meta.get("name", declared or full.name)),
        pi05=pi05,
        vision=_infer_vision(tensors, meta),
        prefix=prefix,
        expert=expert,
        vocab_size=vocab,
        action_horizon=horizon,
        action_dim=action_dim,
        max_token_len=max_len,
    )


def _fast_config(tensors: _TensorFile, meta: dict, path: Path) -> PolicyConfig:
    """pi0-FAST sizes in the openpi (PyTorch-converted) layout: config.json's fields, the rest from shapes."""
    declared = meta.get("type") or meta.get("model_type")
    if declared in ("pi0", "pi05"):
        raise CheckpointError(f"{path} says type {declared!r} but the weights have no action expert "
                              "(pi0-FAST weights); fix 'type'")
    full = get_config("pi0fast")
    variant = meta.get("paligemma_variant")
    prefix = _gemma_from(meta, "paligemma_variant", full.prefix) if variant else _gemma_from_shapes(
        tensors, "paligemma.model.language_model", path)
    for keys, default in ((("action_horizon", "chunk_size"), full.action_horizon),
                          (("action_dim", "max_action_dim"), full.action_dim)):
        if not any(key in meta for key in keys):
            # openpi's FAST configs differ per robot (droid: horizon 10, action dim 8): a wrong
            # default only shows as FAST sequences of the wrong length, so say where it came from.
            log.warning("%s names no %s: using pi0fast's %d; FAST decodes fail with a length error if "
                        "that is not the checkpoint's", path, " / ".join(keys), default)
    decode = DecodeConfig(
        max_decoding_steps=int(meta.get("max_decoding_steps", full.decode.max_decoding_steps)),
        fast_skip_tokens=int(meta.get("fast_skip_tokens", full.decode.fast_skip_tokens)),
    )
    return PolicyConfig(
        name=str(meta.get("name", declared or full.name)),
        pi05=False,
        vision=_infer_vision(tensors, meta),
        prefix=prefix,
        expert=None,
        vocab_size=tensors.shape(EMBED_KEY if EMBED_KEY in tensors.names else LM_HEAD_KEY)[0],
        action_horizon=int(meta.get("action_horizon", meta.get("chunk_size", full.action_horizon))),
        action_dim=int(meta.get("action_dim", meta.get("max_action_dim", full.action_dim))),
        max_token_len=int(meta.get("max_token_len", meta.get("tokenizer_max_length", full.max_token_len))),
        decode=decode,
    )


# LeRobot's pi0 / pi0.5 reshape attention with 8 heads (head_dim and kv heads follow from the shapes).
_LEROBOT_NUM_HEADS = 8


def _gemma_from_shapes(tensors: _TensorFile, stack: str, path: Path) -> GemmaConfig:
    """One Gemma stack's sizes from its tensors (LeRobot's variant names are only validated names)."""
    base = f"paligemma_with_expert.{stack}.layers.0."
    depth = tensors.count(rf"^paligemma_with_expert\.{re.escape(stack)}\.layers\.(\d+)\.")
    if depth == 0 or base + "self_attn.q_proj.weight" not in tensors.names:
        raise CheckpointError(f"{path}: no {stack}.layers.N tensors; this is not a pi0 / pi0.5 checkpoint")
    q_out, width = tensors.shape(base + "self_attn.q_proj.weight")
    k_out = tensors.shape(base + "self_attn.k_proj.weight")[0]
    if q_out % _LEROBOT_NUM_HEADS or k_out % (q_out // _LEROBOT_NUM_HEADS):
        raise CheckpointError(
            f"{path}: {stack} attention shapes q {q_out} / k {k_out} do not split into LeRobot's "
            f"{_LEROBOT_NUM_HEADS} heads"
        )
    head_dim = q_out // _LEROBOT_NUM_HEADS
    return GemmaConfig(
        width=width,
        depth=depth,
        mlp_dim=tensors.shape(base + "mlp.gate_proj.weight")[0],
        num_heads=_LEROBOT_NUM_HEADS,
        num_kv_heads=k_out // head_dim,
        head_dim=head_dim,
    )


def _config_from_lerobot(lerobot, tensors: _TensorFile, meta: dict) -> PolicyConfig:
    """Sizes of a LeRobot policy directory: config.json's fields, the rest from the weight shapes."""
    path = lerobot.path
    weights = path.parent / WEIGHTS_FILE
    if lerobot.is_smolvla:
        return _config_from_lerobot_smolvla(lerobot, tensors)
    if lerobot.is_fast or tensors.is_fast:
        return _config_from_lerobot_fast(lerobot, tensors, meta)
    pi05 = tensors.is_pi05
    if lerobot.pi05 != pi05:
        raise CheckpointError(
            f"{path} says type {lerobot.variant!r} but the weights in {weights} are "
            f"{'pi05' if pi05 else 'pi0'}; fix 'type'"
        )
    prefix = _gemma_from_shapes(tensors, "paligemma.model.language_model", path)
    expert = _gemma_from_shapes(tensors, "gemma_expert.model", path)
    for name, sizes in (("paligemma_variant", prefix), ("action_expert_variant", expert)):
        named = GEMMA_VARIANTS.get(getattr(lerobot, name) or "")
        if named is not None and named != sizes:
            log.info("%s: %s %s does not describe the weights (%s); sizes taken from the weights",
                     path, name, getattr(lerobot, name), sizes)
    vision = _infer_vision(tensors, meta)
    if vision.image_size != lerobot.image_resolution[0]:
        raise CheckpointError(
            f"{path}: image_resolution {list(lerobot.image_resolution)} but the vision weights in {weights} "
            f"are for {vision.image_size} px; fix image_resolution"
        )
    action_dim = tensors.shape("action_in_proj.weight")[1]
    if action_dim != lerobot.max_action_dim:
        raise CheckpointError(
            f"{path}: max_action_dim {lerobot.max_action_dim} but action_in_proj in {weights} takes "
            f"{action_dim}; fix max_action_dim"
        )
    if not pi05 and lerobot.max_state_dim != action_dim:
        raise CheckpointError(
            f"{path}: max_state_dim {lerobot.max_state_dim} differs from max_action_dim {action_dim}; "
            "vla_ros pads state and actions to one width"
        )
    vocab = tensors.shape(EMBED_KEY if EMBED_KEY in tensors.names else LM_HEAD_KEY)[0]
    # The named configuration with these sizes (pi0, pi05-tiny, ...), else the variant.
    name = next(
        (
            named.name
            for named in NAMED_CONFIGS.values()
            if (named.pi05, named.vision, named.prefix, named.expert) == (pi05, vision, prefix, expert)
        ),
        lerobot.variant,
    )
    return PolicyConfig(
        name=name,
        pi05=pi05,
        vision=vision,
        prefix=prefix,
        expert=expert,
        vocab_size=vocab,
        action_horizon=lerobot.chunk_size,
        action_dim=action_dim,
        max_token_len=lerobot.tokenizer_max_length,
        num_cameras=len(lerobot.cameras),
    )


def build_model(cfg: PolicyConfig | SmolVLAConfig):
    """The family's network for `cfg` (no weights loaded): Pi0Model, Pi0FastModel or SmolVLAModel."""
    if isinstance(cfg, SmolVLAConfig):
        from vla_ros.model.smolvla import SmolVLAModel

        return SmolVLAModel(cfg)
    if cfg.is_fast:
        from vla_ros.model.pi0_fast import Pi0FastModel

        return Pi0FastModel(cfg)
    return Pi0Model(cfg)


# --- SmolVLA ---------------------------------------------------------------------------------------

_SMOLVLM = "vlm_with_expert.vlm.model."
_SMOLVLA_EXPERT = "vlm_with_expert.lm_expert."
# Where a LeRobot SmolVLA directory may keep its VLM's config.json (LeRobot itself reads it from the
# Hub repo `vlm_model_name`): a file beside the checkpoint, or a folder holding the VLM's files.
VLM_CONFIG_FILE = "vlm_config.json"
VLM_FOLDERS = ("smolvlm", "vlm")


def find_vlm_folder(directory: str | Path, vlm_model_name: str | None = None) -> Path | None:
    """The local copy of the VLM's Hub folder beside a SmolVLA checkpoint (config.json, tokenizer.json).

    Looked for as `smolvlm/`, `vlm/`, then the last part of `vlm_model_name`
    (e.g. `SmolVLM2-500M-Video-Instruct/`); None when there is none.
    """
    directory = Path(directory)
    names = list(VLM_FOLDERS)
    if vlm_model_name:
        names.append(vlm_model_name.rstrip("/").rsplit("/", 1)[-1])
    for name in names:
        folder = directory / name
        if (folder / CONFIG_FILE).is_file() or (folder / "tokenizer.json").is_file():
            return folder
    return None


def _vlm_config(directory: Path, vlm_model_name: str | None) -> tuple[Path, dict] | None:
    """(file, contents) of the VLM's config.json beside a SmolVLA checkpoint, or None."""
    candidates = [directory / VLM_CONFIG_FILE]
    folder = find_vlm_folder(directory, vlm_model_name)
    if folder is not None:
        candidates.append(folder / CONFIG_FILE)
    for path in candidates:
        if path.is_file():
            data = _read_json(path)
            if not isinstance(data.get("text_config"), dict):
                raise CheckpointError(f"{path}: not a SmolVLM config.json (no 'text_config' object)")
            return path, data
    return None


def _number(path: Path, section: dict, key: str, default, kind=int):
    value = section.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (kind is int and value != int(value)):
        raise CheckpointError(f"{path}: '{key}' must be a number, got {value!r}")
    return kind(value)


def _config_from_lerobot_smolvla(lerobot, tensors: _TensorFile) -> SmolVLAConfig:
    """Sizes of a LeRobot SmolVLA directory: widths, depths and vocabulary from the weights,
    head counts from the VLM's config.json beside it (else the named config with these shapes).
    """
    path = lerobot.path
    directory = path.parent
    weights = directory / WEIGHTS_FILE

    def shape(key: str) -> tuple[int, ...]:
        if key not in tensors.names:
            raise CheckpointError(f"{weights} has no model.{key}; it is not a LeRobot SmolVLA checkpoint")
        return tensors.shape(key)

    vision_base = _SMOLVLM + "vision_model."
    patch = shape(vision_base + "embeddings.patch_embedding.weight")  # (D, 3, p, p)
    vision_width, patch_size = patch[0], patch[2]
    side = math.isqrt(shape(vision_base + "embeddings.position_embedding.weight")[0])
    vision_depth = tensors.count(r"vision_model\.encoder\.layers\.(\d+)\.")
    vision_mlp = shape(vision_base + "encoder.layers.0.mlp.fc1.weight")[0]
    connector_in = shape(_SMOLVLM + "connector.modality_projection.proj.weight")[1]
    scale = math.isqrt(connector_in // vision_width)
    vocab, text_width = shape(_SMOLVLM + "text_model.embed_tokens.weight")
    text_base = _SMOLVLM + "text_model.layers.0."
    text_depth = tensors.count(r"^vlm_with_expert\.vlm\.model\.text_model\.layers\.(\d+)\.")
    q_out = shape(text_base + "self_attn.q_proj.weight")[0]
    k_out = shape(text_base + "self_attn.k_proj.weight")[0]
    text_mlp = shape(text_base + "mlp.gate_proj.weight")[0]
    expert_width = shape(_SMOLVLA_EXPERT + "layers.0.input_layernorm.weight")[0]
    expert_depth = tensors.count(r"^vlm_with_expert\.lm_expert\.layers\.(\d+)\.")
    expert_mlp = shape(_SMOLVLA_EXPERT + "layers.0.mlp.gate_proj.weight")[0]
    action_dim = shape("action_in_proj.weight")[1]
    if text_depth != lerobot.num_vlm_layers or expert_depth != text_depth:
        raise CheckpointError(
            f"{path}: num_vlm_layers {lerobot.num_vlm_layers} but {weights} holds {text_depth} text-model "
            f"and {expert_depth} expert layers; fix num_vlm_layers"
        )
    if side * patch_size != lerobot.image_resolution[0]:
        raise CheckpointError(
            f"{path}: resize_imgs_with_padding {list(lerobot.image_resolution)} but the vision weights in "
            f"{weights} are for {side * patch_size} px; fix resize_imgs_with_padding"
        )
    if action_dim != lerobot.max_action_dim or shape("state_proj.weight")[1] != lerobot.max_state_dim \
            or lerobot.max_state_dim != action_dim:
        raise CheckpointError(
            f"{path}: max_state_dim {lerobot.max_state_dim} / max_action_dim {lerobot.max_action_dim} do not "
            f"match state_proj / action_in_proj in {weights} ({action_dim}); vla_ros pads both to one width"
        )
    found = _vlm_config(directory, lerobot.vlm_model_name)
    if found is not None:
        vlm_path, vlm = found
        text = vlm["text_config"]
        vision_cfg = vlm.get("vision_config") or {}
        heads = _number(vlm_path, text, "num_attention_heads", None)
        kv_heads = _number(vlm_path, text, "num_key_value_heads", heads)
        head_dim = _number(vlm_path, text, "head_dim", text_width // heads)
        rope = text.get("rope_parameters") or {}
        theta = _number(vlm_path, rope if "rope_theta" in rope else text, "rope_theta", 10000.0, float)
        eps = _number(vlm_path, text, "rms_norm_eps", 1e-5, float)
        vision_heads = _number(vlm_path, vision_cfg, "num_attention_heads", 12)
        if heads * head_dim != q_out or kv_heads * head_dim != k_out or vision_width % vision_heads:
            raise CheckpointError(
                f"{vlm_path}: {heads} heads / {kv_heads} K/V heads of {head_dim} "
                f"(vision {vision_heads} heads) "
                f"do not fit the weights in {weights} (q {q_out}, k {k_out}, vision width {vision_width}); "
                "is it the config of the VLM this policy was trained on?"
            )
        text_cfg = LlamaConfig(text_width, text_depth, text_mlp, heads, kv_heads, head_dim, eps, theta)
        vision = VisionConfig(
            vision_width, vision_depth, vision_mlp, vision_heads, patch_size, side * patch_size
        )
        expert = dataclasses.replace(text_cfg, width=expert_width, mlp_dim=expert_mlp)
    else:
        shapes = (
            (vision_width, vision_depth, vision_mlp, patch_size, side * patch_size),
            (text_width, text_depth, text_mlp, q_out, k_out),
            (expert_width, expert_mlp, scale),
        )

        def shapes_of(c: SmolVLAConfig) -> tuple:
            v, t = c.vision, c.text
            return (
                (v.width, v.depth, v.mlp_dim, v.patch_size, v.image_size),
                (t.width, t.depth, t.mlp_dim, t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim),
                (c.expert.width, c.expert.mlp_dim, c.scale_factor),
            )

        smolvlas = [c for c in NAMED_CONFIGS.values() if isinstance(c, SmolVLAConfig)]
        named = next((c for c in smolvlas if shapes_of(c) == shapes), None)
        if named is None:
            raise CheckpointError(
                f"{path}: the VLM's head counts are not in the weights and no VLM config.json was found; put "
                f"the config.json of {lerobot.vlm_model_name or 'the VLM'} in {directory / VLM_FOLDERS[0]}/ "
                f"or as {directory / VLM_CONFIG_FILE}"
            )
        log.info("%s: no VLM config.json beside it; head counts of the named config %s", path, named.name)
        vision, text_cfg, expert = named.vision, named.text, named.expert
    name = next(
        (
            c.name for c in NAMED_CONFIGS.values()
            if isinstance(c, SmolVLAConfig) and (c.vision, c.text, c.expert, c.scale_factor)
            == (vision, text_cfg, expert, scale)
        ),
        "smolvla",
    )
    return SmolVLAConfig(
        name=name,
        vision=vision,
        text=text_cfg,
        expert=expert,
        scale_factor=scale,
        vocab_size=vocab,
        action_horizon=lerobot.chunk_size,
        action_dim=action_dim,
        max_token_len=lerobot.tokenizer_max_length,
        num_cameras=len(lerobot.cameras),
        self_attn_every_n_layers=lerobot.self_attn_every_n_layers,
        min_period=lerobot.min_period,
        max_period=lerobot.max_period,
    )


def _config_from_lerobot_fast(lerobot, tensors: _TensorFile, meta: dict) -> PolicyConfig:
    """Sizes of a LeRobot pi0-FAST directory (PI0FastPytorch: a PaliGemma, no expert).

    LeRobot appends a BOS after the `tokenizer_max_length` padded prompt slots
    and decodes from it; vla_ros counts it as one more prompt slot.
    """
    path = lerobot.path
    weights = path.parent / WEIGHTS_FILE
    if lerobot.is_fast != tensors.is_fast:
        found = "pi0-FAST weights (no action expert)" if tensors.is_fast else "weights with an action expert"
        raise CheckpointError(f"{path} says type {lerobot.variant!r} but {weights} holds {found}; fix 'type'")
    vision = _infer_vision(tensors, meta)
    if vision.image_size != lerobot.image_resolution[0]:
        raise CheckpointError(
            f"{path}: image_resolution {list(lerobot.image_resolution)} but the vision weights in {weights} "
            f"are for {vision.image_size} px; fix image_resolution"
        )
    prefix = _gemma_from_shapes(tensors, "paligemma.model.language_model", path)
    vocab = tensors.shape(EMBED_KEY if EMBED_KEY in tensors.names else LM_HEAD_KEY)[0]
    name = next(
        (named.name for named in NAMED_CONFIGS.values()
         if named.is_fast and (named.vision, named.prefix) == (vision, prefix)),
        "pi0fast",
    )
    return PolicyConfig(
        name=name,
        pi05=False,
        vision=vision,
        prefix=prefix,
        expert=None,
        vocab_size=vocab,
        action_horizon=lerobot.chunk_size,
        action_dim=lerobot.max_action_dim,
        max_token_len=lerobot.tokenizer_max_length + 1,
        num_cameras=len(lerobot.cameras),
        decode=DecodeConfig(lerobot.max_decoding_steps, lerobot.fast_skip_tokens),
    )


def load_model(directory: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Build the model described by `directory` and load its weights.

    dtype float32 keeps everything fp32 (the CPU reference); bfloat16 / float16
    gives the reference mixed-precision split. Returns (model, config).
    """
    directory = Path(directory)
    tensors = _TensorFile(directory / WEIGHTS_FILE)
    cfg = config_from_checkpoint(directory, tensors)
    with torch.device("meta"):
        model = build_model(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    available = set(tensors.names)
    # A tied head is stored once, under either name; a decoding model's head stays its own
    # tensor only when the file holds both (LeRobot pi0-FAST).
    tied = not {EMBED_KEY, LM_HEAD_KEY} <= available
    if EMBED_KEY not in available and LM_HEAD_KEY in available:
        tensors.names[EMBED_KEY] = tensors.names[LM_HEAD_KEY]  # tied embedding
        available.add(EMBED_KEY)
    if LM_HEAD_KEY in expected and tied:
        tensors.names[LM_HEAD_KEY] = tensors.names[EMBED_KEY]
        available.add(LM_HEAD_KEY)
    elif LM_HEAD_KEY not in expected:
        available.discard(LM_HEAD_KEY)
    missing = sorted(set(expected) - available)
    unexpected = sorted(available - set(expected))
    misshaped = sorted(
        f"{k}: {tensors.shape(k)} vs {expected[k]}"
        for k in set(expected) & available
        if tensors.shape(k) != expected[k]
    )
    if missing or unexpected or misshaped:
        raise _mismatch_error(directory / WEIGHTS_FILE, missing, unexpected, misshaped)
    state = {
        k: tensors.tensor(k).to(device=device, dtype=torch.float32 if dtype == torch.float32 else None)
        for k in expected
        if not (tied and k == LM_HEAD_KEY)
    }
    if LM_HEAD_KEY in expected and tied:
        state[LM_HEAD_KEY] = state[EMBED_KEY]
    model.load_state_dict(state, assign=True, strict=True)
    if LM_HEAD_KEY in expected and tied:
        model.tie_head()
    model.float() if dtype == torch.float32 else model.to_mixed_precision(dtype)
    return model.eval().to(device), cfg


def save_checkpoint(model: Pi0Model, directory: str | Path, extra_config: dict | None = None) -> Path:
    """Write model.safetensors (openpi key layout, tied embedding stored once) and config.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if getattr(model, "head_is_tied", False):
        del state[LM_HEAD_KEY]  # stored once, as the embedding
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    meta = {"type": model.cfg.variant, "vla_ros": model.cfg.to_dict(), **(extra_config or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def random_model(
    cfg: PolicyConfig, seed: int = 0, std: float = 0.02, dtype: torch.dtype = torch.float32
) -> Pi0Model:
    """A model (Pi0Model, or Pi0FastModel for pi0-FAST) with reproducible random weights.

    Norm and AdaRMS weights are random too, so tests see them.

    Parameters are created on the meta device, given their final dtypes, then
    allocated once: a full-size pi0 in bf16 never passes through fp32 (13 GB).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = build_model(cfg)
    if dtype != torch.float32:
        model.to_mixed_precision(dtype)
    model.to_empty(device="cpu")
    if hasattr(model, "tie_head"):
        model.tie_head()  # to_empty gives each name its own tensor
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.1 if ("norm" in name or "embedding" in name) else std
            flat = param.view(-1)
            for start in range(0, flat.numel(), 1 << 24):  # bounded fp32 scratch for big matrices
                piece = flat[start : start + (1 << 24)]
                piece.copy_(torch.randn(piece.numel(), generator=generator) * scale)
    return model.eval()
