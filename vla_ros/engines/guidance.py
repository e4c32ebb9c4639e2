"""Real-Time Chunking in the model's space: the soft mask, the guidance weights, the guided velocity.

Black, Galliker, Levine, "Real-Time Execution of Action Chunking Flow Policies"
(2025): while the current chunk executes, the next one is denoised with a pull
toward the actions the robot will still take from the current one. The
conventions are LeRobot 0.6.1's (`policies/rtc/`, docs/reference/lerobot-rtc.md):
flow time t runs from 1 (noise) to 0 (actions), the action estimate at t is
x - t * v, and one guided Euler step is

    v_g = v - g_k * W * (Y - (x - t * v)) * J      x <- x + dt * v_g

with Y the previous chunk's leftover in normalized model units (zero-padded to
the chunk's (H, A)), W the soft mask over the rows (1 for the first d rows,
decaying to 0 at the end of the guided region), g_k the step's guidance weight
and J the Jacobian of the estimate. LeRobot takes J as the identity (no
backward pass: elementwise work on top of the unguided velocity, so it is as
cheap and as capturable as the unguided loop); the paper uses the true
vector-Jacobian product through the denoiser (`jacobian: vjp`).

"trained" mode (training-time RTC, Black et al. 2025b) needs no guidance: the
first d rows of x are set to Y before every step and enter the denoiser as
clean (time 0), and the result's first d rows are Y.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vla_ros.types import RTCSettings


def prefix_weights(schedule: str, delay: int, end: int, total: int) -> np.ndarray:
    """The soft mask W (total,) float32, as LeRobot's `get_prefix_weights(delay, end, total)`.

    start = min(delay, end) rows of weight 1, then (schedule "linear") the ramp
    (end - i) / (end - start + 1) down to row end - 1, then zeros; "exp" maps the
    ramp l to l (e^l - 1) / (e - 1); "ones" is 1 up to `end`; "zeros" is 1 for the
    first `start` rows only. An `end` past `total` stretches the ramp to the
    chunk's end (LeRobot's behaviour).
    """
    start = min(delay, end)
    if schedule == "zeros":
        return (np.arange(total) < start).astype(np.float32)
    if schedule == "ones":
        return (np.arange(total) < end).astype(np.float32)
    if schedule not in ("linear", "exp"):
        raise ValueError(f"unknown RTC schedule {schedule!r}")
    ramp_rows = max(total - max(total - end, 0) - start, 0)
    ramp = np.linspace(1.0, 0.0, ramp_rows + 2, dtype=np.float32)[1:-1]
    if schedule == "exp":
        ramp = (ramp * np.expm1(ramp) / np.float32(math.e - 1.0)).astype(np.float32)
    ones = np.ones(min(start, total), dtype=np.float32)
    weights = np.concatenate([ones, ramp, np.zeros(max(total - end, 0), dtype=np.float32)])
    return weights[:total]


def guidance_weight(t: float, max_weight: float) -> float:
    """g at flow time t: min((tau^2 + (1 - tau)^2) / (tau (1 - tau)), max), tau = 1 - t.

    tau = 0 (the first step, pure noise) gives the maximum, tau = 1 gives 0
    (LeRobot's nan_to_num of its 0 * inf), as in LeRobot 0.6.1.
    """
    tau = 1.0 - t
    if max_weight == 0.0 or tau >= 1.0:
        return 0.0
    if tau <= 0.0:
        return float(max_weight)
    return min((tau * tau + (1.0 - tau) ** 2) / (tau * (1.0 - tau)), float(max_weight))


@dataclasses.dataclass(frozen=True, eq=False)
class ModelGuidance:
    """One inference's guidance in the model's units, ready for a suffix runtime.

    target: float32 (H, A), the previous chunk normalized and zero-padded
        (rows past the leftover and action dims past the robot's are 0; only
        the first `guided_rows` rows have weight).
    weights: float32 (H,), the soft mask.
    delay: d; "trained" mode clamps the first d rows (at most `guided_rows`).
    guided_rows: rows of the leftover that were given (the guided region
        ends at min(execution_horizon, guided_rows)).
    """

    target: np.ndarray
    weights: np.ndarray
    delay: int
    guided_rows: int
    settings: RTCSettings

    @classmethod
    def build(cls, previous: np.ndarray, delay: int, settings: RTCSettings, horizon: int,
              action_dim: int) -> "ModelGuidance":
        """From the normalized leftover (K, D): K rows from the new observation's time on, D <= A dims."""
        previous = np.asarray(previous, dtype=np.float32)
        rows = min(previous.shape[0], horizon)
        if previous.shape[1] > action_dim:
            raise ValueError(f"the previous chunk has {previous.shape[1]} dims, the model {action_dim}")
        target = np.zeros((horizon, action_dim), dtype=np.float32)
        target[:rows, : previous.shape[1]] = previous[:rows]
        end = min(settings.execution_horizon, rows)  # LeRobot: E = min(E, rows given)
        weights = prefix_weights(settings.schedule, delay, end, horizon)
        return cls(target, weights, int(delay), rows, settings)

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def clamped_rows(self) -> int:
        """Rows that "trained" mode sets to the target (never past the leftover given)."""
        return min(self.delay, self.guided_rows)

    def step_weights(self, times: list[float]) -> np.ndarray:
        """g_k for each Euler step's t (float32 (steps,))."""
        gmax = self.settings.max_guidance_weight
        return np.array([guidance_weight(t, gmax) for t in times], dtype=np.float32)

    def describe(self) -> dict:
        s = self.settings
        return {"mode": s.mode, "delay": self.delay, "guided_rows": self.guided_rows,
                "execution_horizon": s.execution_horizon, "schedule": s.schedule,
                "max_guidance_weight": s.max_guidance_weight, "jacobian": s.jacobian}


def guided_velocity(v, x, t, target, weights, gain):
    """LeRobot's guided velocity with the identity Jacobian: v - g W (Y - (x - t v)); torch tensors.

    `weights` broadcasts over the action dims ((1, H, 1)); `gain` is g (a
    float or a 0-d tensor). With g = 0 the result is v exactly.
    """
    return v - gain * weights * (target - (x - t * v))


def guided_euler(velocity, x, times: list[float], dt: float, guidance: ModelGuidance):
    """The guided (or, mode "trained", clamped) Euler loop over any denoiser; torch tensors.

    velocity(x, t) -> v for x (1, H, A) and t (1,) (or per token (1, H) in
    "trained" mode). Used by the eager engines; the static suffix runs the same
    arithmetic over its buffers (suffix.py).
    """
    import torch

    device = x.device
    target = torch.from_numpy(guidance.target)[None].to(device)
    if guidance.mode == "trained":
        clean = (torch.arange(x.shape[1], device=device) < guidance.clamped_rows)[None]  # (1, H)
        for t in times:
            x = torch.where(clean[..., None], target, x)
            x = x + dt * velocity(x, torch.where(clean, 0.0, t).float())
        return torch.where(clean[..., None], target, x)
    weights = torch.from_numpy(guidance.weights)[None, :, None].to(device)
    gains = guidance.step_weights(times)
    for t, gain in zip(times, gains.tolist()):
        t_batch = torch.full((1,), t, dtype=torch.float32, device=device)
        if guidance.settings.jacobian == "vjp":
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                v = velocity(x_in, t_batch)
                estimate = x_in - t * v
                error = (weights * (target - estimate)).detach()
                (correction,) = torch.autograd.grad(estimate, x_in, grad_outputs=error)
            v = v.detach() - gain * correction
        else:
            v = guided_velocity(velocity(x, t_batch), x, t, target, weights, gain)
        x = x + dt * v
    return x
