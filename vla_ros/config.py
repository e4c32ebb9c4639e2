"""The policy node's configuration: frozen dataclasses, validated on construction.

This is the only place where YAML files and ROS parameters become configuration.
Both arrive as one nested mapping of the node's ``ros__parameters`` (ROS
parameter names are that mapping flattened with dots), and
``NodeConfig.from_dict`` turns it into a ``NodeConfig``. Every error is a
``ConfigError`` that names the parameter as it is written in the YAML file
(``limits.max_velocity[3]``, ``cameras.base_0_rgb.topic``), and unknown names
are answered with a "did you mean".

Parameter layout (see config/aloha.yaml for a complete file)::

    vla_policy:
      ros__parameters:
        checkpoint, auto_activate, dry_run, control_rate, joint_names
        policy.*       how to load and run the checkpoint (engine, device, threads)
        inference.*    when to run it (threshold of the current chunk / fixed rate)
                       and where (thread / separate process)
        prompt.*       instruction topic and default prompt
        joint_states.* topic, staleness, QoS
        cameras.*      keys (model camera slots), default QoS, and one section
                       per key: topic, transport (raw / compressed), staleness,
                       expected size, QoS
        sync.*         skew between cameras, policy for a missing camera
        aggregation.*  how overlapping chunks are merged
        output.*       trajectory / position topics, look-ahead points
        limits.*       per-joint position, velocity and distance limits
        watchdog.*     observation and inference timeouts
        diagnostics.*  /diagnostics rate

Every field carries its description (``parameter_specs`` hands them to the
node's parameter declarations) and, in the dataclass, a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any, NamedTuple

from vla_ros.errors import ConfigError
from vla_ros.observation.transforms import TRANSFORM_NAMES
from vla_ros.policy import DEVICES, PolicyOptions, PRECISIONS, PREFIX_ENGINES, SUFFIX_ENGINES
from vla_ros.types import CAMERA_KEYS

DEFAULT_NODE_NAME = "vla_policy"

# Parameter kinds, as the ROS layer declares them.
STR, BOOL, INT, FLOAT = "str", "bool", "int", "float"
STR_LIST, BOOL_LIST, FLOAT_LIST = "str[]", "bool[]", "float[]"
SECTION = "section"

QOS_PROFILES = ("sensor_data", "reliable", "system_default")
CAMERA_TRANSPORTS = ("raw", "compressed")
INFERENCE_MODES = ("thread", "process")
TRIGGERS = ("threshold", "rate")


def param(default: Any, doc: str, kind: str, choices: Sequence[str] = ()) -> Any:
    """Declare a dataclass field that is also a ROS parameter (kind, description, choices)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "kind": kind, "choices": tuple(choices)})


def section(cls: type, doc: str) -> Any:
    """Declare a dataclass field holding a nested parameter section."""
    return dataclasses.field(default_factory=cls, metadata={"doc": doc, "kind": SECTION, "cls": cls})


# --------------------------------------------------------------- checks ---


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(name, f"got {value!r}, expected one of {list(choices)}{hint}")


def _positive(name: str, value: float, allow_inf: bool = False) -> None:
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        raise ConfigError(name, f"expected a {'' if allow_inf else 'finite '}number > 0, got {value!r}")


def _topic(name: str, value: str, allow_empty: bool = False) -> None:
    if not value.strip():
        if allow_empty:
            return
        raise ConfigError(name, "expected a topic name, got an empty string")
    if any(c.isspace() for c in value):
        raise ConfigError(name, f"topic names cannot contain whitespace, got {value!r}")


def _coerce(kind: str, value: Any, name: str) -> Any:
    """Check a YAML / ROS parameter value against its kind; ints are accepted for floats."""
    if kind == STR:
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    if kind == BOOL:
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {value!r}")
        return value
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        return int(value)
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"expected a number, got {value!r}")
        return float(value)
    if kind in (STR_LIST, BOOL_LIST, FLOAT_LIST):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            # ROS array parameters arrive as array.array / lists; a lone scalar is a mistake.
            try:
                value = list(value)
            except TypeError:
                raise ConfigError(name, f"expected a list, got {value!r}") from None
        item_kind = kind[:-2]
        return tuple(_coerce(item_kind, v, f"{name}[{i}]") for i, v in enumerate(value))
    raise AssertionError(f"unknown parameter kind {kind}")


# ------------------------------------------------------------- sections ---


@dataclasses.dataclass(frozen=True)
class PolicySection:
    """How to load and run the checkpoint (maps onto vla_ros.policy.PolicyOptions)."""

    device: str = param("auto", "Inference device.", STR, DEVICES)
    precision: str = param("auto", "Inference precision.", STR, PRECISIONS)
    engine: str = param("auto", "Prefix engine.", STR, PREFIX_ENGINES)
    suffix: str = param("auto", "Suffix (denoiser) engine.", STR, SUFFIX_ENGINES)
    num_steps: int = param(10, "Flow-matching (Euler) denoising steps.", INT)
    robot_transform: str = param(
        "identity",
        "Robot <-> policy conventions (joint signs, gripper units, camera names).",
        STR,
        TRANSFORM_NAMES,
    )
    asset_id: str = param("", "Norm-stats asset id under <checkpoint>/assets/ ('' = the only one).", STR)
    action_dims: int = param(0, "Action dimensions the robot uses (0 = the number of joint_names).", INT)
    seed: int = param(-1, "Seed of the denoising noise (-1 = random).", INT)
    num_threads: int = param(
        0,
        "CPU threads of the inference engine (torch intra-op / onnxruntime); 0 = library default. "
        "Keep it below the core count so the control timer keeps a core.",
        INT,
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
        for name in ("device", "precision", "engine", "suffix", "robot_transform", "action_space"):
            _choice(f"policy.{name}", getattr(self, name), _choices(type(self), name))
        if self.num_steps < 1:
            raise ConfigError("policy.num_steps", f"expected an integer >= 1, got {self.num_steps}")
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
            num_steps=self.num_steps,
            robot_transform=self.robot_transform,
            asset_id=self.asset_id or None,
            action_dims=self.action_dims or None,
            seed=None if self.seed < 0 else self.seed,
            num_threads=self.num_threads or None,
        )


@dataclasses.dataclass(frozen=True)
class InferenceSection:
    """When the next inference starts, and where the policy runs."""

    mode: str = param(
        "thread",
        "Where the policy runs: a worker thread of the node, or a separate process "
        "(shared memory for images and chunks) that cannot stall the control timer through the GIL.",
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


@dataclasses.dataclass(frozen=True)
class PromptSection:
    """The language instruction."""

    topic: str = param("/instruction", "std_msgs/String topic carrying the instruction.", STR)
    default: str = param("", "Prompt used until the first instruction arrives ('' = wait for one).", STR)

    def __post_init__(self) -> None:
        _topic("prompt.topic", self.topic)


@dataclasses.dataclass(frozen=True)
class JointStatesSection:
    """The measured joint positions (sensor_msgs/JointState, matched by joint name)."""

    topic: str = param("/joint_states", "sensor_msgs/JointState topic.", STR)
    max_staleness: float = param(0.1, "Seconds a joint state may age before observations pause.", FLOAT)
    qos: str = param("sensor_data", "Subscription QoS profile.", STR, QOS_PROFILES)

    def __post_init__(self) -> None:
        _topic("joint_states.topic", self.topic)
        _positive("joint_states.max_staleness", self.max_staleness, allow_inf=True)
        _choice("joint_states.qos", self.qos, QOS_PROFILES)


@dataclasses.dataclass(frozen=True)
class CameraConfig:
    """One camera, fed into the model camera slot ``key``."""

    key: str
    topic: str = param(
        "", "Image topic ('' = /<key>/image_raw, or .../compressed for transport 'compressed').", STR
    )
    transport: str = param(
        "raw",
        "'raw' subscribes to sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8); 'compressed' to "
        "sensor_msgs/CompressedImage (jpeg, png).",
        STR,
        CAMERA_TRANSPORTS,
    )
    max_staleness: float = param(0.2, "Seconds a frame may age before the camera counts as stale.", FLOAT)
    width: int = param(0, "Expected image width in pixels; other sizes are rejected (0 = any).", INT)
    height: int = param(0, "Expected image height in pixels; other sizes are rejected (0 = any).", INT)
    qos: str = param("", "Subscription QoS profile ('' = cameras.qos).", STR, ("",) + QOS_PROFILES)

    def __post_init__(self) -> None:
        prefix = f"cameras.{self.key}."
        if self.key not in CAMERA_KEYS:
            _choice("cameras.keys", self.key, CAMERA_KEYS)
        _choice(prefix + "transport", self.transport, CAMERA_TRANSPORTS)
        if not self.topic:
            suffix = "image_raw/compressed" if self.transport == "compressed" else "image_raw"
            object.__setattr__(self, "topic", f"/{self.key}/{suffix}")
        _topic(prefix + "topic", self.topic)
        _positive(prefix + "max_staleness", self.max_staleness, allow_inf=True)
        for name in ("width", "height"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    prefix + name, f"expected 0 (any) or a size in pixels, got {getattr(self, name)}"
                )
        _choice(prefix + "qos", self.qos, ("",) + QOS_PROFILES)

    @property
    def expected_size(self) -> tuple[int, int] | None:
        """(height, width) when both are set, else None."""
        return (self.height, self.width) if self.height and self.width else None


@dataclasses.dataclass(frozen=True)
class CamerasSection:
    """The cameras, by model camera key (base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb)."""

    keys: tuple[str, ...] = param(
        CAMERA_KEYS,
        "Model camera slots to feed, each configured under cameras.<key>; slots not listed " "are masked.",
        STR_LIST,
    )
    qos: str = param("sensor_data", "Default subscription QoS profile of the cameras.", STR, QOS_PROFILES)
    streams: tuple[CameraConfig, ...] = ()

    def __post_init__(self) -> None:
        for i, key in enumerate(self.keys):
            if key not in CAMERA_KEYS:
                _choice(f"cameras.keys[{i}]", key, CAMERA_KEYS)
        if len(set(self.keys)) != len(self.keys):
            raise ConfigError("cameras.keys", f"camera keys must be unique, got {list(self.keys)}")
        _choice("cameras.qos", self.qos, QOS_PROFILES)
        given = {s.key: s for s in self.streams}
        if len(given) != len(self.streams):
            raise ConfigError("cameras", "a camera is configured twice")
        extra = sorted(set(given) - set(self.keys))
        if extra:
            raise ConfigError(
                f"cameras.{extra[0]}",
                f"camera is configured but not listed in cameras.keys {list(self.keys)}",
            )
        object.__setattr__(self, "streams", tuple(given.get(k) or CameraConfig(key=k) for k in self.keys))

    def __getitem__(self, key: str) -> CameraConfig:
        for stream in self.streams:
            if stream.key == key:
                return stream
        raise KeyError(key)

    def qos_of(self, key: str) -> str:
        return self[key].qos or self.qos


@dataclasses.dataclass(frozen=True)
class SyncSection:
    """When buffered inputs form an observation (see vla_ros.observation.buffers.SyncConfig)."""

    max_skew: float = param(
        0.05, "Seconds allowed between the oldest and newest camera stamp of one observation.", FLOAT
    )
    missing_camera_policy: str = param(
        "mask",
        "A stale or missing camera is masked (as the model allows) or pauses the observations "
        "(and so the robot holds).",
        STR,
        ("mask", "pause"),
    )

    def __post_init__(self) -> None:
        _positive("sync.max_skew", self.max_skew, allow_inf=True)
        _choice("sync.missing_camera_policy", self.missing_camera_policy, ("mask", "pause"))


@dataclasses.dataclass(frozen=True)
class AggregationSection:
    """How overlapping chunks are merged (see vla_ros.actions.aggregation)."""

    mode: str = param(
        "temporal_ensemble",
        "ACT temporal ensembling, newest chunk wins, or a linear crossfade.",
        STR,
        ("temporal_ensemble", "latest", "crossfade"),
    )
    ensemble_m: float = param(
        0.01, "Temporal-ensemble weight decay m in exp(-m * i), i = 0 for the oldest chunk.", FLOAT
    )
    crossfade_overlap: float = param(0.2, "Seconds over which 'crossfade' blends into a new chunk.", FLOAT)

    def __post_init__(self) -> None:
        self.to_aggregation_config()  # its own checks name aggregation.* parameters

    def to_aggregation_config(self):
        from vla_ros.actions.aggregation import AggregationConfig

        return AggregationConfig(
            mode=self.mode, ensemble_m=self.ensemble_m, crossfade_overlap=self.crossfade_overlap
        )


@dataclasses.dataclass(frozen=True)
class OutputSection:
    """What the control timer publishes."""

    trajectory_topic: str = param(
        "/joint_trajectory_controller/joint_trajectory",
        "trajectory_msgs/JointTrajectory topic "
        "(ros2_control joint_trajectory_controller); '' disables it.",
        STR,
    )
    num_points: int = param(5, "Look-ahead points per trajectory, one control period apart.", INT)
    velocities: bool = param(
        True, "Send velocities (finite differences) so the controller splines cubically.", BOOL
    )
    position_topic: str = param(
        "",
        "std_msgs/Float64MultiArray topic for position-group controllers (first point's positions); "
        "'' disables it.",
        STR,
    )
    debug_trajectory_topic: str = param(
        "~/debug/joint_trajectory", "Where the trajectory goes when dry_run is set.", STR
    )
    debug_position_topic: str = param("~/debug/commands", "Where the positions go when dry_run is set.", STR)

    def __post_init__(self) -> None:
        _topic("output.trajectory_topic", self.trajectory_topic, allow_empty=True)
        _topic("output.position_topic", self.position_topic, allow_empty=True)
        _topic("output.debug_trajectory_topic", self.debug_trajectory_topic)
        _topic("output.debug_position_topic", self.debug_position_topic)
        if not self.trajectory_topic and not self.position_topic:
            raise ConfigError(
                "output.trajectory_topic",
                "both output.trajectory_topic and output.position_topic are "
                "empty; the node would publish nothing",
            )
        if not 1 <= self.num_points <= 1000:
            raise ConfigError("output.num_points", f"expected 1..1000, got {self.num_points}")


@dataclasses.dataclass(frozen=True)
class LimitsSection:
    """Per-joint limits, in joint_names order (see vla_ros.actions.limits.JointLimits)."""

    lower: tuple[float, ...] = param(
        (), "Lower position limit per joint (rad or m; -.inf for none).", FLOAT_LIST
    )
    upper: tuple[float, ...] = param(
        (), "Upper position limit per joint (rad or m; .inf for none).", FLOAT_LIST
    )
    max_velocity: tuple[float, ...] = param(
        (),
        "Largest speed between consecutive commands per joint (rad/s or m/s); one value applies to all.",
        FLOAT_LIST,
    )
    max_distance_from_measured: tuple[float, ...] = param(
        (math.inf,),
        "Largest gap between a command and the measured position per joint; one value applies to "
        "all (.inf disables).",
        FLOAT_LIST,
    )


@dataclasses.dataclass(frozen=True)
class WatchdogSection:
    """When the control timer holds instead of executing actions."""

    obs_timeout: float = param(
        0.5, "Hold when no fresh observation could be assembled for this many seconds.", FLOAT
    )
    inference_timeout: float = param(2.0, "Hold when no action chunk arrived for this many seconds.", FLOAT)

    def __post_init__(self) -> None:
        _positive("watchdog.obs_timeout", self.obs_timeout)
        _positive("watchdog.inference_timeout", self.inference_timeout)


@dataclasses.dataclass(frozen=True)
class DiagnosticsSection:
    """The diagnostic_msgs/DiagnosticArray on /diagnostics."""

    rate: float = param(1.0, "Diagnostics publishing rate (Hz).", FLOAT)
    window: float = param(5.0, "Seconds a rejected input keeps the status at WARN.", FLOAT)
    hardware_id: str = param("", "hardware_id of the diagnostic status.", STR)

    def __post_init__(self) -> None:
        _positive("diagnostics.rate", self.rate)
        _positive("diagnostics.window", self.window)


def _choices(cls: type, name: str) -> tuple[str, ...]:
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)


# ---------------------------------------------------------------- node ---


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """Everything the vla_policy node (and the offline replay) needs."""

    checkpoint: str = param("", "Checkpoint or exported artifact directory (with manifest.json).", STR)
    auto_activate: bool = param(False, "Configure and activate the lifecycle node on start-up.", BOOL)
    dry_run: bool = param(
        False, "Publish to the debug topics only (output.debug_*), never to the controller.", BOOL
    )
    control_rate: float = param(50.0, "Rate (Hz) of the control timer that publishes trajectories.", FLOAT)
    joint_names: tuple[str, ...] = param(
        (),
        "Controller joints in the policy's state / action order; matched by name in joint states.",
        STR_LIST,
    )
    executor_threads: int = param(
        1,
        "Threads of the node's executor: 1 = SingleThreadedExecutor, more = MultiThreadedExecutor (one "
        "callback group per camera, joint states, diagnostics/services). Read by main() at start-up.",
        INT,
    )
    control_timer: str = param(
        "dedicated",
        "'dedicated': the control timer runs on its own single-threaded executor in its own thread "
        "(a hidden helper node), independent of sensor callbacks; 'shared': on the node's executor in a "
        "mutually exclusive callback group of its own.",
        STR,
        ("dedicated", "shared"),
    )
    gil_switch_interval: float = param(
        0.001,
        "Python's thread switch interval (s) set at configure (sys.setswitchinterval); a smaller value "
        "bounds how long the control timer waits for the GIL behind other threads. 0 = leave Python's 0.005.",
        FLOAT,
    )
    policy: PolicySection = section(PolicySection, "How to load and run the checkpoint.")
    inference: InferenceSection = section(InferenceSection, "When and where inference runs.")
    prompt: PromptSection = section(PromptSection, "The language instruction.")
    joint_states: JointStatesSection = section(JointStatesSection, "Measured joint positions.")
    cameras: CamerasSection = section(CamerasSection, "Camera inputs.")
    sync: SyncSection = section(SyncSection, "Observation assembly.")
    aggregation: AggregationSection = section(AggregationSection, "Chunk aggregation.")
    output: OutputSection = section(OutputSection, "Published commands.")
    limits: LimitsSection = section(LimitsSection, "Safety limits.")
    watchdog: WatchdogSection = section(WatchdogSection, "Hold conditions.")
    diagnostics: DiagnosticsSection = section(DiagnosticsSection, "Diagnostics.")

    def __post_init__(self) -> None:
        _positive("control_rate", self.control_rate)
        if not 1 <= self.executor_threads <= 64:
            raise ConfigError("executor_threads", f"expected 1..64, got {self.executor_threads}")
        _choice("control_timer", self.control_timer, ("dedicated", "shared"))
        if math.isnan(self.gil_switch_interval) or not 0.0 <= self.gil_switch_interval <= 0.1:
            raise ConfigError(
                "gil_switch_interval",
                f"expected seconds in [0, 0.1] (0 = Python's default), " f"got {self.gil_switch_interval}",
            )
        if not self.joint_names:
            raise ConfigError("joint_names", "expected the controller's joint names, got none")
        for i, name in enumerate(self.joint_names):
            if not name.strip():
                raise ConfigError(f"joint_names[{i}]", "expected a non-empty joint name")
        if len(set(self.joint_names)) != len(self.joint_names):
            repeated = sorted({n for n in self.joint_names if self.joint_names.count(n) > 1})
            raise ConfigError("joint_names", f"joint names must be unique; repeated: {repeated}")
        n = self.num_joints
        # Fill the one-value-for-all shorthands, then let JointLimits check the rest.
        limits = self.limits
        for name in ("max_velocity", "max_distance_from_measured"):
            values = getattr(limits, name)
            if len(values) == 1 and n > 1:
                limits = dataclasses.replace(limits, **{name: values * n})
        for name in ("lower", "upper", "max_velocity"):
            if not getattr(limits, name):
                raise ConfigError(
                    f"limits.{name}", f"required: one value per joint ({n} joints: {list(self.joint_names)})"
                )
        object.__setattr__(self, "limits", limits)
        self.joint_limits()
        mask = self.policy.delta_mask
        if mask and len(mask) != n:
            raise ConfigError("policy.delta_mask", f"expected one entry per joint ({n}), got {len(mask)}")
        if self.policy.action_dims and self.policy.action_dims != n:
            raise ConfigError(
                "policy.action_dims", f"the robot has {n} joints; set 0 or {n}, got {self.policy.action_dims}"
            )
        if self.policy.robot_transform == "aloha" and n != 14:
            raise ConfigError(
                "policy.robot_transform", f"'aloha' needs the 14 ALOHA joints in joint_names, got {n}"
            )
        self.sync_config()

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def control_period(self) -> float:
        return 1.0 / self.control_rate

    # -- the parts, as the ROS-free modules take them ---------------------

    def joint_limits(self):
        from vla_ros.actions.limits import JointLimits

        return JointLimits(
            joint_names=self.joint_names,
            lower=self.limits.lower,
            upper=self.limits.upper,
            max_velocity=self.limits.max_velocity,
            max_distance_from_measured=self.limits.max_distance_from_measured,
        )

    def sync_config(self):
        from vla_ros.observation.buffers import SyncConfig

        return SyncConfig(
            camera_keys=self.cameras.keys,
            max_staleness={s.key: s.max_staleness for s in self.cameras.streams},
            max_skew=self.sync.max_skew,
            joint_max_staleness=self.joint_states.max_staleness,
            missing_camera_policy=self.sync.missing_camera_policy,
        )

    # -- construction ---------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeConfig:
        """Build from the nested ``ros__parameters`` mapping of the node."""
        return _build(cls, data, "")

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> NodeConfig:
        """Build from ROS parameter names and values (``{'limits.lower': [...], ...}``)."""
        return cls.from_dict(unflatten(flat))

    @classmethod
    def from_yaml(cls, path: str | Path, node_name: str = DEFAULT_NODE_NAME) -> NodeConfig:
        """Build from a ROS 2 parameter file (``<node>: ros__parameters: ...``; ``/**`` applies too)."""
        return cls.from_dict(load_parameters_file(path, node_name))

    def to_flat(self) -> dict[str, Any]:
        """ROS parameter name -> value (lists for arrays), the inverse of from_flat."""
        flat: dict[str, Any] = {}
        _flatten_config(self, "", flat)
        return flat


# ------------------------------------------------------ dict <-> config ---


def _param_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "kind" in f.metadata]


def _unknown(name: str, key: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    prefix = name[: len(name) - len(key)]
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known here: {sorted(known)}"
    return ConfigError(name, f"unknown parameter; {hint}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(
            prefix.rstrip(".") or "ros__parameters", f"expected a mapping of parameters, got {data!r}"
        )
    if cls is CamerasSection:
        return _build_cameras(data, prefix)
    fields = {f.name: f for f in _param_fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = prefix + str(key)
        field = fields.get(key)
        if field is None:
            raise _unknown(name, str(key), list(fields))
        if field.metadata["kind"] == SECTION:
            kwargs[key] = _build(field.metadata["cls"], value, name + ".")
        else:
            kwargs[key] = _coerce(field.metadata["kind"], value, name)
    return cls(**kwargs)


def _build_cameras(data: Mapping[str, Any], prefix: str) -> CamerasSection:
    fields = {f.name: f for f in _param_fields(CamerasSection)}
    camera_fields = {f.name: f for f in _param_fields(CameraConfig)}
    kwargs: dict[str, Any] = {}
    streams = []
    for key, value in data.items():
        name = prefix + str(key)
        if key in fields:
            kwargs[key] = _coerce(fields[key].metadata["kind"], value, name)
            continue
        if key not in CAMERA_KEYS:
            raise _unknown(name, str(key), list(fields) + list(CAMERA_KEYS))
        if not isinstance(value, Mapping):
            raise ConfigError(name, f"expected a mapping of camera parameters, got {value!r}")
        camera: dict[str, Any] = {}
        for sub, sub_value in value.items():
            field = camera_fields.get(sub)
            if field is None:
                raise _unknown(f"{name}.{sub}", str(sub), list(camera_fields))
            camera[sub] = _coerce(field.metadata["kind"], sub_value, f"{name}.{sub}")
        streams.append(CameraConfig(key=key, **camera))
    return CamerasSection(streams=tuple(streams), **kwargs)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1, 'a.c': 2} -> {'a': {'b': 1, 'c': 2}}."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        parts = str(name).split(".")
        node = nested
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is a value and also the prefix of '{name}'")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(str(name), "is a value and also a parameter section")
        node[parts[-1]] = value
    return nested


def _flatten_config(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    for field in _param_fields(type(obj)):
        value = getattr(obj, field.name)
        name = prefix + field.name
        if field.metadata["kind"] == SECTION:
            _flatten_config(value, name + ".", out)
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    if isinstance(obj, CamerasSection):
        for stream in obj.streams:
            for field in _param_fields(CameraConfig):
                out[f"{prefix}{stream.key}.{field.name}"] = getattr(stream, field.name)


def load_parameters_file(path: str | Path, node_name: str = DEFAULT_NODE_NAME) -> dict[str, Any]:
    """Return the merged ``ros__parameters`` that a ROS 2 parameter file gives node ``node_name``.

    Sections keyed ``/**`` apply first, then ``<node_name>`` / ``/<node_name>`` /
    ``/<namespace>/<node_name>`` (also written as nested namespace keys).
    """
    import yaml

    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError("params_file", f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("params_file", f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(
            "params_file", f"{path} must hold a mapping of node names, got {type(data).__name__}"
        )
    general: list[Mapping[str, Any]] = []
    specific: list[Mapping[str, Any]] = []

    def visit(mapping: Mapping[str, Any], path_parts: tuple[str, ...]) -> None:
        for key, value in mapping.items():
            if not isinstance(value, Mapping):
                continue
            parts = path_parts + tuple(p for p in str(key).split("/") if p)
            if "ros__parameters" in value:
                params = value["ros__parameters"]
                if not isinstance(params, Mapping):
                    raise ConfigError("ros__parameters", f"{path}: expected a mapping under {key}")
                if parts in (("**",), ("*",)):
                    general.append(params)
                elif parts and parts[-1] == node_name:
                    specific.append(params)
            else:
                visit(value, parts)

    visit(data, ())
    if not general and not specific:
        raise ConfigError("params_file", f"{path} has no '{node_name}: ros__parameters:' section")
    merged: dict[str, Any] = {}
    for params in general + specific:
        _merge(merged, params)
    return merged


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


# ------------------------------------------------------- ROS parameters ---


class ParameterSpec(NamedTuple):
    """One ROS parameter: dotted name, kind (str, bool, int, float, str[], bool[], float[]), default, text."""

    name: str
    kind: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()


def parameter_specs(camera_keys: Sequence[str] = CAMERA_KEYS) -> list[ParameterSpec]:
    """Every parameter of NodeConfig, with per-camera parameters for ``camera_keys``."""
    specs: list[ParameterSpec] = []

    def walk(cls: type, prefix: str) -> None:
        for field in _param_fields(cls):
            kind = field.metadata["kind"]
            if kind == SECTION:
                walk(field.metadata["cls"], prefix + field.name + ".")
                continue
            default = field.default
            specs.append(
                ParameterSpec(
                    prefix + field.name,
                    kind,
                    list(default) if isinstance(default, tuple) else default,
                    field.metadata["doc"],
                    field.metadata["choices"],
                )
            )
        if cls is CamerasSection:
            for key in camera_keys:
                if key not in CAMERA_KEYS:
                    continue  # reported by NodeConfig with the parameter name
                for field in _param_fields(CameraConfig):
                    specs.append(
                        ParameterSpec(
                            f"{prefix}{key}.{field.name}",
                            field.metadata["kind"],
                            field.default,
                            f"Camera {key}: {field.metadata['doc']}",
                            field.metadata["choices"],
                        )
                    )

    walk(NodeConfig, "")
    return specs
