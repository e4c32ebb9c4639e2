"""NodeConfig: the whole node's configuration, built from the nested or flat parameters."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math
from pathlib import Path
import re
from typing import Any

from vla_ros.config.inputs import CamerasSection, JointStatesSection, PromptSection, SyncSection
from vla_ros.config.mapping import _build, _flatten_config, unflatten
from vla_ros.config.outputs import (
    AggregationSection,
    DebugSection,
    DiagnosticsSection,
    LimitsSection,
    OutputSection,
    RTCSection,
    WatchdogSection,
)
from vla_ros.config.params_file import DEFAULT_NODE_NAME, load_parameters_file
from vla_ros.config.policy import InferenceSection, PolicySection, RemoteSection
from vla_ros.config.validate import _choice, _positive, BOOL, FLOAT, INT, param, section, STR, STR_LIST
from vla_ros.errors import ConfigError


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
    remote: RemoteSection = section(RemoteSection, "The policy server (inference.mode: remote).")
    prompt: PromptSection = section(PromptSection, "The language instruction.")
    joint_states: JointStatesSection = section(JointStatesSection, "Measured joint positions.")
    cameras: CamerasSection = section(CamerasSection, "Camera inputs.")
    sync: SyncSection = section(SyncSection, "Observation assembly.")
    aggregation: AggregationSection = section(AggregationSection, "Chunk aggregation.")
    rtc: RTCSection = section(RTCSection, "Real-Time Chunking (aggregation.mode: rtc).")
    output: OutputSection = section(OutputSection, "Published commands.")
    limits: LimitsSection = section(LimitsSection, "Safety limits.")
    watchdog: WatchdogSection = section(WatchdogSection, "Hold conditions.")
    diagnostics: DiagnosticsSection = section(DiagnosticsSection, "Diagnostics.")
    debug: DebugSection = section(DebugSection, "Debug topics: what the policy sees and proposes.")

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
        _refuse_placeholders(data, "")
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


_PLACEHOLDER = re.compile(r"(^|[^A-Za-z])FILL([^A-Za-z]|$)")


def _refuse_placeholders(data: Any, prefix: str) -> None:
    """A value still marked FILL (``vla-ros inspect --write-config``) is a one-line error naming it."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            _refuse_placeholders(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            _refuse_placeholders(value, f"{prefix}[{i}]")
    elif isinstance(data, str) and _PLACEHOLDER.search(data):
        raise ConfigError(
            prefix,
            f"still the placeholder {data!r} from `vla-ros inspect --write-config`; fill in the real value",
        )
