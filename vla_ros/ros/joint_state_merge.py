"""Merging JointState messages that each carry only some of the joints.

Robots often publish a gripper's joint from its own driver beside the arm
controller's joints, both on /joint_states; robot_state_publisher merges such
messages by name, and with `joint_states.merge_partial` so does the node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math

import numpy as np
from sensor_msgs.msg import JointState

from vla_ros.errors import ConfigError, ObservationError
from vla_ros.ros.builtin_time import stamp_to_seconds
from vla_ros.ros.joint_state_msgs import JointStateMapper


class JointStateMerger:
    """Folds (possibly partial) JointState messages into one state of the configured joints.

    Each message updates the joints it names. A state exists once every joint
    has been heard, and is refused while any joint was last heard more than
    `max_skew` seconds before the newest message: a silent driver must pause
    the policy, not freeze one joint at its last value. The returned stamp never
    goes backwards, so messages from two publishers with slightly different
    clocks are not refused as out of order.
    """

    def __init__(self, joint_names: Sequence[str], max_skew: float = math.inf):
        self.joint_names = tuple(joint_names)
        if not self.joint_names:
            raise ConfigError("joint_names", "expected at least one joint name, got none")
        if not max_skew > 0.0:
            raise ConfigError("joint_states.max_staleness", f"expected seconds > 0, got {max_skew}")
        self.max_skew = max_skew
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self._layouts: dict[tuple[str, ...], tuple[list[int], list[int]]] = {}
        self.reset()

    def reset(self) -> None:
        self._positions = np.full(len(self.joint_names), np.nan)
        self._heard = np.full(len(self.joint_names), -np.inf)
        self._stamp = -np.inf

    def _layout(self, names: tuple[str, ...]) -> tuple[list[int], list[int]]:
        """(our joint indices, their message indices) for a name list; each publisher's is cached."""
        layout = self._layouts.get(names)
        if layout is None:
            ours, theirs = [], []
            for j, name in enumerate(names):
                i = self._index.get(name)
                if i is not None and i not in ours:  # first occurrence wins on duplicates
                    ours.append(i)
                    theirs.append(j)
            if len(self._layouts) >= 16:  # a publisher that varies its name list
                self._layouts.clear()
            layout = self._layouts[names] = (ours, theirs)
        return layout

    def update(self, msg: JointState, stamp: float) -> tuple[np.ndarray, float]:
        """Positions (D,) in joint_names order and the state's stamp, after folding in `msg` stamped `stamp`.

        Raises:
            ObservationError: name/position length mismatch, no configured joint
                in the message, non-finite positions, joints not heard yet, or
                joints last heard more than max_skew before the newest message
                (all naming the joints).
        """
        names = list(msg.name)
        if len(msg.position) != len(names):
            raise ObservationError(
                f"joint state has {len(names)} names but {len(msg.position)} positions; "
                "expected one position per name"
            )
        ours, theirs = self._layout(tuple(names))
        if not ours:
            raise ObservationError(f"joint state names none of the configured joints; it has {names}")
        values = np.asarray(msg.position, dtype=np.float64)[theirs]
        finite = np.isfinite(values)
        if not finite.all():
            bad = [self.joint_names[ours[k]] for k in np.flatnonzero(~finite)]
            raise ObservationError(f"joint state has non-finite positions for joints {bad}")
        self._positions[ours] = values
        self._heard[ours] = stamp
        self._stamp = max(self._stamp, stamp)
        unheard = np.isneginf(self._heard)
        if unheard.any():
            missing = [self.joint_names[i] for i in np.flatnonzero(unheard)]
            raise ObservationError(f"no position yet for joints {missing} (joint_states.merge_partial)")
        lag = self._stamp - self._heard
        stale = lag > self.max_skew
        if stale.any():
            late = {self.joint_names[i]: round(float(lag[i]), 3) for i in np.flatnonzero(stale)}
            raise ObservationError(
                f"joints last heard too long before the newest joint state (seconds): {late}; "
                f"joint_states.max_staleness is {self.max_skew}"
            )
        return self._positions.copy(), float(self._stamp)


def joint_state_reader(
    joint_names: Sequence[str], merge_partial: bool, max_staleness: float = math.inf
) -> Callable[[JointState, float], tuple[np.ndarray, float]]:
    """`read(msg, receipt_time) -> (positions, stamp)` as `joint_states.merge_partial` asks.

    Strict: every message must name every joint; the stamp is the header's (0
    when unset). Merging: see JointStateMerger; an unset header stamp counts as
    the receipt time.
    """
    if not merge_partial:
        mapper = JointStateMapper(joint_names)

        def read_strict(msg: JointState, receipt_time: float) -> tuple[np.ndarray, float]:
            return mapper.update(msg), stamp_to_seconds(msg.header.stamp)

        return read_strict
    merger = JointStateMerger(joint_names, max_staleness)

    def read_merged(msg: JointState, receipt_time: float) -> tuple[np.ndarray, float]:
        stamp = stamp_to_seconds(msg.header.stamp)
        return merger.update(msg, stamp if stamp > 0.0 else receipt_time)

    return read_merged
