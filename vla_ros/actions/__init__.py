"""From a policy's action chunks to the joint positions the control timer sends.

No ROS here: aggregation (merging overlapping chunks), limits (safety
filter), trajectory (look-ahead points) and watchdog (when to hold).
"""

from vla_ros.actions.aggregation import (
    AggregationConfig,
    ChunkAggregator,
    Crossfade,
    LatestChunk,
    make_aggregator,
    RealTimeChunks,
    TemporalEnsemble,
)
from vla_ros.actions.limits import JointLimits, SafetyFilter, SafetyReport
from vla_ros.actions.trajectory import (
    ActionSpace,
    hold_plan,
    plan_points,
    prepare_chunk,
    to_absolute,
    TrajectoryPlan,
)
from vla_ros.actions.watchdog import Watchdog, WatchdogStatus

__all__ = [
    "ActionSpace",
    "AggregationConfig",
    "ChunkAggregator",
    "Crossfade",
    "JointLimits",
    "LatestChunk",
    "RealTimeChunks",
    "SafetyFilter",
    "SafetyReport",
    "TemporalEnsemble",
    "TrajectoryPlan",
    "Watchdog",
    "WatchdogStatus",
    "hold_plan",
    "make_aggregator",
    "plan_points",
    "prepare_chunk",
    "to_absolute",
]
