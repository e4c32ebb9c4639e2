"""The Policy facade: RawObservation in, ActionChunk (robot units) out.

It composes the robot transform, normalization, image and prompt preprocessing,
an inference engine and the output transforms, and times each stage. Every
downstream user (the node, replay, bench, `vla-ros infer`) goes through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import logging
import math
from pathlib import Path
import time
from typing import Any

import numpy as np

from vla_ros.engines.base import Engine, ModelInputs
from vla_ros.errors import ActionDecodeError, CheckpointError, ConfigError, ObservationError
from vla_ros.model.config import PolicyConfig
from vla_ros.model.fast_tokenizer import (
    ACTION_PREFIX_TEXT,
    ActionTokenParser,
    END_OF_ACTION_PIECE,
    FastActionTokenizer,
    find_fast_tokenizer,
)
from vla_ros.model.lerobot_layout import (
    read_lerobot_config,
    read_processors,
    relative_mask,
    to_absolute_actions,
    to_relative_actions,
)
from vla_ros.observation.image import FLOAT_RESIZE_METHODS, prepare_images, RESIZE_METHODS
from vla_ros.observation.normalize import (
    find_norm_stats,
    load_norm_stats,
    NORM_CONVENTIONS,
    Normalizer,
    pad_to_dim,
)
from vla_ros.observation.tokenizer import EOS_ID, find_tokenizer, PROMPT_STYLES, PromptTokenizer
from vla_ros.observation.transforms import make_transform, RobotTransform
from vla_ros.types import ActionChunk, CAMERA_KEYS, ChunkGuidance, RawObservation

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PREFIX_ENGINES = ("auto", "pytorch", "onnx", "tensorrt", "reference")
SUFFIX_ENGINES = ("auto", "eager", "compiled", "cuda_graph", "reference")
# Which code base wrote a checkpoint: it decides the preprocessing conventions.
SOURCES = ("openpi", "lerobot")
IMAGE_RESIZES = ("auto", *RESIZE_METHODS)
NORMALIZATIONS = ("auto", *NORM_CONVENTIONS)
PROMPT_STYLE_CHOICES = ("auto", *PROMPT_STYLES)
# Euler steps of a checkpoint that does not say (openpi's; LeRobot's num_inference_steps default too).
DEFAULT_NUM_STEPS = 10
# policy.num_samples: which of the K chunks (or what of them) a multi-sample inference returns.
SAMPLE_AGGREGATES: tuple[str, ...] = ("first", "mean", "medoid")
MAX_SAMPLES = 64


def aggregate_samples(normalized: np.ndarray, how: str) -> tuple[np.ndarray, float]:
    """One chunk from K normalized samples (K, H, D) of the robot's D action dims, and their spread.

    "first": sample 0 (the one a single-sample inference with the same noise
    gives); "mean": the elementwise mean (can average two modes into neither);
    "medoid": the sample with the least summed distance to the others (always
    one the model proposed). spread: the root-mean-square distance of the
    samples from their mean, in normalized units (0 for K = 1): a cheap
    uncertainty signal.
    """
    mean = normalized.mean(axis=0)
    spread = float(np.sqrt(np.mean((normalized - mean) ** 2)))
    if how == "mean":
        return mean, spread
    if how == "medoid":
        flat = normalized.reshape(normalized.shape[0], -1).astype(np.float64)
        norms = np.einsum("kd,kd->k", flat, flat)
        squared = norms[:, None] + norms[None, :] - 2.0 * flat @ flat.T  # (K, K), no (K, K, H*D) temporary
        distances = np.sqrt(np.maximum(squared, 0.0))
        return normalized[int(np.argmin(distances.sum(axis=1)))], spread
    return normalized[0], spread


@dataclasses.dataclass(frozen=True)
class PolicyOptions:
    """How to run a checkpoint. Every field is a YAML key under `policy:`.

    num_steps None (the default) means the checkpoint's own (LeRobot's
    num_inference_steps, else 10); `Policy.from_checkpoint` resolves it
    (`resolve_num_steps`). tokenizer: a tokenizer file or directory (None: beside the
    checkpoint). image_resize, normalization, prompt_style: "auto" follows the
    checkpoint's provenance (`Provenance`); "openpi" / "lerobot" force one.
    max_decoding_steps None: the checkpoint's (pi0-FAST: its config's, 256 by
    default); temperature 0 decodes greedily (decode models only);
    action_tokenizer: the FAST tokenizer directory (None: beside the checkpoint).
    num_samples: noise samples denoised per inference over one prefix (flow
    matching only); sample_aggregate picks the chunk returned: "first",
    "mean" or "medoid" (`aggregate_samples`).
    """

    device: str = "auto"
    precision: str = "auto"
    engine: str = "auto"
    suffix: str = "auto"
    num_steps: int | None = None
    robot_transform: str = "identity"
    asset_id: str | None = None
    action_dims: int | None = None
    seed: int | None = None
    num_threads: int | None = None
    pack_weights: bool = True
    tokenizer: str | None = None
    image_resize: str = "auto"
    normalization: str = "auto"
    prompt_style: str = "auto"
    max_decoding_steps: int | None = None
    temperature: float = 0.0
    action_tokenizer: str | None = None
    num_samples: int = 1
    sample_aggregate: str = "first"

    def __post_init__(self) -> None:
        for name, choices in (
            ("device", DEVICES),
            ("precision", PRECISIONS),
            ("engine", PREFIX_ENGINES),
            ("suffix", SUFFIX_ENGINES),
            ("image_resize", IMAGE_RESIZES),
            ("normalization", NORMALIZATIONS),
            ("prompt_style", PROMPT_STYLE_CHOICES),
            ("sample_aggregate", SAMPLE_AGGREGATES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"policy.{name}", f"got {getattr(self, name)!r}, expected one of {list(choices)}"
                )
        if self.num_steps is not None and (
            isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps <= 0
        ):
            raise ConfigError("policy.num_steps", f"expected a positive integer, got {self.num_steps!r}")
        if self.max_decoding_steps is not None and (
            isinstance(self.max_decoding_steps, bool) or not isinstance(self.max_decoding_steps, int)
            or self.max_decoding_steps <= 0
        ):
            raise ConfigError(
                "policy.max_decoding_steps", f"expected a positive integer, got {self.max_decoding_steps!r}"
            )
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError("policy.temperature", f"expected a number >= 0, got {self.temperature!r}")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) \
                or not 1 <= self.num_samples <= MAX_SAMPLES:
            raise ConfigError("policy.num_samples", f"expected 1..{MAX_SAMPLES}, got {self.num_samples!r}")
        if self.action_dims is not None and not 0 < self.action_dims <= 32:
            raise ConfigError("policy.action_dims", f"expected 1..32, got {self.action_dims!r}")
        if self.num_threads is not None and self.num_threads <= 0:
            raise ConfigError("policy.num_threads", f"expected a positive integer, got {self.num_threads!r}")
        for name in ("tokenizer", "action_tokenizer"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"policy.{name}", f"expected a path string, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Which code base wrote a checkpoint, and the preprocessing conventions that follow from it.

    source: "openpi" (openpi / vla_ros layout) or "lerobot" (a LeRobot policy
        directory).
    image_resize: the `prepare_images` method ("openpi": Pillow on uint8;
        "lerobot": torch bilinear on [0, 1] floats; "smolvla": the same,
        padded left / top, which a LeRobot SmolVLA checkpoint takes).
    prompt_style: the `PromptTokenizer` style (pi0 only: openpi cleans the
        text and tokenizes the newline apart; LeRobot appends it to the raw text).
    normalization: the `Normalizer` convention (openpi: +1e-6 both ways;
        LeRobot: eps 1e-8 on std going in only, no eps on the ranges).

    Each convention defaults to the source's; `policy.image_resize`,
    `policy.normalization` and `policy.prompt_style` override one.
    """

    source: str = "openpi"
    image_resize: str = ""
    prompt_style: str = ""
    normalization: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            # Not a parameter: the layout of the checkpoint's config.json decides it.
            raise CheckpointError(
                f"unknown checkpoint source {self.source!r}: vla_ros reads {list(SOURCES)} checkpoints, told "
                "apart by their config.json (a PolicySpec from another vla_ros version?)"
            )
        for name, choices in (
            ("image_resize", RESIZE_METHODS),
            ("prompt_style", PROMPT_STYLES),
            ("normalization", NORM_CONVENTIONS),
        ):
            value = getattr(self, name) or self.source
            if value not in choices:
                raise ConfigError(f"policy.{name}", f"got {value!r}, expected one of {list(choices)}")
            object.__setattr__(self, name, value)

    @classmethod
    def resolve(cls, source: str, options: PolicyOptions) -> "Provenance":
        """The source's conventions with the options' non-"auto" choices."""

        def pick(value: str) -> str:
            return source if value == "auto" else value

        return cls(
            source, pick(options.image_resize), pick(options.prompt_style), pick(options.normalization)
        )

    @property
    def overrides(self) -> dict[str, str]:
        """The conventions that differ from the source's."""
        return {
            name: getattr(self, name)
            for name in ("image_resize", "prompt_style", "normalization")
            if getattr(self, name) != self.source
        }

    def __str__(self) -> str:
        overrides = ", ".join(f"{name} {value}" for name, value in self.overrides.items())
        return f"{self.source} ({overrides})" if overrides else self.source


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says beyond its sizes and statistics (mostly LeRobot's config.json).

    camera_sources: per model slot, the camera it was trained with (LeRobot's
        `observation.images.<name>`; `empty_camera_<i>` for an `empty_cameras`
        slot; () for openpi checkpoints, whose cameras are the slots).
    relative_exclude / relative_names: relative_exclude None means absolute
        actions; otherwise the model predicts actions relative to the state and
        the policy adds the raw state back after unnormalizing (LeRobot's
        `AbsoluteActionsProcessorStep`), except on dims whose name (from
        relative_names) contains an exclusion token.
    """

    provenance: Provenance = Provenance()
    camera_sources: tuple[str, ...] = ()
    relative_exclude: tuple[str, ...] | None = None
    relative_names: tuple[str, ...] | None = None
    n_action_steps: int | None = None
    num_inference_steps: int | None = None
    lerobot_dtype: str | None = None  # LeRobot config.json `dtype` (float32 / bfloat16); None for openpi
    tokenizer_name: str | None = None  # the tokenizer LeRobot's preprocessor names (a Hub id)

    @property
    def relative(self) -> bool:
        return self.relative_exclude is not None

    def relative_mask(self, action_dim: int) -> tuple[bool, ...]:
        """Per action dim, whether the state is added back; () for absolute actions.

        The mask of fewer dims is the start of the mask of more (dims beyond
        the action names are relative), so one mask of the model's width serves
        every robot.
        """
        if not self.relative:
            return ()
        return relative_mask(action_dim, self.relative_exclude, self.relative_names)

    def slot_keys(self, num_cameras: int) -> tuple[str, ...]:
        """The key of each model slot (see `slot_keys`)."""
        return slot_keys(self.camera_sources, num_cameras)


def _is_empty_camera(name: str) -> bool:
    return name.startswith("empty_camera_")


def empty_slots(camera_sources: Sequence[str]) -> tuple[str, ...]:
    """The model slots LeRobot's `empty_cameras` added (named empty_camera_<i>): never fed, always masked."""
    return tuple(name for name in camera_sources if _is_empty_camera(name))


def slot_keys(camera_sources: Sequence[str], num_cameras: int) -> tuple[str, ...]:
    """The key of each model slot: the camera keys (base_0_rgb, ...) in order, for the cameras that are fed.

    openpi checkpoints (no sources): the first `num_cameras` CAMERA_KEYS.
    LeRobot checkpoints: the trained cameras take CAMERA_KEYS in their
    `input_features` order; an `empty_cameras` slot is never fed, so it keeps
    its own name (empty_camera_<i>) and needs no camera key.
    """
    if not camera_sources:
        return tuple(CAMERA_KEYS[:num_cameras])
    real = iter(CAMERA_KEYS)
    return tuple(name if _is_empty_camera(name) else next(real) for name in camera_sources)


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """What a loaded policy expects of the robot, as plain data (it crosses process boundaries).

    The model zero-pads state and actions to its width (`model_dim`, 32 for
    pi0 / pi0.5); the norm stats have the dims of the dataset the checkpoint
    was trained on; `check_fits` compares both with the robot.
    """

    config_name: str  # the model configuration (pi0, pi05, pi0-tiny, ...)
    variant: str  # "pi0", "pi05", "pi0fast" or "smolvla"
    model_dim: int  # the model's state / action width; shorter vectors are zero-padded to it
    state_dim: int  # dims of the norm stats' state: the joint count the checkpoint was trained on
    action_stats_dim: int  # dims of the norm stats' actions
    action_dims: int | None  # policy.action_dims the policy was loaded with (None: one per state entry)
    camera_keys: tuple[str, ...]  # the model's camera slots, in order
    image_size: int  # side of the square model image
    action_horizon: int  # actions per chunk
    max_token_len: int  # prompt tokens (pi0.5: prompt and discretized state)
    robot_transform: str = "identity"
    checkpoint: str = ""  # the checkpoint or artifact directory ('' when unknown)
    norm_stats: str = ""  # the norm_stats.json file ('' when unknown)
    untrained: bool = False  # config.json records `"untrained": true` (`vla-ros make-tiny`)
    provenance: Provenance = Provenance()  # who wrote the checkpoint; str() gives "openpi" / "lerobot"
    # Per slot, the camera the checkpoint was trained with (LeRobot input_features; () for openpi).
    camera_sources: tuple[str, ...] = ()
    normalization: str = ""  # modes and formulas, e.g. "state zscore, actions zscore (lerobot formulas)"
    relative_action_dims: tuple[int, ...] = ()  # action dims predicted relative to the state (made absolute)
    n_action_steps: int | None = None  # LeRobot: actions of a chunk it executes before the next inference
    # LeRobot config.json's dtype, the precision LeRobot runs it in (shown only: policy.precision picks ours).
    lerobot_dtype: str | None = None

    @property
    def image_resize(self) -> str:
        """The image resize convention in use ("openpi" or "lerobot")."""
        return self.provenance.image_resize

    @property
    def prompt_style(self) -> str:
        return self.provenance.prompt_style

    @property
    def empty_camera_slots(self) -> tuple[str, ...]:
        """Slots LeRobot's `empty_cameras` added (named empty_camera_<i>): never fed, always masked."""
        return empty_slots(self.camera_sources)

    def to_dict(self) -> dict[str, Any]:
        """Builtins only (lists for tuples, a dict for the provenance), for a pipe or JSON."""
        data = dataclasses.asdict(self)
        for name in ("camera_keys", "camera_sources", "relative_action_dims"):
            data[name] = list(getattr(self, name))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PolicySpec":
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        for name in ("camera_keys", "camera_sources", "relative_action_dims"):
            values[name] = tuple(values.get(name, ()))
        provenance = values.get("provenance")
        if isinstance(provenance, Mapping):
            values["provenance"] = Provenance(**provenance)
        elif isinstance(provenance, str):
            values["provenance"] = Provenance(provenance)
        return cls(**values)


def _make_spec(
    cfg: PolicyConfig,
    normalizer: Normalizer,
    options: PolicyOptions,
    checkpoint: str | Path | None = None,
    norm_stats: str | Path | None = None,
    untrained: bool = False,
    meta: CheckpointMeta = CheckpointMeta(),
) -> PolicySpec:
    mask = meta.relative_mask(normalizer.action_dim)
    return PolicySpec(
        config_name=cfg.name,
        variant=cfg.variant,
        model_dim=cfg.action_dim,
        state_dim=normalizer.state_dim,
        action_stats_dim=normalizer.action_dim,
        action_dims=options.action_dims,
        camera_keys=meta.slot_keys(cfg.num_cameras),
        image_size=cfg.vision.image_size,
        action_horizon=cfg.action_horizon,
        max_token_len=cfg.max_token_len,
        robot_transform=options.robot_transform,
        checkpoint=str(checkpoint or ""),
        norm_stats=str(norm_stats or ""),
        untrained=bool(untrained),
        provenance=meta.provenance,
        camera_sources=meta.camera_sources,
        normalization=normalizer.describe(),
        relative_action_dims=tuple(i for i, relative in enumerate(mask) if relative),
        n_action_steps=meta.n_action_steps,
        lerobot_dtype=meta.lerobot_dtype,
    )


# config.json tag of `vla-ros make-tiny --layout lerobot` models (LeRobot refuses unknown keys).
UNTRAINED_TAG = "vla-ros-untrained"


def _is_untrained(config_json: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's config.json (as read) marks it untrained."""
    tags = config_json.get("tags")
    return config_json.get("untrained") is True or (isinstance(tags, list) and UNTRAINED_TAG in tags)


def resolve_num_steps(options: PolicyOptions, meta: CheckpointMeta) -> PolicyOptions:
    """`options` with num_steps None replaced by the checkpoint's (LeRobot's num_inference_steps, else 10)."""
    if options.num_steps is not None:
        return options
    return dataclasses.replace(options, num_steps=meta.num_inference_steps or DEFAULT_NUM_STEPS)


def checkpoint_num_steps(directory: str | Path) -> int:
    """The Euler steps of a checkpoint or artifact directory: LeRobot's num_inference_steps, else 10."""
    lerobot = read_lerobot_config(directory)
    return lerobot.num_inference_steps if lerobot is not None else DEFAULT_NUM_STEPS


def load_conventions(
    directory: Path,
    cfg: PolicyConfig,
    options: PolicyOptions,
    *,
    config_json: Mapping[str, Any] | None = None,
) -> tuple[Normalizer, str, CheckpointMeta]:
    """Normalizer, statistics file(s) and CheckpointMeta of a checkpoint, in the conventions of its source.

    openpi layout: `assets/<id>/norm_stats.json`, z-score (pi0) or quantile
    (pi0.5). LeRobot layout: the processor files, their modes; config.json's
    cameras, relative actions, chunk settings and dtype. `config_json`: the
    directory's config.json already read (`read_config_json`), not parsed again.
    """
    lerobot = read_lerobot_config(directory, config_json)
    if lerobot is None:
        provenance = Provenance.resolve("openpi", options)
        path = find_norm_stats(directory, options.asset_id)
        stats = load_norm_stats(directory, options.asset_id)
        normalizer = Normalizer(
            stats, "quantile" if cfg.state_in_prompt else "zscore", provenance.normalization, source=path
        )
        return normalizer, str(path), CheckpointMeta(provenance)
    provenance = Provenance.resolve("lerobot", options)
    if lerobot.is_smolvla and options.image_resize == "auto":
        provenance = dataclasses.replace(provenance, image_resize="smolvla")
    if options.asset_id:
        raise ConfigError(
            "policy.asset_id",
            f"got {options.asset_id!r}, but {directory} is a LeRobot policy directory: its statistics are "
            "in policy_preprocessor.json / policy_postprocessor.json; leave policy.asset_id empty",
        )
    processors = read_processors(directory, lerobot)
    normalizer = Normalizer(
        processors.stats,
        processors.state_mode,
        provenance.normalization,
        action_mode=processors.action_mode,
        eps=processors.eps,
        source=processors.stats_files or directory,
    )
    meta = CheckpointMeta(
        provenance=provenance,
        camera_sources=lerobot.camera_names,
        relative_exclude=processors.exclude_joints if processors.relative else None,
        relative_names=processors.action_names,
        n_action_steps=lerobot.n_action_steps,
        num_inference_steps=lerobot.num_inference_steps,
        lerobot_dtype=lerobot.dtype,
        tokenizer_name=processors.tokenizer_name,
    )
    if meta.relative:
        if normalizer.state_dim < normalizer.action_dim:
            raise CheckpointError(
                f"{directory}: its {normalizer.action_dim} action dims are relative to the state, but the "
                f"state has only {normalizer.state_dim} ({processors.stats_files}); "
                "LeRobot cannot run it either"
            )
        if processors.action_names is None:
            log.warning(
                "%s: relative actions without action names (config.json action_feature_names): every action "
                "dim, grippers too, is made absolute by adding the state, as LeRobot does",
                directory,
            )
    return normalizer, processors.stats_files, meta


@dataclasses.dataclass(frozen=True)
class _Metadata:
    """What a checkpoint says about itself before any weight is loaded."""

    directory: Path
    cfg: PolicyConfig
    config_json: dict
    normalizer: Normalizer
    norm_stats: str
    meta: CheckpointMeta


def _read_metadata(directory: str | Path, options: PolicyOptions) -> _Metadata:
    """Sizes, config.json, statistics and conventions of a checkpoint or artifact directory.

    Shared by `read_spec` and `Policy.from_checkpoint`, so that both check a
    robot against the same reading, and their errors come before the slow load.
    """
    from vla_ros.model.checkpoint import config_from_checkpoint, read_config_json

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    cfg = config_from_checkpoint(directory)
    config_json = read_config_json(directory)
    normalizer, norm_stats, meta = load_conventions(directory, cfg, options, config_json=config_json)
    return _Metadata(directory, cfg, config_json, normalizer, str(norm_stats), meta)


def read_spec(directory: str | Path, options: PolicyOptions = PolicyOptions()) -> PolicySpec:
    """The spec of a checkpoint or artifact directory without loading its weights.

    Reads config.json (and, for checkpoints without vla_ros' resolved config,
    the safetensors header) and the norm stats (LeRobot: the processor files),
    exactly as `Policy.from_checkpoint` does: tools check a robot against it
    before the slow load.
    """
    m = _read_metadata(directory, options)
    return _make_spec(
        m.cfg, m.normalizer, options, m.directory, m.norm_stats, _is_untrained(m.config_json), m.meta
    )


def check_fits(
    spec: PolicySpec | None,
    num_joints: int,
    action_dims: int | None = None,
    *,
    camera_keys: Sequence[str] | None = None,
    joints_from: str = "joint_names",
    joints_label: str | None = None,
    action_dims_from: str = "policy.action_dims",
    action_dims_settable: bool = True,
    cameras_from: str = "cameras.keys",
    checkpoint_from: str = "checkpoint",
    asset_id_from: str | None = "policy.asset_id",
) -> list[str]:
    """Check that a robot fits the policy described by `spec`, before anything runs.

    The robot has `num_joints` joints and takes `action_dims` actions (None:
    `spec.action_dims`, else one per joint). They agree with the policy when
    the joints fit the model's width, the norm stats' state has one dim per
    joint and their actions one dim per action, and every camera in
    `camera_keys` (None: not checked) is a model slot. The `*_from` arguments
    name the parameters (or flags) these numbers came from; the error names
    the one to change. `joints_label` replaces "N joints (joints_from)" in
    the messages (e.g. "the state in obs.npz has 7 entries").

    Returns:
        Warnings (an untrained checkpoint), one line each.

    Raises:
        ConfigError: the first disagreement, in one line: the numbers, where
            each comes from, and what to change.

    A `spec` that is not a PolicySpec (a test double's policy has none) is
    not checked; that is logged at debug level.
    """
    if not isinstance(spec, PolicySpec):
        log.debug("the policy has no PolicySpec (%r): joints, norm stats and cameras are not checked", spec)
        return []
    n = int(num_joints)
    robot = joints_label or f"{n} joints ({joints_from})"
    checkpoint = f"checkpoint {spec.checkpoint}" if spec.checkpoint else "the checkpoint"
    model = f"the {spec.config_name} model of {checkpoint}"
    stats = f"norm stats {spec.norm_stats}" if spec.norm_stats else "the checkpoint's norm stats"
    lerobot = spec.provenance.source == "lerobot"  # its statistics come with it: no asset ids
    asset = f" (or pick other norm stats with {asset_id_from})" if asset_id_from and not lerobot else ""

    def other_checkpoint(what: str) -> str:
        return f"change {checkpoint_from} to one whose norm stats have {what}{asset}"

    if n > spec.model_dim:
        raise ConfigError(
            joints_from,
            f"{robot}, but {model} takes at most {spec.model_dim} state/action dims; "
            f"use at most {spec.model_dim} joints or a checkpoint made for {n} ({checkpoint_from})",
        )
    if max(spec.state_dim, spec.action_stats_dim) > spec.model_dim:
        raise ConfigError(
            checkpoint_from,
            f"the {stats} have {spec.state_dim} state and {spec.action_stats_dim} action dims, more "
            f"than the {spec.model_dim} dims {model} takes: they belong to another checkpoint; fix "
            f"{checkpoint_from}{asset}",
        )
    if spec.state_dim != n:
        raise ConfigError(
            joints_from,
            f"{robot}, but the {stats} have {spec.state_dim} state dims ({checkpoint} was trained on "
            f"{spec.state_dim} joints); use {spec.state_dim} joints in {joints_from}, "
            f"or {other_checkpoint(f'{n} dims')}",
        )
    if action_dims is not None and spec.action_dims is not None and action_dims != spec.action_dims:
        raise ConfigError(
            action_dims_from,
            f"{action_dims} action dims asked for, but the policy was loaded with action_dims "
            f"{spec.action_dims}; use the same value for both",
        )
    wanted = action_dims or spec.action_dims
    dims = wanted or n
    if dims != spec.action_stats_dim:
        where = f"{action_dims_from} {wanted}" if wanted else f"one per joint, {joints_from}"
        if action_dims_settable:
            fix = f"set {action_dims_from} to {spec.action_stats_dim}, or "
            fix += other_checkpoint(f"{dims} action dims")
        else:
            fix = f"actions map one-to-one onto {joints_from}, so {other_checkpoint(f'{dims} action dims')}"
        raise ConfigError(
            action_dims_from if action_dims_settable else checkpoint_from,
            f"the robot takes {dims} action dims ({where}), but the {stats} have {spec.action_stats_dim} "
            f"action dims ({spec.state_dim} state dims); {fix}",
        )
    if camera_keys is not None:
        cameras = list(camera_keys)
        empty = spec.empty_camera_slots
        usable = [k for k in spec.camera_keys if k not in empty]
        if not cameras:
            raise ConfigError(
                cameras_from,
                f"no camera configured, but {model} needs at least one of {_slot_names(spec, usable)}",
            )
        extra = [k for k in cameras if k not in usable]
        if extra:
            also = f", and {list(empty)} trained empty (LeRobot empty_cameras)" if empty else ""
            raise ConfigError(
                cameras_from,
                f"camera(s) {extra} configured, but {model} has only the camera slots "
                f"{_slot_names(spec, usable)}{also}; remove them from {cameras_from}",
            )
    warnings = []
    if spec.untrained:
        warnings.append(
            f"{checkpoint} is an untrained `vla-ros make-tiny` model (config.json says untrained): "
            "its actions are random noise; never run it on a real robot"
        )
    return warnings


def check_config_fits(spec: PolicySpec | None, config: Any, checkpoint_from: str = "checkpoint") -> list[str]:
    """`check_fits` for a NodeConfig (the node at configure, offline replay): joints, action dims, cameras.

    Names the node's parameters (joint_names, policy.action_dims, cameras.keys,
    policy.asset_id, `checkpoint_from`, aggregation.mode: a decode policy cannot
    run Real-Time Chunking). Returns the warnings; raises ConfigError.
    """
    warnings = check_fits(
        spec,
        config.num_joints,
        config.policy.action_dims or None,
        camera_keys=config.cameras.keys,
        action_dims_settable=False,
        checkpoint_from=checkpoint_from,
    )
    space = getattr(config.policy, "action_space", "absolute")
    if isinstance(spec, PolicySpec) and spec.relative_action_dims and space != "absolute":
        raise ConfigError(
            "policy.action_space",
            f"is '{space}', but checkpoint {spec.checkpoint} predicts actions relative to the state "
            f"(dims {list(spec.relative_action_dims)}) and the policy already makes them absolute; "
            "set policy.action_space to 'absolute'",
        )
    mode = getattr(getattr(config, "aggregation", None), "mode", None)
    if mode == "rtc" and isinstance(spec, PolicySpec) and spec.variant == "pi0fast":
        raise ConfigError(
            "aggregation.mode",
            f"is 'rtc', but checkpoint {spec.checkpoint} is a pi0-FAST (token decode) policy, which "
            "Real-Time Chunking cannot guide; choose temporal_ensemble, latest or crossfade",
        )
    rtc = getattr(config, "rtc", None)
    engine = getattr(getattr(config, "policy", None), "engine", "reference")
    if mode == "rtc" and rtc is not None and rtc.jacobian == "vjp" and engine != "reference":
        raise ConfigError(
            "rtc.jacobian",
            f"'vjp' back-propagates through the action expert, which only policy.engine 'reference' "
            f"does (got {engine!r}); use 'identity' (LeRobot's guidance) or the reference engine",
        )
    return warnings


def _slot_names(spec: PolicySpec, slots: Sequence[str]) -> list[str]:
    """Slot keys, each with the camera a LeRobot checkpoint was trained with ("base_0_rgb (= top)")."""
    sources = dict(zip(spec.camera_keys, spec.camera_sources))
    return [f"{slot} (= {sources[slot]})" if sources.get(slot, slot) != slot else slot for slot in slots]


def check_state(state: Any) -> np.ndarray:
    """The joint state as a finite float32 vector.

    Raises:
        ObservationError: not a non-empty 1-D vector of numbers, or NaN / inf
            entries (listed with their values).
    """
    try:
        array = np.asarray(state, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ObservationError(f"state must be a vector of joint positions (numbers): {exc}") from None
    if array.ndim != 1 or array.size == 0:
        raise ObservationError(
            f"state must be a non-empty 1-D vector of joint positions, got shape {array.shape}"
        )
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        shown = ", ".join(f"[{i}]={array[i]}" for i in bad[:8]) + (" ..." if bad.size > 8 else "")
        raise ObservationError(
            f"state has NaN/inf in {bad.size} of {array.size} entries: {shown}; "
            "every joint position must be finite"
        )
    return array


class Policy:
    """Preprocess -> engine (prefix, suffix) -> postprocess, with per-stage timings.

    `meta` carries what the checkpoint says beyond sizes and statistics: its
    provenance (the image resize, prompt and normalization conventions), the
    cameras its slots were trained with, LeRobot's empty camera slots and
    relative actions. The default is an openpi checkpoint with absolute actions.
    `options.num_steps` None becomes the checkpoint's (`resolve_num_steps`).
    """

    def __init__(
        self,
        cfg: PolicyConfig,
        engine: Engine,
        tokenizer: PromptTokenizer,
        normalizer: Normalizer,
        transform: RobotTransform | None = None,
        options: PolicyOptions = PolicyOptions(),
        *,
        checkpoint: str | Path | None = None,
        norm_stats: str | Path | None = None,
        untrained: bool = False,
        meta: CheckpointMeta = CheckpointMeta(),
        action_parser: ActionTokenParser | None = None,
    ):
        self.cfg = cfg
        self.engine = engine
        self.tokenizer = tokenizer
        self.normalizer = normalizer
        self.transform = transform or make_transform("identity")
        self.options = resolve_num_steps(options, meta)
        self.meta = meta
        self._rng = np.random.default_rng(options.seed)
        self._origin = (checkpoint, norm_stats, untrained)
        # What every inference needs from the meta, worked out once.
        self._slots = meta.slot_keys(cfg.num_cameras)
        self._empty = empty_slots(meta.camera_sources)
        self._usable = tuple(key for key in self._slots if key not in self._empty)
        self._present_first = meta.provenance.source == "lerobot"
        # One mask of the model's width: the mask of a robot's dims is its start.
        self._relative = meta.relative_mask(cfg.action_dim)
        # Decode models: generated tokens -> normalized chunk; decoding stops at "|" or EOS.
        if cfg.is_fast and options.num_samples > 1:
            raise ConfigError(
                "policy.num_samples", "a pi0-FAST policy decodes one token sequence per inference; set 1"
            )
        if cfg.is_fast and action_parser is None:
            raise ConfigError("policy.action_tokenizer", "a pi0-FAST policy needs its FAST action tokenizer")
        self.action_parser = action_parser
        self._stop_ids = () if action_parser is None else (action_parser.end_id, EOS_ID)

    @property
    def provenance(self) -> Provenance:
        return self.meta.provenance

    @property
    def spec(self) -> PolicySpec:
        """What this policy expects of the robot (see `check_fits`)."""
        return _make_spec(self.cfg, self.normalizer, self.options, *self._origin, meta=self.meta)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, options: PolicyOptions = PolicyOptions()) -> "Policy":
        """A Policy from a checkpoint directory, or from an exported artifact directory (detected).

        The directory may be in the openpi / vla_ros layout or a LeRobot policy
        directory; its provenance picks the conventions unless the options force
        them. The tokenizer is `options.tokenizer`, else found beside the checkpoint.
        """
        from vla_ros.engines.factory import build_engine  # torch is imported only here

        # Statistics, conventions and the tokenizer first: their errors come before the slow load.
        m = _read_metadata(directory, options)
        directory, meta = m.directory, m.meta
        options = resolve_num_steps(options, meta)
        tokenizer_path = find_tokenizer(
            _tokenizer_folder(directory, m.cfg, options, meta), options.tokenizer, named=meta.tokenizer_name
        )
        engine, cfg = build_engine(directory, options, source=meta.provenance.source)
        tokenizer = PromptTokenizer(
            tokenizer_path, cfg.max_token_len, cfg.variant, meta.provenance.prompt_style
        )
        parser = None
        if cfg.is_fast:
            if meta.provenance.prompt_style != meta.provenance.source:
                raise ConfigError(
                    "policy.prompt_style",
                    f"'{meta.provenance.prompt_style}' on a {meta.provenance.source} pi0-FAST checkpoint: "
                    "its prompt layout (appended BOS, decode positions) is the checkpoint's; leave it 'auto'",
                )
            parser = make_action_parser(directory, options, cfg, tokenizer, m.normalizer)
        return cls(
            cfg,
            engine,
            tokenizer,
            m.normalizer,
            make_transform(options.robot_transform),
            options,
            checkpoint=directory,
            norm_stats=m.norm_stats,
            untrained=_is_untrained(m.config_json),
            meta=meta,
            action_parser=parser,
        )

    @classmethod
    def from_artifacts(cls, directory: str | Path, options: PolicyOptions = PolicyOptions()) -> "Policy":
        """A Policy from a `vla-ros export` artifact directory (ONNX prefix + suffix weights)."""
        from vla_ros.engines.factory import is_artifact_dir

        if not is_artifact_dir(Path(directory)):
            raise CheckpointError(f"{directory} is not an exported artifact directory (no manifest.json)")
        return cls.from_checkpoint(directory, options)

    def reseed(self, seed: int | None) -> None:
        """Restart the noise sequence as a fresh load with policy.seed `seed` would (comparable runs)."""
        self._rng = np.random.default_rng(seed)

    def sample_noise(self) -> np.ndarray:
        """(H, A) noise, or (K, H, A) with policy.num_samples K > 1."""
        shape = (self.cfg.action_horizon, self.cfg.action_dim)
        if self.options.num_samples > 1:
            shape = (self.options.num_samples, *shape)
        return self._rng.standard_normal(shape).astype(np.float32)

    def _camera_order(self, images: Mapping[str, np.ndarray]) -> list[str]:
        """The model's slots in the order their images go in.

        openpi: fixed slots, a missing camera masked in place. LeRobot
        (`PI0Policy._preprocess_images`): the present cameras in slot order,
        then the missing ones (masked), so a missing camera shifts the later
        ones forward, as the LeRobot model sees them.
        """
        if not self._present_first:
            return list(self._slots)
        return [k for k in self._slots if k in images] + [k for k in self._slots if k not in images]

    def _prepare(
        self,
        obs: RawObservation,
        noise: np.ndarray | None = None,
        tokens: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[ModelInputs, int, np.ndarray]:
        """Model inputs, the robot's action dimension and the state after the robot transform."""
        state = check_state(obs.state)
        if state.shape[0] > self.cfg.action_dim:
            raise ObservationError(
                f"state has {state.shape[0]} dims, the model takes at most {self.cfg.action_dim}"
            )
        state, images = self.transform.inputs(state, dict(obs.images))
        empty, usable = self._empty, self._usable
        unused = sorted(key for key in images if key not in usable)
        if unused and self.meta.camera_sources:
            slots = zip(self._slots, self.meta.camera_sources)
            trained = ", ".join(f"{k} (= {name})" for k, name in slots if k in usable)
            also = f"; {list(empty)} were trained empty (LeRobot empty_cameras)" if empty else ""
            raise ObservationError(
                f"image(s) for camera(s) {unused}, which the checkpoint has no slot for: it was trained with "
                f"{trained}{also}; do not send them (cameras.keys)"
            )
        if not any(key in usable for key in images):
            renames = list(getattr(self.transform, "CAMERA_RENAMES", {}))
            also = f" (or the robot names {renames} that robot_transform renames)" if renames else ""
            raise ObservationError(
                f"observation has no usable camera: got images {sorted(obs.images)}, expected at least "
                f"one of {list(usable)}{also}"
            )
        norm_state = self.normalizer.normalize_state(state).astype(np.float32)
        method = self.meta.provenance.image_resize
        # LeRobot's resize stays float all the way into the model; rounding it to uint8
        # would move its actions by a few 1e-3 (measured against LeRobot 0.6.1).
        image_batch, image_masks = prepare_images(
            images, self._camera_order(images), self.cfg.vision.image_size, method,
            model_range=method in FLOAT_RESIZE_METHODS,
        )
        if tokens is None:
            tokens = self.tokenizer.tokenize(obs.prompt, norm_state if self.cfg.state_in_prompt else None)
        token_ids, token_masks = (np.asarray(t) for t in tokens)
        if token_ids.shape != (self.cfg.max_token_len,) or token_masks.shape != token_ids.shape:
            raise ObservationError(
                f"tokenized prompt must have shape ({self.cfg.max_token_len},), "
                f"got {token_ids.shape} / {token_masks.shape}"
            )
        if noise is None:
            noise = self.sample_noise()
        noise = np.asarray(noise, dtype=np.float32)
        expected = (self.cfg.action_horizon, self.cfg.action_dim)
        if self.options.num_samples > 1:
            expected = (self.options.num_samples, *expected)
        if noise.shape != expected:
            raise ObservationError(f"noise must have shape {expected}, got {noise.shape}")
        inputs = ModelInputs(
            images=image_batch,
            image_masks=image_masks,
            tokens=token_ids.astype(np.int32),
            token_masks=token_masks.astype(bool),
            state=pad_to_dim(norm_state, self.cfg.action_dim).astype(np.float32),
            noise=noise,
        )
        return inputs, self.options.action_dims or state.shape[0], np.asarray(state)

    def preprocess(
        self,
        obs: RawObservation,
        noise: np.ndarray | None = None,
        tokens: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[ModelInputs, int]:
        """Model inputs and the robot's action dimension."""
        inputs, action_dims, _ = self._prepare(obs, noise, tokens)
        return inputs, action_dims

    def postprocess(
        self, normalized: np.ndarray, action_dims: int, state: np.ndarray | None = None
    ) -> np.ndarray:
        """Model-unit actions (H, >= action_dims) -> robot units (H, action_dims).

        `state` is the observation's state after the robot transform; the
        checkpoints whose actions are relative to it (LeRobot relative actions)
        need it: after unnormalizing, `actions[:, :D] += state[:D] * mask`.
        """
        actions = self.normalizer.unnormalize_actions(normalized[:, :action_dims])
        if self._relative:
            if state is None:
                raise ObservationError(
                    "this checkpoint predicts actions relative to the state; postprocess needs the state"
                )
            actions = to_absolute_actions(actions, state, self._relative[:action_dims])
        return np.asarray(self.transform.outputs(actions), dtype=np.float32)

    def model_guidance(self, guidance: ChunkGuidance, state: np.ndarray, action_dims: int):
        """The previous chunk in robot units -> the model's normalized, padded target and soft mask.

        The inverse of `postprocess`: the robot transform's inverse, then (relative
        checkpoints) minus the new observation's state, then the action
        normalization; as LeRobot re-anchors and normalizes its leftover.
        """
        from vla_ros.engines.guidance import ModelGuidance

        if self.cfg.is_fast:
            raise ConfigError(
                "rtc.mode", "Real-Time Chunking guides a flow-matching policy's denoising; "
                "this pi0-FAST policy decodes tokens (use another aggregation.mode)"
            )
        previous = guidance.previous
        if previous.shape[1] != action_dims:
            raise ObservationError(
                f"the previous chunk has {previous.shape[1]} action dims, the policy returns {action_dims}"
            )
        actions = np.asarray(self.transform.actions_to_pi(previous), dtype=np.float32)
        if self._relative:
            actions = to_relative_actions(actions, state, self._relative[:action_dims])
        normalized = self.normalizer.normalize_actions(actions)
        return ModelGuidance.build(
            normalized, guidance.delay, guidance.settings, self.cfg.action_horizon, self.cfg.action_dim
        )

    def infer(
        self,
        obs: RawObservation,
        noise: np.ndarray | None = None,
        tokens: tuple[np.ndarray, np.ndarray] | None = None,
        guidance: ChunkGuidance | None = None,
    ) -> ActionChunk:
        """Actions (H, D) in robot units for `obs`; `tokens` bypasses the tokenizer.

        `guidance` (Real-Time Chunking) denoises toward the previous chunk's
        actions that the robot will still execute (docs/rtc.md).
        Decode models (pi0-FAST) ignore `noise`; their chunk carries the
        generated token ids (`ActionChunk.tokens`), and a sequence that is not
        a well-formed action raises ActionDecodeError.
        """
        clock = time.perf_counter
        start = clock()
        inputs, action_dims, state = self._prepare(obs, noise, tokens)
        model_guidance = None if guidance is None else self.model_guidance(guidance, state, action_dims)
        t_pre = clock()
        self.engine.encode_prefix(inputs)
        self.engine.synchronize()
        t_prefix = clock()
        generated = samples = spread = None
        if self.action_parser is None:
            stage, normalized = "suffix", self.engine.denoise(inputs, model_guidance)
            self.engine.synchronize()
            if normalized.ndim == 3:  # policy.num_samples > 1; the padded model dims are no actions
                samples = normalized[..., :action_dims]
                normalized, spread = aggregate_samples(samples, self.options.sample_aggregate)
        else:
            stage, (normalized, generated) = "decode", self._decode_normalized(action_dims)
        t_stage = clock()
        actions = self.postprocess(normalized, action_dims, state)
        if samples is not None:
            samples = np.stack([self.postprocess(sample, action_dims, state) for sample in samples])
        end = clock()
        timings = {
            "preprocess": t_pre - start,
            "prefix": t_prefix - t_pre,
            stage: t_stage - t_prefix,
            "postprocess": end - t_stage,
            "total": end - start,
        }
        return ActionChunk(actions=actions, timestamp=obs.timestamp, timings=timings, tokens=generated,
                           samples=samples, spread=spread)

    def _decode_normalized(self, action_dims: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode after the prefix: the normalized chunk and the generated ids (stop token included)."""
        result = self.engine.decode(self._stop_ids)
        self.engine.synchronize()
        ids = result.ids if result.stop is None else np.append(result.ids, result.stop)
        generated = ids.astype(np.int64)
        try:
            normalized = self.action_parser.decode(generated)
        except ActionDecodeError as exc:
            exc.tokens = generated  # what was generated, for logs and `infer --tokens-out`
            raise
        if normalized.shape[1] < action_dims:
            raise ObservationError(
                f"the FAST tokenizer decodes {normalized.shape[1]} action dims, the robot takes {action_dims}"
            )
        return normalized, generated


def _tokenizer_folder(directory: Path, cfg, options: PolicyOptions, meta: CheckpointMeta) -> Path:
    """Where to look for the tokenizer: the checkpoint, or for SmolVLA, failing that, its local VLM folder."""
    if cfg.variant != "smolvla" or options.tokenizer or (Path(directory) / "tokenizer.json").is_file():
        return directory
    from vla_ros.model.checkpoint import find_vlm_folder

    return find_vlm_folder(directory, meta.tokenizer_name) or directory


def make_action_parser(directory: str | Path, options: PolicyOptions, cfg: PolicyConfig,
                       tokenizer: PromptTokenizer, normalizer: Normalizer) -> ActionTokenParser:
    """pi0-FAST's generated-text parser: the FAST tokenizer found beside the checkpoint and the text markers.

    The chunk is (H, D) with H the FAST tokenizer's time_horizon (else the
    model's horizon) and D its action_dim (else the robot's, from the
    statistics), as the references decode it.
    """
    fast_dir = find_fast_tokenizer(directory, options.action_tokenizer)
    fast = FastActionTokenizer.load(str(fast_dir))
    if fast.action_dim is not None and fast.action_dim < normalizer.action_dim:
        raise CheckpointError(
            f"{fast_dir}: the FAST tokenizer decodes {fast.action_dim} action dims but the checkpoint's "
            f"statistics have {normalizer.action_dim}; they belong to different robots "
            "(policy.action_tokenizer)"
        )
    end_id = tokenizer.piece_id(END_OF_ACTION_PIECE)
    if end_id is None:
        raise CheckpointError(
            f"{tokenizer.source}: no {END_OF_ACTION_PIECE!r} piece, which ends pi0-FAST's actions; "
            "is this PaliGemma's tokenizer? (policy.tokenizer)"
        )
    return ActionTokenParser(
        fast,
        vocab_size=cfg.vocab_size,
        skip=cfg.decode.fast_skip_tokens,
        prefix_ids=tokenizer.encode_text(ACTION_PREFIX_TEXT),
        end_id=end_id,
        horizon=fast.time_horizon or cfg.action_horizon,
        action_dim=fast.action_dim or normalizer.action_dim,
    )
