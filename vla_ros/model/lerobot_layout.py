"""LeRobot pi0 / pi0.5 / pi0-FAST / SmolVLA policy directories, as `save_pretrained` writes them.

A LeRobot (0.4 .. 0.6) policy directory holds:

- `config.json`: LeRobot's flat `PI0Config` / `PI05Config` (`"type": "pi0"` or
  `"pi05"`): chunk and prompt sizes, `input_features` (camera names and
  shapes, the state), `output_features` (the action), `empty_cameras`,
  `normalization_mapping`, relative actions. Model sizes are only implicit
  (two variant names); they are read from the weight shapes.
- `model.safetensors`: the openpi PyTorch keys with a leading `model.`, plus
  two `lm_head`s that inference never uses (docs/model.md, "Checkpoint key
  layout"; `vla_ros/model/checkpoint.py` maps them).
- `policy_preprocessor.json` / `policy_postprocessor.json`: the processor
  pipelines; their normalizer steps name the safetensors files
  (`state_file`) that hold the dataset statistics as `<feature>.<stat>`.

This module reads those files into plain records (no LeRobot import) and
writes the same layout (`save_lerobot_layout`, used by `vla-ros make-tiny
--layout lerobot` and the tests). Every error names the file or field to fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from vla_ros.errors import CheckpointError, ConfigError
from vla_ros.observation.normalize import MODE_STATS, NormStats
from vla_ros.types import CAMERA_KEYS

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
STATE_FEATURE = "observation.state"
ACTION_FEATURE = "action"
IMAGES_PREFIX = "observation.images."
EMPTY_CAMERA_PREFIX = "empty_camera_"
LEROBOT_TYPES = ("pi0", "pi05", "pi0_fast", "smolvla")
# The parameter precisions PI0Config / PI05Config accept (`dtype`).
LEROBOT_DTYPES = ("float32", "bfloat16")
# LeRobot NormalizationMode -> vla_ros Normalizer mode.
NORM_MODES = {
    "IDENTITY": "identity",
    "MEAN_STD": "zscore",
    "QUANTILES": "quantile",
    "QUANTILE10": "quantile10",
    "MIN_MAX": "minmax",
}
DEFAULT_NORMALIZATION = {
    "pi0": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "pi05": {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"},
    "pi0_fast": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "smolvla": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
}
# SmolVLAConfig settings vla_ros runs only at these values (LeRobot 0.6.1's defaults): field -> (value, why).
_SMOLVLA_FIXED = {
    "attention_mode": ("cross_attn", "the interleaved self- / cross-attention expert"),
    "add_image_special_tokens": (False, "no special tokens around the image tokens"),
    "prefix_length": (-1, "an unpadded prefix"),
    "adapt_to_pi_aloha": (False, "no ALOHA joint transforms inside the policy"),
    "use_delta_joint_actions_aloha": (False, "absolute actions"),
}
DEFAULT_EXCLUDE_JOINTS = ("gripper",)
DEFAULT_EPS = 1e-8
# LeRobot stat name -> NormStats field; other stats (count, q50, ...) are not used.
_STAT_FIELDS = {
    "mean": "mean",
    "std": "std",
    "q01": "q01",
    "q99": "q99",
    "q10": "q10",
    "q90": "q90",
    "min": "minimum",
    "max": "maximum",
}
# What LeRobot's pi0 / pi0.5 hard-code: the tokenizer its processor names.
LEROBOT_TOKENIZER = "google/paligemma-3b-pt-224"


def is_lerobot_config(meta: Mapping[str, Any]) -> bool:
    """Whether a config.json dict is LeRobot's pi0 / pi0.5 / pi0-FAST config (a `type` and feature fields)."""
    return meta.get("type") in LEROBOT_TYPES and any(
        key in meta for key in ("input_features", "output_features", "normalization_mapping")
    )


@dataclasses.dataclass(frozen=True)
class Camera:
    """One VISUAL input feature: a model camera slot, in `input_features` order."""

    key: str  # the feature key, e.g. observation.images.top
    name: str  # the key without "observation.images." (or "observation.")
    shape: tuple[int, ...]  # (3, H, W) of the training data
    empty: bool  # an `empty_cameras` slot: never fed, always masked


@dataclasses.dataclass(frozen=True)
class LeRobotConfig:
    """What a LeRobot pi0 / pi0.5 config.json says, validated (sizes the weights leave implicit)."""

    path: Path
    variant: str  # "pi0" or "pi05"
    chunk_size: int
    n_action_steps: int
    max_state_dim: int
    max_action_dim: int
    num_inference_steps: int
    tokenizer_max_length: int
    image_resolution: tuple[int, int]
    empty_cameras: int
    cameras: tuple[Camera, ...]
    state_dim: int | None  # input_features["observation.state"].shape[0]
    action_dim: int | None  # output_features["action"].shape[0]
    normalization_mapping: Mapping[str, str]
    use_relative_actions: bool
    relative_exclude_joints: tuple[str, ...]
    action_feature_names: tuple[str, ...] | None
    paligemma_variant: str | None
    action_expert_variant: str | None
    dtype: str = "float32"  # the precision LeRobot loads the parameters in (not used to pick ours)
    # pi0-FAST (PI0FastConfig) only:
    max_decoding_steps: int = 256
    fast_skip_tokens: int = 128
    temperature: float = 0.0
    action_tokenizer_name: str | None = None
    # SmolVLA (SmolVLAConfig) only:
    num_vlm_layers: int = 16
    self_attn_every_n_layers: int = 2
    vlm_model_name: str | None = None
    min_period: float = 4e-3
    max_period: float = 4.0

    @property
    def pi05(self) -> bool:
        return self.variant == "pi05"

    @property
    def is_fast(self) -> bool:
        return self.variant == "pi0_fast"

    @property
    def is_smolvla(self) -> bool:
        return self.variant == "smolvla"

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(camera.name for camera in self.cameras)


def _field_error(path: Path, name: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: '{name}' {problem}")


def _int_field(meta: Mapping, path: Path, name: str, default: int, minimum: int = 1) -> int:
    value = meta.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _field_error(path, name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _feature_shape(path: Path, group: str, key: str, feature: Any) -> tuple[int, ...]:
    if not isinstance(feature, Mapping) or not isinstance(feature.get("shape"), (list, tuple)):
        raise _field_error(
            path, f"{group}.{key}", f'must be {{"type": ..., "shape": [...]}}, got {feature!r}'
        )
    shape = feature["shape"]
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise _field_error(
            path, f"{group}.{key}.shape", f"must be a list of positive integers, got {shape!r}"
        )
    return tuple(shape)


def _features(meta: Mapping, path: Path, group: str) -> dict[str, dict]:
    features = meta.get(group) or {}
    if not isinstance(features, Mapping):
        raise _field_error(path, group, f"must be an object of features, got {features!r}")
    return dict(features)


def _camera_name(key: str) -> str:
    if key.startswith(IMAGES_PREFIX):
        return key[len(IMAGES_PREFIX):]
    return key[len("observation."):] if key.startswith("observation.") else key


def _string_list(path: Path, name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _field_error(path, name, f"must be a list of strings or null, got {value!r}")
    return tuple(value)


def _normalization_mapping(path: Path, name: str, value: Any, default: Mapping[str, str]) -> dict[str, str]:
    if value is None:
        return dict(default)
    if not isinstance(value, Mapping):
        raise _field_error(path, name, f"must be an object like {dict(default)}, got {value!r}")
    out = dict(default)
    for feature_type, mode in value.items():
        if not isinstance(mode, str) or mode not in NORM_MODES:
            raise _field_error(
                path, f"{name}.{feature_type}", f"is {mode!r}; expected one of {list(NORM_MODES)}"
            )
        out[str(feature_type)] = mode
    return out


def parse_lerobot_config(meta: Mapping[str, Any], path: Path) -> LeRobotConfig:
    """Validate LeRobot's config.json fields (defaults as in LeRobot 0.6.1 for absent ones).

    Cameras are the VISUAL `input_features` in their order, then
    `observation.images.empty_camera_<i>` for i < `empty_cameras` that are not
    listed yet (LeRobot adds them at load the same way).

    Raises:
        CheckpointError: a field of the wrong type or value, naming the file and the field.
    """
    variant = meta.get("type")
    if variant not in LEROBOT_TYPES:
        raise _field_error(path, "type", f"is {variant!r}; vla_ros runs LeRobot types {list(LEROBOT_TYPES)}")
    chunk = _int_field(meta, path, "chunk_size", 50)
    steps = _int_field(meta, path, "n_action_steps", chunk)
    if steps > chunk:
        raise _field_error(path, "n_action_steps", f"({steps}) must be <= chunk_size ({chunk})")
    smolvla = variant == "smolvla"
    # SmolVLA names its image size resize_imgs_with_padding ((width, height), 512 by default).
    resolution_field = "resize_imgs_with_padding" if smolvla else "image_resolution"
    resolution = meta.get(resolution_field, [512, 512] if smolvla else [224, 224])
    if (
        not isinstance(resolution, (list, tuple))
        or len(resolution) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in resolution)
        or resolution[0] != resolution[1]
    ):
        raise _field_error(path, resolution_field, f"must be [size, size] (square), got {resolution!r}")
    empty = _int_field(meta, path, "empty_cameras", 0, minimum=0)

    inputs = _features(meta, path, "input_features")
    outputs = _features(meta, path, "output_features")
    cameras: list[Camera] = []
    state_dim = None
    for key, feature in inputs.items():
        shape = _feature_shape(path, "input_features", key, feature)
        kind = feature.get("type")
        if kind == "VISUAL":
            if len(shape) != 3 or shape[0] != 3:
                raise _field_error(
                    path, f"input_features.{key}.shape", f"must be [3, H, W], got {list(shape)}"
                )
            name = _camera_name(key)
            cameras.append(Camera(key, name, shape, name.startswith(EMPTY_CAMERA_PREFIX)))
        elif key == STATE_FEATURE:
            state_dim = shape[0]
    listed = {camera.key for camera in cameras}
    for i in range(empty):
        key = f"{IMAGES_PREFIX}{EMPTY_CAMERA_PREFIX}{i}"
        if key not in listed:
            cameras.append(Camera(key, f"{EMPTY_CAMERA_PREFIX}{i}", (3, *resolution), True))
    if not cameras:
        raise _field_error(path, "input_features", "has no VISUAL feature (camera); pi0 needs at least one")
    real = [camera.name for camera in cameras if not camera.empty]
    if len(real) > len(CAMERA_KEYS):
        raise _field_error(
            path,
            "input_features",
            f"has {len(real)} cameras {real}; vla_ros feeds at most {len(CAMERA_KEYS)} "
            f"({', '.join(CAMERA_KEYS)}; empty_cameras come on top)",
        )
    if not real:
        raise _field_error(path, "input_features", "lists only empty cameras; pi0 needs a real camera")
    action_dim = None
    if ACTION_FEATURE in outputs:
        action_dim = _feature_shape(path, "output_features", ACTION_FEATURE, outputs[ACTION_FEATURE])[0]

    exclude = _string_list(path, "relative_exclude_joints", meta.get("relative_exclude_joints", ["gripper"]))
    relative = meta.get("use_relative_actions", False)
    if not isinstance(relative, bool):
        raise _field_error(path, "use_relative_actions", f"must be true or false, got {relative!r}")
    variants = {}
    for name in ("paligemma_variant", "action_expert_variant"):
        value = meta.get(name)
        if value is not None and not isinstance(value, str):
            raise _field_error(path, name, f"must be a string, got {value!r}")
        variants[name] = value
    dtype = meta.get("dtype", "float32")
    if smolvla:
        dtype = "float32"  # SmolVLAConfig has no dtype: the policy runs as it was built (fp32)
    if dtype not in LEROBOT_DTYPES:
        raise _field_error(path, "dtype", f"is {dtype!r}; LeRobot accepts {list(LEROBOT_DTYPES)}")
    return LeRobotConfig(
        path=path,
        variant=variant,
        chunk_size=chunk,
        n_action_steps=steps,
        max_state_dim=_int_field(meta, path, "max_state_dim", 32),
        max_action_dim=_int_field(meta, path, "max_action_dim", 32),
        num_inference_steps=_int_field(meta, path, "num_steps" if smolvla else "num_inference_steps", 10),
        tokenizer_max_length=_int_field(
            meta, path, "tokenizer_max_length", 48 if variant in ("pi0", "smolvla") else 200, minimum=2
        ),
        image_resolution=(resolution[0], resolution[1]),
        empty_cameras=empty,
        cameras=tuple(cameras),
        state_dim=state_dim,
        action_dim=action_dim,
        normalization_mapping=_normalization_mapping(
            path, "normalization_mapping", meta.get("normalization_mapping"), DEFAULT_NORMALIZATION[variant]
        ),
        use_relative_actions=relative,
        relative_exclude_joints=exclude or (),
        action_feature_names=_string_list(path, "action_feature_names", meta.get("action_feature_names")),
        dtype=dtype,
        **variants,
        **(_fast_fields(meta, path) if variant == "pi0_fast" else {}),
        **(_smolvla_fields(meta, path) if smolvla else {}),
    )


def _smolvla_fields(meta: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """SmolVLAConfig's model fields, validated; settings vla_ros does not run raise, naming the field."""
    for name, (value, meaning) in _SMOLVLA_FIXED.items():
        if name in meta and meta[name] != value:
            raise _field_error(
                path, name, f"is {meta[name]!r}; vla_ros runs SmolVLA with {value!r} only ({meaning})"
            )
    padding = meta.get("pad_language_to", "longest")
    if padding not in ("longest", "max_length"):
        raise _field_error(path, "pad_language_to", f"must be 'longest' or 'max_length', got {padding!r}")
    layers = _int_field(meta, path, "num_vlm_layers", 16)
    expert_layers = meta.get("num_expert_layers", -1)
    if isinstance(expert_layers, bool) or not isinstance(expert_layers, int) \
            or expert_layers not in (-1, 0, layers):
        raise _field_error(
            path, "num_expert_layers",
            f"is {expert_layers!r}; vla_ros runs an expert with one layer per VLM layer (-1 or {layers})",
        )
    periods = {}
    for name, default in (("min_period", 4e-3), ("max_period", 4.0)):
        value = meta.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise _field_error(path, name, f"must be a positive number, got {value!r}")
        periods[name] = float(value)
    name = meta.get("vlm_model_name")
    if name is not None and not isinstance(name, str):
        raise _field_error(path, "vlm_model_name", f"must be a string, got {name!r}")
    return {
        "num_vlm_layers": layers,
        "self_attn_every_n_layers": _int_field(meta, path, "self_attn_every_n_layers", 2),
        "vlm_model_name": name,
        **periods,
    }


def _fast_fields(meta: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """PI0FastConfig's decode fields, validated."""
    temperature = meta.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise _field_error(path, "temperature", f"must be a number >= 0, got {temperature!r}")
    name = meta.get("action_tokenizer_name")
    if name is not None and not isinstance(name, str):
        raise _field_error(path, "action_tokenizer_name", f"must be a string, got {name!r}")
    return {
        "max_decoding_steps": _int_field(meta, path, "max_decoding_steps", 256),
        "fast_skip_tokens": _int_field(meta, path, "fast_skip_tokens", 128, minimum=0),
        "temperature": float(temperature),
        "action_tokenizer_name": name,
    }


def read_lerobot_config(directory: str | Path, meta: Mapping[str, Any] | None = None) -> LeRobotConfig | None:
    """The LeRobot config of `directory`, or None when its config.json is not LeRobot's.

    `meta`: config.json already read (`read_config_json`), so it is not parsed again.
    """
    from vla_ros.model.checkpoint import read_config_json

    directory = Path(directory)
    if meta is None:
        meta = read_config_json(directory)
    if not is_lerobot_config(meta):
        return None
    return parse_lerobot_config(meta, directory / CONFIG_FILE)


# --- relative actions ---------------------------------------------------------------------------------


def relative_mask(
    action_dim: int, exclude_joints: Sequence[str] | None, action_names: Sequence[str] | None
) -> tuple[bool, ...]:
    """Which action dims are relative to the state: LeRobot's `RelativeActionsProcessorStep._build_mask`.

    All dims without exclusions or without names; otherwise dim k is absolute
    when an exclusion token (lower-cased) equals or is a substring of
    `action_names[k]` (lower-cased), e.g. "gripper" in "left_gripper". Dims
    beyond the names are relative.
    """
    if not exclude_joints or action_names is None:
        return (True,) * action_dim
    tokens = [str(name).lower() for name in exclude_joints if name]
    if not tokens:
        return (True,) * action_dim
    mask = [
        not any(token == str(name).lower() or token in str(name).lower() for token in tokens)
        for name in list(action_names)[:action_dim]
    ]
    return tuple(mask + [True] * (action_dim - len(mask)))


def to_absolute_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """LeRobot's `to_absolute_actions`: `actions[..., :dims] += state[:dims] * mask`, dims = len(mask).

    In the actions' float dtype, as LeRobot casts the state to it.

    Raises:
        CheckpointError: the state is shorter than the mask (LeRobot fails there too).
    """
    actions = np.array(actions, copy=True)
    dims = len(mask)
    state = np.asarray(state)
    if state.shape[-1] < dims:
        raise CheckpointError(
            f"relative actions: {dims} action dims are relative to the state, but the state has only "
            f"{state.shape[-1]}; the checkpoint's relative_actions_processor does not fit this robot"
        )
    dtype = actions.dtype if np.issubdtype(actions.dtype, np.floating) else np.float32
    actions = actions.astype(dtype, copy=False)
    offset = state[..., :dims].astype(dtype) * np.asarray(mask, dtype=dtype)
    actions[..., :dims] += offset
    return actions


def to_relative_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """The inverse of `to_absolute_actions` (LeRobot's `to_relative_actions`): subtract state * mask."""
    return to_absolute_actions(actions, -np.asarray(state), mask)


# --- processor files ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LeRobotProcessors:
    """What the processor files say: statistics, modes, relative actions, the tokenizer name."""

    stats: Mapping[str, NormStats]  # "state", "actions"
    state_mode: str  # vla_ros Normalizer mode
    action_mode: str
    eps: float
    state_file: Path | None  # the safetensors file the state statistics came from
    action_file: Path | None
    relative: bool  # the postprocessor's absolute_actions_processor is enabled
    exclude_joints: tuple[str, ...]
    action_names: tuple[str, ...] | None
    tokenizer_name: str | None  # the preprocessor's tokenizer_processor.tokenizer_name (a Hub id)

    @property
    def stats_files(self) -> str:
        """The statistics files, state's first (one line, for messages and PolicySpec.norm_stats)."""
        files = [str(p) for p in (self.state_file, self.action_file) if p is not None]
        return ", ".join(dict.fromkeys(files))


def _read_pipeline(path: Path) -> list[dict]:
    if not path.is_file():
        raise CheckpointError(
            f"no {path.name} in {path.parent}: a LeRobot policy directory keeps its normalization "
            f"statistics in {PREPROCESSOR_FILE} / {POSTPROCESSOR_FILE} and the safetensors files their "
            "steps name (save them with the policy's processors)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise CheckpointError(f'{path} must hold {{"name": ..., "steps": [{{"registry_name": ...}}, ...]}}')
    return steps


def _step(steps: list[dict], name: str) -> dict | None:
    """The first step registered as `name` (or, unregistered, whose class is named like it)."""
    class_name = "".join(part.title() for part in name.split("_")) + "Step"
    for step in steps:
        if step.get("registry_name") == name or str(step.get("class", "")).endswith("." + class_name):
            return step
    return None


def _step_name(step: dict) -> str:
    return str(step.get("registry_name") or step.get("class") or "unnamed")


def _json_kind(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _step_config(pipeline: Path, step: dict | None) -> dict:
    """The step's `config` object ({} for no step or no config).

    Raises:
        CheckpointError: a config that is not a JSON object, naming the file and the step.
    """
    if step is None:
        return {}
    config = step.get("config")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{pipeline}: the {_step_name(step)} step's 'config' must be a JSON object {{...}}, "
            f"got a JSON {_json_kind(config)}"
        )
    return config


def _state_file(directory: Path, pipeline: Path, step: dict) -> Path | None:
    """The existing file the step's `state_file` names (None when it names none)."""
    name = step.get("state_file")
    if not name:
        return None
    if not isinstance(name, str) or Path(name).name != name:
        raise CheckpointError(
            f"{pipeline}: the {_step_name(step)} step's state_file must be a file name beside it, "
            f"got {name!r}"
        )
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{pipeline} names state_file {name}, but {path} does not exist")
    return path


def processor_files(directory: str | Path) -> list[Path]:
    """The processor files of a LeRobot directory: each pipeline JSON present and the state files it names.

    Raises:
        CheckpointError: a pipeline that is not LeRobot's JSON, or a state file
            that is not beside it; each names the file.
    """
    directory = Path(directory)
    files = []
    for name in (PREPROCESSOR_FILE, POSTPROCESSOR_FILE):
        pipeline = directory / name
        if not pipeline.is_file():
            continue
        files.append(pipeline)
        for step in _read_pipeline(pipeline):
            path = _state_file(directory, pipeline, step)
            if path is not None:
                files.append(path)
    return files


def _read_stats_file(directory: Path, pipeline: Path, step: dict, feature: str) -> tuple[dict, Path | None]:
    """{stat: array} of `feature` in the step's state_file ({} when the step or the feature has none)."""
    path = _state_file(directory, pipeline, step)
    if path is None:
        return {}, None
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                head, _, stat = key.rpartition(".")
                if head == feature and stat in _STAT_FIELDS:
                    out[stat] = handle.get_tensor(key).float().numpy()
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    for stat, value in out.items():
        if value.ndim != 1:
            raise CheckpointError(
                f"{path}: {feature}.{stat} has shape {value.shape}; expected one value per dim"
            )
    return out, path


def _norm_settings(pipeline: Path, step: dict | None) -> tuple[dict, dict, float]:
    """(features, norm_map, eps) of a (un)normalizer step; empty when there is none."""
    if step is None:
        return {}, {}, DEFAULT_EPS
    config = _step_config(pipeline, step)
    name = _step_name(step)
    features = config.get("features") or {}
    norm_map = config.get("norm_map") or {}
    eps = config.get("eps", DEFAULT_EPS)
    if not isinstance(features, dict) or not isinstance(norm_map, dict):
        raise CheckpointError(f"{pipeline}: the {name} step's features and norm_map must be objects")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise CheckpointError(f"{pipeline}: the {name} step's eps must be a positive number, got {eps!r}")
    for feature_type, mode in norm_map.items():
        if not isinstance(mode, str) or mode not in NORM_MODES:
            raise CheckpointError(
                f"{pipeline}: norm_map.{feature_type} is {mode!r}; expected one of {list(NORM_MODES)}"
            )
    return features, norm_map, float(eps)


def _mode_of(feature: str, features: dict, norm_map: dict) -> str:
    """LeRobot's mode for `feature`: its type's norm_map entry; IDENTITY when the step does not list it."""
    entry = features.get(feature)
    kind = entry.get("type") if isinstance(entry, dict) else None
    return norm_map.get(kind, "IDENTITY") if isinstance(kind, str) else "IDENTITY"


def _norm_stats(values: dict, path: Path | None, feature: str) -> NormStats | None:
    if not values:
        return None
    try:
        return NormStats(**{_STAT_FIELDS[stat]: value for stat, value in values.items()})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: statistics of {feature}: {exc}") from exc


def read_processors(directory: str | Path, config: LeRobotConfig) -> LeRobotProcessors:
    """Statistics, modes and relative-action settings from the processor files of a LeRobot directory.

    The state statistics come from the preprocessor's `normalizer_processor`,
    the action statistics from the postprocessor's `unnormalizer_processor`
    (their `state_file`s), the modes from each step's `norm_map` (LeRobot runs
    those, not config.json's normalization_mapping; a disagreement is logged).
    A feature with mode IDENTITY or without statistics passes unchanged.
    Relative actions are on when the postprocessor's `absolute_actions_processor`
    is enabled; the mask uses the preprocessor's `relative_actions_processor`
    exclude_joints and action_names, as LeRobot does (config.json's
    relative_exclude_joints / action_feature_names only when the pipeline has
    no such step); no names means every dim is relative.

    Raises:
        CheckpointError: a missing or malformed file, statistics that a mode
            needs but lacks, or dims that disagree with config.json; each names the file.
    """
    directory = Path(directory)
    pre_path, post_path = directory / PREPROCESSOR_FILE, directory / POSTPROCESSOR_FILE
    pre, post = _read_pipeline(pre_path), _read_pipeline(post_path)
    norm_step, unnorm_step = _step(pre, "normalizer_processor"), _step(post, "unnormalizer_processor")
    pre_features, pre_map, eps = _norm_settings(pre_path, norm_step)
    post_features, post_map, post_eps = _norm_settings(post_path, unnorm_step)
    if post_eps != eps:
        log.warning("%s has eps %g, %s %g; using %g for both", pre_path, eps, post_path, post_eps, eps)
    for pipeline, norm_map in ((pre_path, pre_map), (post_path, post_map)):
        for kind in ("STATE", "ACTION"):
            if norm_map and kind in norm_map and norm_map[kind] != config.normalization_mapping.get(kind):
                log.warning(
                    "%s normalizes %s with %s but %s says %s; using the processor's (LeRobot does)",
                    pipeline, kind, norm_map[kind], config.path, config.normalization_mapping.get(kind),
                )
    state_values, state_file = (
        _read_stats_file(directory, pre_path, norm_step, STATE_FEATURE) if norm_step else ({}, None)
    )
    action_values, action_file = (
        _read_stats_file(directory, post_path, unnorm_step, ACTION_FEATURE) if unnorm_step else ({}, None)
    )
    modes = {}
    stats = {}
    for key, feature, values, path, features, norm_map, dim in (
        ("state", STATE_FEATURE, state_values, state_file, pre_features, pre_map, config.state_dim),
        ("actions", ACTION_FEATURE, action_values, action_file, post_features, post_map, config.action_dim),
    ):
        stat = _norm_stats(values, path, feature)
        mode = _mode_of(feature, features, norm_map)
        if stat is None:
            # LeRobot passes a feature without statistics through unchanged.
            mode = "IDENTITY"
            if dim is None:
                raise CheckpointError(
                    f"no {feature} statistics in the processor files of {directory} and no {feature} "
                    f"shape in {config.path}: the {key} dims are unknown"
                )
            stat = NormStats(mean=np.zeros(dim, np.float32), std=np.ones(dim, np.float32))
        elif dim is not None and stat.dim != dim:
            raise CheckpointError(
                f"{path}: {feature} statistics have {stat.dim} dims but {config.path} declares {dim}; "
                "they belong to different datasets"
            )
        needed = MODE_STATS[NORM_MODES[mode]]
        if not stat.has(*needed):
            lerobot_names = {field: name for name, field in _STAT_FIELDS.items()}
            present = "/".join(lerobot_names[field] for field in stat.to_json())
            raise CheckpointError(
                f"{path}: {mode} normalization of {feature} needs "
                f"{'/'.join(lerobot_names[field] for field in needed)}, which it lacks (present: {present}); "
                "fix the statistics or normalization_mapping"
            )
        modes[key] = NORM_MODES[mode]
        stats[key] = stat

    relative_step = _step(pre, "relative_actions_processor")
    relative_config = _step_config(pre_path, relative_step)
    relative = bool(_step_config(post_path, _step(post, "absolute_actions_processor")).get("enabled", False))
    if relative != config.use_relative_actions:
        log.warning(
            "%s says use_relative_actions %s but %s's absolute_actions_processor is %s; following the "
            "processor (LeRobot does)",
            config.path, config.use_relative_actions, post_path, "enabled" if relative else "absent or off",
        )
    exclude = (
        _string_list(pre_path, "relative_actions_processor.exclude_joints", relative_config["exclude_joints"])
        if "exclude_joints" in relative_config
        else config.relative_exclude_joints
    )
    names = (
        _string_list(pre_path, "relative_actions_processor.action_names", relative_config.get("action_names"))
        if relative_step is not None
        else config.action_feature_names
    )
    tokenizer_name = _step_config(pre_path, _step(pre, "tokenizer_processor")).get("tokenizer_name")
    return LeRobotProcessors(
        stats=stats,
        state_mode=modes["state"],
        action_mode=modes["actions"],
        eps=eps,
        state_file=state_file,
        action_file=action_file,
        relative=relative,
        exclude_joints=tuple(exclude or ()),
        action_names=names,
        tokenizer_name=tokenizer_name if isinstance(tokenizer_name, str) else None,
    )


# --- writing ------------------------------------------------------------------------------------------

_LM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
_EMBED = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
_EXPERT_LM_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"

# LeRobot 0.6.1's PI0Config / PI05Config fields, in its order, with their defaults.
_CONFIG_TEMPLATE: dict[str, Any] = {
    "type": None,
    "n_obs_steps": 1,
    "input_features": None,
    "output_features": None,
    "device": "cpu",
    "use_amp": False,
    "use_peft": False,
    "push_to_hub": True,
    "repo_id": None,
    "private": None,
    "tags": None,
    "license": None,
    "pretrained_path": None,
    "pretrained_revision": None,
    "paligemma_variant": "gemma_2b",
    "action_expert_variant": "gemma_300m",
    "dtype": "float32",
    "chunk_size": 50,
    "n_action_steps": 50,
    "max_state_dim": 32,
    "max_action_dim": 32,
    "num_inference_steps": 10,
    "time_sampling_beta_alpha": 1.5,
    "time_sampling_beta_beta": 1.0,
    "time_sampling_scale": 0.999,
    "time_sampling_offset": 0.001,
    "min_period": 0.004,
    "max_period": 4.0,
    "use_relative_actions": False,
    "relative_exclude_joints": ["gripper"],
    "action_feature_names": None,
    "rtc_config": None,
    "image_resolution": [224, 224],
    "empty_cameras": 0,
    "normalization_mapping": None,
    "gradient_checkpointing": False,
    "compile_model": False,
    "compile_mode": "max-autotune",
    "freeze_vision_encoder": False,
    "train_expert_only": False,
    "optimizer_lr": 2.5e-05,
    "optimizer_betas": [0.9, 0.95],
    "optimizer_eps": 1e-08,
    "optimizer_weight_decay": 0.01,
    "optimizer_grad_clip_norm": 1.0,
    "scheduler_warmup_steps": 1000,
    "scheduler_decay_steps": 30000,
    "scheduler_decay_lr": 2.5e-06,
    "tokenizer_max_length": None,
}


def _lerobot_stats(stats: NormStats) -> dict[str, np.ndarray]:
    names = {field: stat for stat, field in _STAT_FIELDS.items()}
    out = {}
    for field, values in stats.to_json().items():
        out[names[field]] = np.asarray(values, dtype=np.float32)
    return out


def _pipelines(
    variant: str,
    features: dict,
    action_features: dict,
    norm_map: dict,
    max_length: int,
    relative: bool,
    exclude_joints: list[str],
    action_names: list[str] | None,
) -> tuple[list[dict], list[dict]]:
    """LeRobot 0.6.1's pi0 / pi0.5 processor steps (state_file placeholders filled by the caller)."""
    rename = {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}}
    batch = {"registry_name": "to_batch_processor", "config": {}}
    tokenizer = {
        "registry_name": "tokenizer_processor",
        "config": {
            "max_length": max_length,
            "task_key": "task",
            "padding_side": "right",
            "padding": "max_length",
            "truncation": True,
            "tokenizer_name": LEROBOT_TOKENIZER,
        },
    }
    device = {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}
    relative_step = {
        "registry_name": "relative_actions_processor",
        "config": {"enabled": relative, "exclude_joints": exclude_joints, "action_names": action_names},
    }
    normalizer = {
        "registry_name": "normalizer_processor",
        "config": {"eps": DEFAULT_EPS, "features": features, "norm_map": norm_map},
    }
    if variant == "pi0":
        pre = [rename, batch, {"registry_name": "pi0_new_line_processor", "config": {}}, tokenizer, device,
               relative_step, normalizer]
    else:
        state_tokens = {"registry_name": "pi05_prepare_state_tokenizer_processor_step", "config": {}}
        pre = [rename, batch, relative_step, normalizer, state_tokens, tokenizer, device]
    post = [
        {"registry_name": "unnormalizer_processor",
         "config": {"eps": DEFAULT_EPS, "features": action_features, "norm_map": norm_map}},
        {"registry_name": "absolute_actions_processor", "config": {"enabled": relative}},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
    ]
    return pre, post


def save_lerobot_layout(
    model: Any,
    directory: str | Path,
    stats: Mapping[str, NormStats],
    *,
    camera_names: Sequence[str] | None = None,
    empty_cameras: int = 0,
    state_dim: int | None = None,
    action_dim: int | None = None,
    n_action_steps: int | None = None,
    num_inference_steps: int = 10,
    normalization_mapping: Mapping[str, str] | None = None,
    use_relative_actions: bool = False,
    action_names: Sequence[str] | None = None,
    exclude_joints: Sequence[str] = DEFAULT_EXCLUDE_JOINTS,
    tags: Sequence[str] | None = None,
) -> Path:
    """Write `model` and `stats` as LeRobot 0.6.1's `save_pretrained` (policy and processors) would.

    Files: config.json (every PI0Config / PI05Config field, in LeRobot's
    order), model.safetensors (`model.` + the openpi keys, the embedding also
    as `paligemma.lm_head` and a zero `gemma_expert.lm_head`, as LeRobot
    stores them), policy_preprocessor.json / policy_postprocessor.json with
    LeRobot's steps, and their normalizer safetensors (`<feature>.<stat>`,
    float32; image statistics too, which nothing reads). No tokenizer: LeRobot
    does not store one either.

    Args:
        model: a Pi0Model (fp32 weights are written as they are).
        stats: "state" and "actions" NormStats.
        camera_names: the real cameras, in slot order (default: the first
            slots' keys); with `empty_cameras` they fill the model's slots.
        state_dim, action_dim: the dataset's dims (default: the statistics').
        normalization_mapping: LeRobot's, e.g. {"STATE": "MEAN_STD", ...}
            (default: LeRobot's for the variant).
        use_relative_actions, action_names, exclude_joints: LeRobot's relative
            actions (action_names become config.json's action_feature_names).
        tags: config.json's tags (vla-ros make-tiny marks its models there).

    Returns:
        the directory.
    """
    from safetensors.torch import save_file
    import torch

    cfg = model.cfg
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    variant = cfg.variant
    size = cfg.vision.image_size
    if cfg.prefix.num_heads != 8 or cfg.expert.num_heads != 8:
        raise ConfigError(
            "model", "LeRobot's pi0 has 8 attention heads; this model cannot be saved in its layout"
        )
    real = cfg.num_cameras - empty_cameras
    names = list(camera_names) if camera_names is not None else list(CAMERA_KEYS[:real])
    if len(names) != real or real < 1:
        raise ConfigError(
            "camera_names",
            f"{len(names)} cameras + {empty_cameras} empty cameras must fill the model's "
            f"{cfg.num_cameras} slots",
        )
    state_dim = state_dim or stats["state"].dim
    action_dim = action_dim or stats["actions"].dim
    norm_map = dict(normalization_mapping or DEFAULT_NORMALIZATION[variant])
    norm_map.setdefault("VISUAL", "IDENTITY")

    # model.safetensors
    state = {"model." + k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    state["model." + _LM_HEAD] = state["model." + _EMBED].clone()
    state["model." + _EXPERT_LM_HEAD] = torch.zeros(cfg.vocab_size, cfg.expert.width, dtype=torch.float32)
    save_file(state, str(directory / WEIGHTS_FILE))

    # config.json
    image_feature = {"type": "VISUAL", "shape": [3, size, size]}
    inputs = {f"{IMAGES_PREFIX}{name}": dict(image_feature) for name in names}
    inputs[STATE_FEATURE] = {"type": "STATE", "shape": [state_dim]}
    for i in range(empty_cameras):
        inputs[f"{IMAGES_PREFIX}{EMPTY_CAMERA_PREFIX}{i}"] = dict(image_feature)
    outputs = {ACTION_FEATURE: {"type": "ACTION", "shape": [action_dim]}}
    meta = dict(_CONFIG_TEMPLATE)
    meta.update(
        type=variant,
        input_features=inputs,
        output_features=outputs,
        tags=list(tags) if tags else None,
        chunk_size=cfg.action_horizon,
        n_action_steps=n_action_steps or cfg.action_horizon,
        max_state_dim=cfg.action_dim,
        max_action_dim=cfg.action_dim,
        num_inference_steps=num_inference_steps,
        use_relative_actions=bool(use_relative_actions),
        relative_exclude_joints=list(exclude_joints),
        action_feature_names=list(action_names) if action_names is not None else None,
        image_resolution=[size, size],
        empty_cameras=empty_cameras,
        normalization_mapping=norm_map,
        tokenizer_max_length=cfg.max_token_len,
    )
    if variant == "pi05":  # PI05Config declares tokenizer_max_length before normalization_mapping
        order = [k for k in meta if k != "tokenizer_max_length"]
        order.insert(order.index("normalization_mapping"), "tokenizer_max_length")
        meta = {k: meta[k] for k in order}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=4))

    # processors
    # lerobot_train gives the normalizer every input and output feature.
    features = {**inputs, **outputs}
    pre, post = _pipelines(
        variant, features, outputs, norm_map, cfg.max_token_len, bool(use_relative_actions),
        list(exclude_joints), list(action_names) if action_names is not None else None,
    )
    tensors: dict[str, np.ndarray] = {}
    for feature, key in ((STATE_FEATURE, "state"), (ACTION_FEATURE, "actions")):
        for stat, value in _lerobot_stats(stats[key]).items():
            tensors[f"{feature}.{stat}"] = value
    for name in names:  # LeRobot keeps image statistics too; pi0 never uses them
        tensors[f"{IMAGES_PREFIX}{name}.mean"] = np.full((3, 1, 1), 0.5, np.float32)
        tensors[f"{IMAGES_PREFIX}{name}.std"] = np.full((3, 1, 1), 0.25, np.float32)
    torch_tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sorted(tensors.items())}
    for pipeline_name, steps, registry in (
        ("policy_preprocessor", pre, "normalizer_processor"),
        ("policy_postprocessor", post, "unnormalizer_processor"),
    ):
        for index, step in enumerate(steps):
            if step["registry_name"] == registry:
                step["state_file"] = f"{pipeline_name}_step_{index}_{registry}.safetensors"
                save_file(torch_tensors, str(directory / step["state_file"]))
        (directory / f"{pipeline_name}.json").write_text(
            json.dumps({"name": pipeline_name, "steps": steps}, indent=2)
        )
    return directory
