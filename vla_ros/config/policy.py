"""The policy.*, inference.* and remote.* sections: how to load and run the checkpoint, when, and where."""

from __future__ import annotations

import dataclasses
import math
import re
from urllib.parse import urlsplit

from vla_ros.config.validate import (
    _choice,
    _choices,
    _positive,
    BOOL,
    BOOL_LIST,
    FLOAT,
    INFERENCE_MODES,
    INT,
    param,
    STR,
    TRIGGERS,
)
from vla_ros.errors import ConfigError
from vla_ros.observation.transforms import TRANSFORM_NAMES
from vla_ros.policy import (
    DEVICES,
    IMAGE_RESIZES,
    NORMALIZATIONS,
    PolicyOptions,
    PRECISIONS,
    PREFIX_ENGINES,
    PROMPT_STYLE_CHOICES,
    SAMPLE_AGGREGATES,
    SUFFIX_ENGINES,
)
from vla_ros.remote.obs_formats import FORMAT_NAMES


@dataclasses.dataclass(frozen=True)
class PolicySection:
    """How to load and run the checkpoint (maps onto vla_ros.policy.PolicyOptions)."""

    device: str = param("auto", "Inference device.", STR, DEVICES)
    precision: str = param("auto", "Inference precision.", STR, PRECISIONS)
    engine: str = param("auto", "Prefix engine.", STR, PREFIX_ENGINES)
    suffix: str = param("auto", "Suffix (denoiser) engine.", STR, SUFFIX_ENGINES)
    num_steps: int = param(
        0,
        "Flow-matching (Euler) denoising steps; 0 = the checkpoint's (LeRobot num_inference_steps, else 10).",
        INT,
    )
    num_samples: int = param(
        1,
        "Flow-matching policies: noise samples denoised per inference over one shared prefix, as one "
        "batch; the chunk is their sample_aggregate and diagnostics report their spread.",
        INT,
    )
    sample_aggregate: str = param(
        "first",
        "With num_samples > 1: 'first' (sample 0), 'mean' (elementwise), or 'medoid' (the sample closest "
        "to the others).",
        STR,
        SAMPLE_AGGREGATES,
    )
    max_decoding_steps: int = param(
        0,
        "Decode models (pi0-FAST): most tokens decoded per inference; 0 = the checkpoint's (256).",
        INT,
    )
    temperature: float = param(
        0.0, "Decode models (pi0-FAST): sampling temperature; 0 = greedy (the reference's default).", FLOAT
    )
    action_tokenizer: str = param(
        "",
        "Decode models (pi0-FAST): the FAST action tokenizer directory (processor_config.json, "
        "tokenizer.json); '' = beside the checkpoint (fast_tokenizer/).",
        STR,
    )
    robot_transform: str = param(
        "identity",
        "Robot <-> policy conventions (joint signs, gripper units, camera names).",
        STR,
        TRANSFORM_NAMES,
    )
    asset_id: str = param("", "Norm-stats asset id under <checkpoint>/assets/ ('' = the only one).", STR)
    tokenizer: str = param(
        "",
        "PaliGemma tokenizer file or directory (SentencePiece .model or Hugging Face tokenizer.json); "
        "'' = beside the checkpoint. LeRobot checkpoints ship none: point this at one.",
        STR,
    )
    image_resize: str = param(
        "auto",
        "Resize-with-pad convention of the camera frames: 'openpi' (Pillow) or 'lerobot' (torch "
        "bilinear); auto = the checkpoint's (LeRobot policy directories: lerobot, others: openpi).",
        STR,
        IMAGE_RESIZES,
    )
    normalization: str = param(
        "auto",
        "Normalization formulas: 'openpi' (+1e-6 on std / quantile range, both ways) or 'lerobot' "
        "(+1e-8 on std going in only, none on the range); auto = the checkpoint's.",
        STR,
        NORMALIZATIONS,
    )
    prompt_style: str = param(
        "auto",
        "pi0 prompt convention: 'openpi' (cleaned task + newline) or 'lerobot' (raw task + newline); "
        "auto = the checkpoint's.",
        STR,
        PROMPT_STYLE_CHOICES,
    )
    action_dims: int = param(0, "Action dimensions the robot uses (0 = the number of joint_names).", INT)
    seed: int = param(-1, "Seed of the denoising noise (-1 = random).", INT)
    num_threads: int = param(
        0,
        "CPU threads of the inference engine (torch intra-op / onnxruntime); 0 = library default. "
        "Keep it below the core count so the control timer keeps a core.",
        INT,
    )
    pack_weights: bool = param(
        True,
        "On CPUs running bf16: pack the weights into oneDNN's blocked layout at load and fuse the "
        "MLP activations into the matmuls (faster; false = plain torch matmuls, for debugging).",
        BOOL,
    )
    action_rate: float = param(
        50.0, "Rate (Hz) of the actions in a chunk: action k is meant for obs_time + k / action_rate.", FLOAT
    )
    action_space: str = param(
        "absolute",
        "What the policy's actions are: joint positions or offsets "
        "from the joint state at observation time.",
        STR,
        ("absolute", "delta"),
    )
    delta_mask: tuple[bool, ...] = param(
        (),
        "For action_space 'delta': per joint, true if its action is a delta (empty = all joints).",
        BOOL_LIST,
    )
    warmup_runs: int = param(2, "Inferences run on a synthetic observation during configure.", INT)

    def __post_init__(self) -> None:
        names = (
            "device", "precision", "engine", "suffix", "robot_transform", "action_space", "image_resize",
            "normalization", "prompt_style",
        )
        for name in names:
            _choice(f"policy.{name}", getattr(self, name), _choices(type(self), name))
        if self.num_steps < 0:
            raise ConfigError(
                "policy.num_steps", f"expected 0 (the checkpoint's) or an integer >= 1, got {self.num_steps}"
            )
        if self.max_decoding_steps < 0:
            raise ConfigError(
                "policy.max_decoding_steps",
                f"expected 0 (the checkpoint's) or an integer >= 1, got {self.max_decoding_steps}",
            )
        if not 0 <= self.action_dims <= 32:
            raise ConfigError(
                "policy.action_dims", f"expected 0 (all joints) or 1..32, got {self.action_dims}"
            )
        if self.seed < -1:
            raise ConfigError("policy.seed", f"expected -1 (random) or a seed >= 0, got {self.seed}")
        if self.num_threads < 0:
            raise ConfigError(
                "policy.num_threads", f"expected 0 (default) or a positive count, got {self.num_threads}"
            )
        _positive("policy.action_rate", self.action_rate)
        if self.warmup_runs < 0:
            raise ConfigError("policy.warmup_runs", f"expected an integer >= 0, got {self.warmup_runs}")
        self.to_policy_options()  # PolicyOptions' own checks name policy.* parameters too

    @property
    def action_period(self) -> float:
        return 1.0 / self.action_rate

    def to_policy_options(self) -> PolicyOptions:
        """Return the PolicyOptions for vla_ros.policy.Policy."""
        return PolicyOptions(
            device=self.device,
            precision=self.precision,
            engine=self.engine,
            suffix=self.suffix,
            num_steps=self.num_steps or None,
            num_samples=self.num_samples,
            sample_aggregate=self.sample_aggregate,
            max_decoding_steps=self.max_decoding_steps or None,
            temperature=self.temperature,
            action_tokenizer=self.action_tokenizer or None,
            robot_transform=self.robot_transform,
            asset_id=self.asset_id or None,
            action_dims=self.action_dims or None,
            seed=None if self.seed < 0 else self.seed,
            num_threads=self.num_threads or None,
            pack_weights=self.pack_weights,
            tokenizer=self.tokenizer or None,
            image_resize=self.image_resize,
            normalization=self.normalization,
            prompt_style=self.prompt_style,
        )


@dataclasses.dataclass(frozen=True)
class InferenceSection:
    """When the next inference starts, and where the policy runs."""

    mode: str = param(
        "thread",
        "Where the policy runs: a worker thread of the node, a separate process (shared memory for "
        "images and chunks) that cannot stall the control timer through the GIL, or a policy server "
        "(remote.*: openpi's websocket protocol, e.g. `vla-ros serve` on a GPU machine).",
        STR,
        INFERENCE_MODES,
    )
    trigger: str = param(
        "threshold",
        "Start the next inference when the executed part of the current chunk passes "
        "execute_threshold, or at a fixed rate.",
        STR,
        TRIGGERS,
    )
    execute_threshold: float = param(
        0.5,
        "Fraction (0, 1] of the newest chunk's duration, counted from its observation time, after "
        "which the next inference starts.",
        FLOAT,
    )
    rate: float = param(2.0, "Inference rate (Hz) for trigger 'rate'.", FLOAT)
    retry_delay: float = param(0.5, "Seconds to wait after a failed inference before the next try.", FLOAT)
    timeout: float = param(
        30.0, "Seconds after which an inference in a separate process counts as hung (process mode).", FLOAT
    )

    def __post_init__(self) -> None:
        _choice("inference.mode", self.mode, INFERENCE_MODES)
        _choice("inference.trigger", self.trigger, TRIGGERS)
        if not 0.0 < self.execute_threshold <= 1.0:
            raise ConfigError(
                "inference.execute_threshold", f"expected a fraction in (0, 1], got {self.execute_threshold}"
            )
        _positive("inference.rate", self.rate)
        if math.isnan(self.retry_delay) or self.retry_delay < 0.0:
            raise ConfigError("inference.retry_delay", f"expected seconds >= 0, got {self.retry_delay}")
        _positive("inference.timeout", self.timeout)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class RemoteSection:
    """The policy server of inference.mode 'remote' (docs/remote.md, "The node as a client").

    There is deliberately no parameter that holds the API key: parameters end up in YAML files,
    launch files, `ros2 param dump` and logs. `api_key_env` names the environment variable that
    holds it, and only a variable name is accepted there.
    """

    uri: str = param(
        "ws://127.0.0.1:8000",
        "The policy server (openpi's websocket protocol: `vla-ros serve`, openpi's serve_policy.py): "
        "ws://host:port or wss://host:port.",
        STR,
    )
    obs_format: str = param(
        "slots",
        "Request convention the server takes: openpi's aloha, droid or libero, or vla_ros's slots "
        "(cameras keyed by model slot).",
        STR,
        FORMAT_NAMES,
    )
    api_key_env: str = param(
        "",
        "Name of the environment variable holding the server's API key, sent as 'Authorization: Api-Key "
        "<key>' ('' = no key). A variable name only: the key itself is never a parameter.",
        STR,
    )
    connect_timeout: float = param(
        5.0, "Seconds to open the connection and receive the server's metadata.", FLOAT
    )
    request_timeout: float = param(
        10.0,
        "Seconds from sending a request to its actions; then the inference counts as failed (hold) and "
        "the connection is reopened.",
        FLOAT,
    )
    reconnect_backoff_max: float = param(
        5.0,
        "Longest wait (s) between reconnection attempts; the wait doubles from 0.1 s after each failed "
        "attempt up to this.",
        FLOAT,
    )

    def __post_init__(self) -> None:
        parts = urlsplit(self.uri)
        if "@" in parts.netloc:
            raise ConfigError(
                "remote.uri", "credentials in the URI are refused; put the API key in an environment "
                "variable and name it in remote.api_key_env"
            )
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError("remote.uri", f"expected ws://host:port or wss://host:port, got {self.uri!r}")
        try:
            parts.port
        except ValueError:
            raise ConfigError("remote.uri", f"bad port in {self.uri!r}") from None
        _choice("remote.obs_format", self.obs_format, FORMAT_NAMES)
        if self.api_key_env and not _ENV_NAME.fullmatch(self.api_key_env):
            # The value is not echoed: what is not a variable name here is most likely the key itself.
            raise ConfigError(
                "remote.api_key_env", "is not an environment variable name (letters, digits and '_', e.g. "
                "VLA_ROS_API_KEY); put the API key itself in that variable, never in the parameters"
            )
        _positive("remote.connect_timeout", self.connect_timeout)
        _positive("remote.request_timeout", self.request_timeout)
        _positive("remote.reconnect_backoff_max", self.reconnect_backoff_max)
