"""The output and safety sections: aggregation, rtc, output, limits, watchdog, diagnostics, debug."""

from __future__ import annotations

import dataclasses
import math

from vla_ros.config.validate import _positive, _topic, BOOL, FLOAT, FLOAT_LIST, INT, param, STR
from vla_ros.errors import ConfigError
from vla_ros.types import RTC_JACOBIANS, RTC_MODES, RTC_SCHEDULES, RTCSettings


@dataclasses.dataclass(frozen=True)
class AggregationSection:
    """How overlapping chunks are merged (see vla_ros.actions.aggregation)."""

    mode: str = param(
        "temporal_ensemble",
        "ACT temporal ensembling, newest chunk wins, a linear crossfade, or Real-Time Chunking "
        "(rtc.*: the next chunk is guided toward the current plan and takes over after the inference delay).",
        STR,
        ("temporal_ensemble", "latest", "crossfade", "rtc"),
    )
    ensemble_m: float = param(
        0.01,
        "Temporal-ensemble weight decay m: a chunk weighs exp(-m * age), its age in control periods "
        "after the oldest chunk covering the same instant (ACT's m).",
        FLOAT,
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
class RTCSection:
    """Real-Time Chunking, used with aggregation.mode: rtc (docs/control.md, "Real-Time Chunking").

    The first five are ``vla_ros.types.RTCSettings`` (LeRobot 0.6.1's
    defaults), checked there; the last two say how the node picks the
    inference delay d.
    """

    execution_horizon: int = param(
        10,
        "End of the guided region, in chunk rows (LeRobot's execution_horizon): the new chunk's rows from "
        "there on are not pulled toward the current plan.",
        INT,
    )
    schedule: str = param(
        "linear",
        "Guidance weight of the rows between the first d (weight 1) and execution_horizon.",
        STR,
        RTC_SCHEDULES,
    )
    max_guidance_weight: float = param(
        10.0, "Clip of the per-step guidance weight (>= 0; 0 = unguided).", FLOAT
    )
    mode: str = param(
        "guided",
        "'guided': guidance at every denoising step (the paper, LeRobot); 'trained': the first d rows "
        "clamped to the current plan, for checkpoints trained with training-time RTC.",
        STR,
        RTC_MODES,
    )
    jacobian: str = param(
        "identity",
        "'identity': LeRobot's guidance, no backward pass; 'vjp': the paper's vector-Jacobian product "
        "(reference engine only).",
        STR,
        RTC_JACOBIANS,
    )
    latency_percentile: float = param(
        95.0,
        "Percentile of the recent inference latencies (observation to chunk) that sets d, in (0, 100].",
        FLOAT,
    )
    delay_margin: int = param(
        1, "Whole actions added to d = ceil(latency percentile / action period); >= 0.", INT
    )

    def __post_init__(self) -> None:
        self.to_settings()  # RTCSettings' own checks name rtc.* parameters
        p = self.latency_percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 100.0:
            raise ConfigError("rtc.latency_percentile", f"expected a percentile in (0, 100], got {p!r}")
        m = self.delay_margin
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ConfigError("rtc.delay_margin", f"expected a whole number of actions >= 0, got {m!r}")

    def to_settings(self) -> RTCSettings:
        """The ``RTCSettings`` every guided inference carries."""
        return RTCSettings(
            execution_horizon=self.execution_horizon,
            schedule=self.schedule,
            max_guidance_weight=self.max_guidance_weight,
            mode=self.mode,
            jacobian=self.jacobian,
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
        True, "Send velocities (min-mod of the slopes: monotone cubic splines, no overshoot).", BOOL
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


@dataclasses.dataclass(frozen=True)
class DebugSection:
    """What the node shows of the policy's view, for checking a robot's wiring."""

    action_chunk: bool = param(
        True,
        "Publish every new chunk on ~/debug/action_chunk (JointTrajectory stamped with its observation "
        "time, all points, absolute positions in robot units).",
        BOOL,
    )
    policy_images: bool = param(
        False,
        "Publish the letterboxed model input images on ~/debug/policy_images (sensor_msgs/Image, "
        "frame_id = camera slot).",
        BOOL,
    )
    policy_images_rate: float = param(
        1.0, "Largest rate of ~/debug/policy_images per camera slot (Hz).", FLOAT
    )

    def __post_init__(self) -> None:
        _positive("debug.policy_images_rate", self.policy_images_rate)
