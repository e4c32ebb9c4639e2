"""Kinematics of a planar serial arm of revolute joints: forward, Jacobian, inverse.

The arm lies in the table plane (x forward, y left, metres) with its base at
``base``. Joint i turns link i about the vertical axis; angles add up, so the
end effector's heading is ``phi = q1 + q2 + ... + qn`` and

    x = bx + sum_i l_i cos(q1 + ... + qi),   y = by + sum_i l_i sin(q1 + ... + qi).

Inverse kinematics (`PlanarArm.ik`) solves the 3-link arm in closed form for
a fixed end-effector heading (the wrist point, then the 2-link elbow-up and
elbow-down solutions), tries a sweep of headings and keeps the solution within
the joint limits that is closest to a reference configuration; a damped
least-squares iteration (`ik_dls`) covers other link counts and refines.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math

import numpy as np


def wrap_angle(a: np.ndarray | float) -> np.ndarray | float:
    """Angle(s) wrapped into [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


@dataclasses.dataclass(frozen=True)
class PlanarArm:
    """A planar arm: link lengths (m), base position (m), optional joint limits (rad)."""

    link_lengths: tuple[float, ...]
    base: tuple[float, float] = (0.0, 0.0)
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        lengths = tuple(float(v) for v in self.link_lengths)
        if not lengths or any(not (v > 0 and math.isfinite(v)) for v in lengths):
            raise ValueError(f"link lengths must be finite and > 0, got {list(self.link_lengths)}")
        object.__setattr__(self, "link_lengths", lengths)
        object.__setattr__(self, "base", (float(self.base[0]), float(self.base[1])))
        for name in ("lower", "upper"):
            values = getattr(self, name)
            if values is not None:
                if len(values) != len(lengths):
                    raise ValueError(f"{name} needs one value per link ({len(lengths)}), got {len(values)}")
                object.__setattr__(self, name, tuple(float(v) for v in values))

    @property
    def num_joints(self) -> int:
        return len(self.link_lengths)

    @property
    def reach(self) -> float:
        return float(sum(self.link_lengths))

    # -- forward ----------------------------------------------------------

    def joint_points(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """(n + 1, 2) positions of the base, every joint after it and the end effector."""
        q = np.asarray(q, dtype=np.float64)
        angles = np.cumsum(q)
        steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.asarray(self.link_lengths)[:, None]
        points = np.vstack([np.zeros(2), np.cumsum(steps, axis=0)])
        return points + np.asarray(self.base)

    def fk(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """End-effector pose (x, y, phi) for joint angles q; phi wrapped into [-pi, pi)."""
        q = np.asarray(q, dtype=np.float64)
        x, y = self.joint_points(q)[-1]
        return np.array([x, y, float(wrap_angle(q.sum()))])

    def jacobian(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """(3, n): d(x, y, phi) / dq."""
        q = np.asarray(q, dtype=np.float64)
        angles = np.cumsum(q)
        lengths = np.asarray(self.link_lengths)
        sx = -lengths * np.sin(angles)
        cy = lengths * np.cos(angles)
        # joint j moves every link from j on
        jx = np.cumsum(sx[::-1])[::-1]
        jy = np.cumsum(cy[::-1])[::-1]
        return np.vstack([jx, jy, np.ones_like(q)])

    # -- limits -------------------------------------------------------------

    def within_limits(self, q: np.ndarray, margin: float = 0.0) -> bool:
        if self.lower is not None and np.any(q < np.asarray(self.lower) + margin):
            return False
        if self.upper is not None and np.any(q > np.asarray(self.upper) - margin):
            return False
        return True

    def clip(self, q: np.ndarray) -> np.ndarray:
        lower = -np.inf if self.lower is None else np.asarray(self.lower)
        upper = np.inf if self.upper is None else np.asarray(self.upper)
        return np.clip(q, lower, upper)

    # -- inverse ------------------------------------------------------------

    def ik_heading(self, x: float, y: float, phi: float) -> list[np.ndarray]:
        """Closed-form 3-link solutions reaching (x, y) with heading phi (0, 1 or 2 of them)."""
        if self.num_joints != 3:
            raise ValueError(f"closed-form IK is for 3 links, this arm has {self.num_joints}")
        l1, l2, l3 = self.link_lengths
        wx = x - self.base[0] - l3 * math.cos(phi)
        wy = y - self.base[1] - l3 * math.sin(phi)
        c2 = (wx * wx + wy * wy - l1 * l1 - l2 * l2) / (2 * l1 * l2)
        if c2 > 1.0 + 1e-12 or c2 < -1.0 - 1e-12:
            return []
        c2 = min(1.0, max(-1.0, c2))
        solutions = []
        for s2 in (math.sqrt(1 - c2 * c2), -math.sqrt(1 - c2 * c2)):
            q2 = math.atan2(s2, c2)
            q1 = math.atan2(wy, wx) - math.atan2(l2 * s2, l1 + l2 * c2)
            q1 = float(wrap_angle(q1))
            q3 = float(wrap_angle(phi - q1 - q2))
            solutions.append(np.array([q1, q2, q3]))
            if s2 == 0.0:
                break
        return solutions

    def ik(
        self,
        x: float,
        y: float,
        reference: Sequence[float] | np.ndarray | None = None,
        headings: Sequence[float] | None = None,
        margin: float = 0.05,
    ) -> np.ndarray | None:
        """Joint angles that put the end effector at (x, y), or None when out of reach.

        3 links: closed form over a sweep of headings (default: pointing away
        from the base first, then +-pi/2 around it), keeping solutions at
        least `margin` inside the joint limits, the one closest to
        `reference` (default: zeros; a small cost on turning away from the
        first heading breaks ties). Other link counts: `ik_dls`.
        """
        ref = np.zeros(self.num_joints) if reference is None else np.asarray(reference, dtype=np.float64)
        if self.num_joints != 3:
            q = self.ik_dls(np.array([x, y]), ref)
            return q if np.linalg.norm(self.fk(q)[:2] - [x, y]) < 1e-4 else None
        if headings is None:
            outward = math.atan2(y - self.base[1], x - self.base[0])
            headings = outward + np.concatenate([[0.0], np.ravel(np.column_stack(
                [np.linspace(0.1, np.pi / 2, 16), -np.linspace(0.1, np.pi / 2, 16)]))])
        best, best_cost = None, math.inf
        for phi in headings:
            for q in self.ik_heading(x, y, float(phi)):
                if not self.within_limits(q, margin):
                    continue
                # the joints move from ref to q without wrapping (they have limits)
                cost = float(np.sum((q - ref) ** 2)) + 0.05 * float(wrap_angle(phi - headings[0])) ** 2
                if cost < best_cost:
                    best, best_cost = q, cost
        return best

    def ik_dls(
        self,
        target: Sequence[float] | np.ndarray,
        q0: Sequence[float] | np.ndarray,
        damping: float = 0.05,
        iterations: int = 200,
        tolerance: float = 1e-6,
    ) -> np.ndarray:
        """Damped least squares on the position (x, y) (or the pose (x, y, phi) for 3 values)."""
        target = np.asarray(target, dtype=np.float64)
        rows = target.size
        q = np.asarray(q0, dtype=np.float64).copy()
        for _ in range(iterations):
            pose = self.fk(q)
            error = target - pose[:rows]
            if rows == 3:
                error[2] = float(wrap_angle(error[2]))
            if np.linalg.norm(error) < tolerance:
                break
            jac = self.jacobian(q)[:rows]
            step = jac.T @ np.linalg.solve(jac @ jac.T + damping ** 2 * np.eye(rows), error)
            q = self.clip(q + step)
        return q
