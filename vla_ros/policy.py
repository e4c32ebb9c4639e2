"""The Policy facade: RawObservation in, ActionChunk (robot units) out.

It composes the robot transform, normalization, image and prompt preprocessing,
an inference engine and the output transforms, and times each stage. Every
downstream user (the node, replay, bench, `vla-ros infer`) goes through it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
import time

import numpy as np

from vla_ros.engines.base import Engine, ModelInputs
from vla_ros.errors import CheckpointError, ConfigError, ObservationError
from vla_ros.model.config import PolicyConfig
from vla_ros.observation.image import prepare_images
from vla_ros.observation.normalize import load_norm_stats, Normalizer, pad_to_dim
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
    ):
        self.cfg = cfg
        self.engine = engine
        self.tokenizer = tokenizer
        self.normalizer = normalizer
        self.transform = transform or make_transform("identity")
        self.options = options
        self._rng = np.random.default_rng(options.seed)

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
        normalizer = Normalizer(
            load_norm_stats(directory, options.asset_id), "quantile" if cfg.pi05 else "zscore"
        )
        return cls(cfg, engine, tokenizer, normalizer, make_transform(options.robot_transform), options)

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
        state = np.asarray(obs.state, dtype=np.float32)
        if state.ndim != 1 or not np.all(np.isfinite(state)):
            raise ObservationError(f"state must be a finite 1-D vector, got shape {state.shape}")
        if state.shape[0] > self.cfg.action_dim:
            raise ObservationError(
                f"state has {state.shape[0]} dims, the model takes at most {self.cfg.action_dim}"
            )
        state, images = self.transform.inputs(state, dict(obs.images))
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
