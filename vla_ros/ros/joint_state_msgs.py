"""sensor_msgs JointState -> the configured joints' positions, in the configured order.

Publishers name their joints in any order, often with extra joints (grippers,
wheels) the policy does not use. The node configures the controller's joint
names once; `JointStateMapper` picks those out of every message, caching the
name -> index layout per distinct name list because joint states arrive at
100+ Hz and almost always repeat the same list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sensor_msgs.msg import JointState

from vla_ros.errors import ConfigError, ObservationError


class JointStateMapper:
    """Picks the configured joints, in the configured order, out of JointState messages.

    Joint states arrive at 100+ Hz and publishers almost always send the same
    name list every time, so the name -> index lookup is built once per
    distinct name list and cached.
    """

    # Bounds the cache when a misbehaving publisher varies its name list.
    _MAX_CACHED_LAYOUTS = 16

    def __init__(self, joint_names: Sequence[str]):
        names = tuple(joint_names)
        if not names:
            raise ConfigError("joint_names", "expected at least one joint name, got none")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError("joint_names", f"joint names must be unique; repeated: {duplicates}")
        self._joint_names = names
        # tuple(msg.name) -> index array into msg.position, or the missing names.
        self._layouts: dict[tuple[str, ...], np.ndarray | tuple[str, ...]] = {}

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self._joint_names

    def reset(self) -> None:
        self._layouts.clear()

    def _layout(self, names: tuple[str, ...]) -> np.ndarray | tuple[str, ...]:
        layout = self._layouts.get(names)
        if layout is not None:
            return layout
        position_of: dict[str, int] = {}
        for i, name in enumerate(names):
            position_of.setdefault(name, i)  # first occurrence wins on duplicates
        missing = tuple(n for n in self._joint_names if n not in position_of)
        if missing:
            layout = missing
        else:
            layout = np.array([position_of[n] for n in self._joint_names], dtype=np.intp)
        if len(self._layouts) >= self._MAX_CACHED_LAYOUTS:
            self._layouts.clear()
        self._layouts[names] = layout
        return layout

    def update(self, msg: JointState) -> np.ndarray:
        """Return float64 (D,) positions of the configured joints, in configured order.

        Raises:
            ObservationError: configured joints missing from the message (all
                named), name/position length mismatch, or NaN/inf positions
                (joints named).
        """
        names = tuple(msg.name)
        positions = msg.position
        if len(positions) != len(names):
            raise ObservationError(
                f"joint state has {len(names)} names but {len(positions)} positions; "
                "expected one position per name"
            )
        layout = self._layout(names)
        if isinstance(layout, tuple):
            raise ObservationError(
                f"joint state is missing joints {list(layout)}; it has {list(names)}"
            )
        try:
            values = np.frombuffer(positions, dtype=np.float64)
        except TypeError:
            values = np.asarray(positions, dtype=np.float64)
        selected = values[layout]  # fancy indexing copies out of the message buffer
        finite = np.isfinite(selected)
        if not finite.all():
            bad = [self._joint_names[i] for i in np.flatnonzero(~finite)]
            raise ObservationError(f"joint state has non-finite positions for joints {bad}")
        return selected
