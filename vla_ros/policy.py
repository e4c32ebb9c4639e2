"""The Policy facade: RawObservation in, ActionChunk (robot units) out.

It composes the robot transform, normalization, image and prompt preprocessing,
an inference engine and the output transforms, and times each stage. Every
downstream user (the node, replay, bench, `vla-ros infer`) goes through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import logging
from pathlib import Path
import time
from typing import Any

import numpy as np

from vla_ros.engines.base import Engine, ModelInputs
from vla_ros.errors import CheckpointError, ConfigError, ObservationError
from vla_ros.model.config import PolicyConfig
from vla_ros.observation.image import prepare_images
from vla_ros.observation.normalize import find_norm_stats, load_norm_stats, Normalizer, pad_to_dim
from vla_ros.observation.tokenizer import PromptTokenizer
from vla_ros.observation.transforms import make_transform, RobotTransform
from vla_ros.types import ActionChunk, CAMERA_KEYS, RawObservation

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PREFIX_ENGINES = ("auto", "pytorch", "onnx", "tensorrt", "reference")
SUFFIX_ENGINES = ("auto", "eager", "compiled", "cuda_graph", "reference")


@dataclasses.dataclass(frozen=True)
class PolicyOptions:
    """How to run a checkpoint. Every field is a YAML key under `policy:`."""

    device: str = "auto"
    precision: str = "auto"
    engine: str = "auto"
    suffix: str = "auto"
    num_steps: int = 10
    robot_transform: str = "identity"
    asset_id: str | None = None
    action_dims: int | None = None
    seed: int | None = None
    num_threads: int | None = None
    pack_weights: bool = True

    def __post_init__(self) -> None:
        for name, choices in (
            ("device", DEVICES),
            ("precision", PRECISIONS),
            ("engine", PREFIX_ENGINES),
            ("suffix", SUFFIX_ENGINES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"policy.{name}", f"got {getattr(self, name)!r}, expected one of {list(choices)}"
                )
        if not isinstance(self.num_steps, int) or self.num_steps <= 0:
            raise ConfigError("policy.num_steps", f"expected a positive integer, got {self.num_steps!r}")
        if self.action_dims is not None and not 0 < self.action_dims <= 32:
            raise ConfigError("policy.action_dims", f"expected 1..32, got {self.action_dims!r}")
        if self.num_threads is not None and self.num_threads <= 0:
            raise ConfigError("policy.num_threads", f"expected a positive integer, got {self.num_threads!r}")


def find_tokenizer(directory: Path) -> Path:
    """The SentencePiece model shipped beside a checkpoint (never fetched)."""
    for name in ("paligemma_tokenizer.model", "tokenizer.model"):
        for candidate in (directory / name, *directory.glob(f"assets/*/{name}")):
            if candidate.is_file():
                return candidate
    found = sorted(directory.glob("*.model")) + sorted(directory.glob("assets/*/*.model"))
    if len(found) == 1:
        return found[0]
    raise CheckpointError(
        f"no SentencePiece tokenizer in {directory}: expected paligemma_tokenizer.model or tokenizer.model"
        + (f" (found several: {[str(p) for p in found]})" if found else "")
    )


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """What a loaded policy expects of the robot, as plain data (it crosses process boundaries).

    The model zero-pads state and actions to its width (`model_dim`, 32 for
    pi0 / pi0.5); the norm stats have the dims of the dataset the checkpoint
    was trained on; `check_fits` compares both with the robot.
    """

    config_name: str  # the model configuration (pi0, pi05, pi0-tiny, ...)
    variant: str  # "pi0" or "pi05"
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

    def to_dict(self) -> dict[str, Any]:
        """Builtins only (lists for tuples), for a pipe or JSON."""
        data = dataclasses.asdict(self)
        data["camera_keys"] = list(self.camera_keys)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PolicySpec":
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["camera_keys"] = tuple(values.get("camera_keys", ()))
        return cls(**values)


def _make_spec(
    cfg: PolicyConfig,
    normalizer: Normalizer,
    options: PolicyOptions,
    checkpoint: str | Path | None = None,
    norm_stats: str | Path | None = None,
    untrained: bool = False,
) -> PolicySpec:
    return PolicySpec(
        config_name=cfg.name,
        variant=cfg.variant,
        model_dim=cfg.action_dim,
        state_dim=normalizer.state_dim,
        action_stats_dim=normalizer.action_dim,
        action_dims=options.action_dims,
        camera_keys=tuple(CAMERA_KEYS[: cfg.num_cameras]),
        image_size=cfg.vision.image_size,
        action_horizon=cfg.action_horizon,
        max_token_len=cfg.max_token_len,
        robot_transform=options.robot_transform,
        checkpoint=str(checkpoint or ""),
        norm_stats=str(norm_stats or ""),
        untrained=bool(untrained),
    )


def _is_untrained(directory: Path) -> bool:
    from vla_ros.model.checkpoint import read_config_json

    return read_config_json(directory).get("untrained") is True


def read_spec(directory: str | Path, options: PolicyOptions = PolicyOptions()) -> PolicySpec:
    """The spec of a checkpoint or artifact directory without loading its weights.

    Reads config.json (and, for checkpoints without vla_ros' resolved config,
    the safetensors header) and the norm stats, exactly as `Policy.from_checkpoint`
    does: tools check a robot against it before the slow load.
    """
    from vla_ros.model.checkpoint import config_from_checkpoint

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    cfg = config_from_checkpoint(directory)
    path = find_norm_stats(directory, options.asset_id)
    stats = load_norm_stats(directory, options.asset_id)
    normalizer = Normalizer(stats, "quantile" if cfg.pi05 else "zscore")
    return _make_spec(cfg, normalizer, options, directory, path, _is_untrained(directory))


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
    asset = f" (or pick other norm stats with {asset_id_from})" if asset_id_from else ""

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
        if not cameras:
            raise ConfigError(
                cameras_from,
                f"no camera configured, but {model} needs at least one of {list(spec.camera_keys)}",
            )
        extra = [k for k in cameras if k not in spec.camera_keys]
        if extra:
            raise ConfigError(
                cameras_from,
                f"camera(s) {extra} configured, but {model} has only the camera slots "
                f"{list(spec.camera_keys)}; remove them from {cameras_from}",
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
    policy.asset_id, `checkpoint_from`). Returns the warnings; raises ConfigError.
    """
    return check_fits(
        spec,
        config.num_joints,
        config.policy.action_dims or None,
        camera_keys=config.cameras.keys,
        action_dims_settable=False,
        checkpoint_from=checkpoint_from,
    )


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
    """Preprocess -> engine (prefix, suffix) -> postprocess, with per-stage timings."""

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
    ):
        self.cfg = cfg
        self.engine = engine
        self.tokenizer = tokenizer
        self.normalizer = normalizer
        self.transform = transform or make_transform("identity")
        self.options = options
        self._rng = np.random.default_rng(options.seed)
        self._origin = (checkpoint, norm_stats, untrained)

    @property
    def spec(self) -> PolicySpec:
        """What this policy expects of the robot (see `check_fits`)."""
        return _make_spec(self.cfg, self.normalizer, self.options, *self._origin)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, options: PolicyOptions = PolicyOptions()) -> "Policy":
        """A Policy from a checkpoint directory, or from an exported artifact directory (detected)."""
        from vla_ros.engines.factory import build_engine  # torch is imported only here

        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint directory {directory} does not exist")
        engine, cfg = build_engine(directory, options)
        tokenizer = PromptTokenizer(
            find_tokenizer(directory), cfg.max_token_len, "pi05" if cfg.pi05 else "pi0"
        )
        norm_stats = find_norm_stats(directory, options.asset_id)
        normalizer = Normalizer(
            load_norm_stats(directory, options.asset_id), "quantile" if cfg.pi05 else "zscore"
        )
        return cls(
            cfg,
            engine,
            tokenizer,
            normalizer,
            make_transform(options.robot_transform),
            options,
            checkpoint=directory,
            norm_stats=norm_stats,
            untrained=_is_untrained(directory),
        )

    @classmethod
    def from_artifacts(cls, directory: str | Path, options: PolicyOptions = PolicyOptions()) -> "Policy":
        """A Policy from a `vla-ros export` artifact directory (ONNX prefix + suffix weights)."""
        from vla_ros.engines.factory import is_artifact_dir

        if not is_artifact_dir(Path(directory)):
            raise CheckpointError(f"{directory} is not an exported artifact directory (no manifest.json)")
        return cls.from_checkpoint(directory, options)

    def sample_noise(self) -> np.ndarray:
        return self._rng.standard_normal((self.cfg.action_horizon, self.cfg.action_dim)).astype(np.float32)

    def preprocess(
        self,
        obs: RawObservation,
        noise: np.ndarray | None = None,
        tokens: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[ModelInputs, int]:
        """Model inputs and the robot's action dimension."""
        state = check_state(obs.state)
        if state.shape[0] > self.cfg.action_dim:
            raise ObservationError(
                f"state has {state.shape[0]} dims, the model takes at most {self.cfg.action_dim}"
            )
        state, images = self.transform.inputs(state, dict(obs.images))
        camera_keys = CAMERA_KEYS[: self.cfg.num_cameras]
        if not any(key in camera_keys for key in images):
            renames = list(getattr(self.transform, "CAMERA_RENAMES", {}))
            also = f" (or the robot names {renames} that robot_transform renames)" if renames else ""
            raise ObservationError(
                f"observation has no usable camera: got images {sorted(obs.images)}, expected at least "
                f"one of {list(camera_keys)}{also}"
            )
        norm_state = self.normalizer.normalize_state(state).astype(np.float32)
        image_batch, image_masks = prepare_images(
            images, CAMERA_KEYS[: self.cfg.num_cameras], self.cfg.vision.image_size
        )
        if tokens is None:
            tokens = self.tokenizer.tokenize(obs.prompt, norm_state if self.cfg.pi05 else None)
        token_ids, token_masks = (np.asarray(t) for t in tokens)
        if token_ids.shape != (self.cfg.max_token_len,) or token_masks.shape != token_ids.shape:
            raise ObservationError(
                f"tokenized prompt must have shape ({self.cfg.max_token_len},), "
                f"got {token_ids.shape} / {token_masks.shape}"
            )
        if noise is None:
            noise = self.sample_noise()
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != (self.cfg.action_horizon, self.cfg.action_dim):
            raise ObservationError(
                f"noise must have shape ({self.cfg.action_horizon}, {self.cfg.action_dim}), got {noise.shape}"
            )
        inputs = ModelInputs(
            images=image_batch,
            image_masks=image_masks,
            tokens=token_ids.astype(np.int32),
            token_masks=token_masks.astype(bool),
            state=pad_to_dim(norm_state, self.cfg.action_dim).astype(np.float32),
            noise=noise,
        )
        return inputs, self.options.action_dims or state.shape[0]

    def postprocess(self, normalized: np.ndarray, action_dims: int) -> np.ndarray:
        actions = self.normalizer.unnormalize_actions(normalized[:, :action_dims])
        return np.asarray(self.transform.outputs(actions), dtype=np.float32)

    def infer(
        self,
        obs: RawObservation,
        noise: np.ndarray | None = None,
        tokens: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> ActionChunk:
        """Actions (H, D) in robot units for `obs`; `tokens` bypasses the tokenizer."""
        clock = time.perf_counter
        start = clock()
        inputs, action_dims = self.preprocess(obs, noise, tokens)
        t_pre = clock()
        self.engine.encode_prefix(inputs)
        self.engine.synchronize()
        t_prefix = clock()
        normalized = self.engine.denoise(inputs)
        self.engine.synchronize()
        t_suffix = clock()
        actions = self.postprocess(normalized, action_dims)
        end = clock()
        timings = {
            "preprocess": t_pre - start,
            "prefix": t_prefix - t_pre,
            "suffix": t_suffix - t_prefix,
            "postprocess": end - t_suffix,
            "total": end - start,
        }
        return ActionChunk(actions=actions, timestamp=obs.timestamp, timings=timings)
