"""The policy node's core, without ROS: inputs in, trajectory plans out, on any clock.

``PolicyController`` owns the observation buffers, the chunk aggregator, the
safety filter and the watchdog, and decides when the next inference starts.
The ROS node feeds it from subscription callbacks and its control timer; the
rosbag replay feeds it from recorded messages with simulated time. All times
are float seconds on one clock (message stamps and ``now`` alike).

Driving it (one inference in flight at a time)::

    ctl = PolicyController(config)                     # config: vla_ros.config.NodeConfig
    ctl.on_joint_state(positions, stamp, receipt_time) # (D,) in joint_names order
    ctl.on_image(key, rgb, stamp, receipt_time)        # uint8 (H, W, 3) RGB
    ctl.on_prompt(text)
    obs = ctl.next_request(now)     # a RawObservation when an inference is due, else None
    ...                             # run the policy on obs (any thread, any process)
    ctl.on_chunk(chunk, now)        # or ctl.on_inference_failed(reason, now)
    plan = ctl.tick(now)            # every control period: TrajectoryPlan (or None before
                                    # the first joint state)
    ctl.status(now)                 # ControllerStatus for diagnostics

Inputs that a caller rejects before they reach the controller (an image that
cannot be decoded, a joint state without the configured joints) are reported
with ``on_input_error`` so that diagnostics show them too.

Threading: the on_* methods, next_request and tick may be called from
different threads. The control path (``tick``) takes one lock that the chunk
path holds only while merging a chunk; Python-heavy work (image decoding,
preprocessing, inference) happens in the callers' threads, never in ``tick``,
which costs a handful of numpy calls on (points x joints) arrays.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
import dataclasses
import math
import threading
import types

import numpy as np

from vla_ros.actions.limits import SafetyFilter
from vla_ros.actions.trajectory import ActionSpace, hold_plan, plan_points, prepare_chunk, TrajectoryPlan
from vla_ros.actions.watchdog import Watchdog
from vla_ros.errors import ObservationError
from vla_ros.observation.buffers import AssemblyResult, JOINT_STATE, ObservationAssembler
from vla_ros.types import ActionChunk, RawObservation

PROMPT = "prompt"
LATENCY_WINDOW = 100


@dataclasses.dataclass
class _Event:
    """A kind of rejected (or suspicious) input: how often, when last, and why."""

    count: int = 0
    last_time: float = -math.inf
    detail: str = ""
    rejected: bool = True


@dataclasses.dataclass(frozen=True)
class _Pending:
    timestamp: float
    state: np.ndarray
    requested_at: float


@dataclasses.dataclass(frozen=True)
class ControllerStatus:
    """A diagnostics snapshot.

    level: 'OK', 'WARN' or 'ERROR'; message: why (empty when OK).
    holding: the last tick sent a hold; hold_reason says why.
    values: ordered key -> value pairs for the DiagnosticStatus.
    """

    level: str
    message: str
    holding: bool
    hold_reason: str
    paused: bool
    values: Mapping[str, object]


class PeriodRecorder:
    """Deviation of successive tick times from the nominal period, in a ring buffer.

    ``record`` is a few float operations (it runs on the control path);
    ``stats`` computes p50 / p99 / max over the last ``size`` periods.
    """

    def __init__(self, period: float, size: int = 1000):
        self.period = float(period)
        self._deviation = np.zeros(size)
        self._count = 0
        self._last: float | None = None
        self._last_sim: float | None = None

    def reset(self) -> None:
        self._count = 0
        self._last = None
        self._last_sim = None

    def record(self, t: float, sim_time: float | None = None) -> None:
        """Record a tick at wall time `t`.

        Under a simulated clock pass its time too: a timer driven by /clock stops
        while the clock stands still (before playback, at a pause) and jumps with
        it, and those gaps say nothing about the control thread's jitter, so a
        tick whose simulated period is off by more than half a period is not
        counted.
        """
        steady = sim_time is None or (
            self._last_sim is not None and abs(sim_time - self._last_sim - self.period) <= 0.5 * self.period
        )
        if self._last is not None and steady:
            self._deviation[self._count % self._deviation.shape[0]] = abs(t - self._last - self.period)
            self._count += 1
        self._last = t
        self._last_sim = sim_time

    @property
    def count(self) -> int:
        return self._count

    def stats(self) -> dict[str, float]:
        """{'p50_ms', 'p99_ms', 'max_ms', 'periods'} over the buffered periods (NaN when none)."""
        n = min(self._count, self._deviation.shape[0])
        if n == 0:
            return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan, "periods": 0}
        d = self._deviation[:n] * 1e3
        return {
            "p50_ms": float(np.percentile(d, 50)),
            "p99_ms": float(np.percentile(d, 99)),
            "max_ms": float(d.max()),
            "periods": int(n),
        }


def _percentiles(values: collections.deque) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    arr = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


class PolicyController:
    """Observation assembly, inference triggering, chunk execution and safety for one robot.

    Life cycle: ``activate(now)`` starts from a clean slate (no chunks, no
    previous command, watchdog waiting); ``pause()`` / ``resume()`` hold and
    release the robot without dropping the sensor buffers; ``hold_plan(reason)``
    gives one hold at the last command (e.g. when the node deactivates).
    """

    def __init__(self, config):
        self.config = config
        self._period = config.control_period
        self._num_points = config.output.num_points
        self._num_joints = config.num_joints
        self._action_space = ActionSpace.parse(config.policy.action_space, "policy.action_space")
        self._delta_mask = (
            np.array(config.policy.delta_mask, dtype=bool) if config.policy.delta_mask else None
        )
        self._expected_size = {s.key: s.expected_size for s in config.cameras.streams}
        self._assembler = ObservationAssembler(config.sync_config())
        self._aggregator = config.aggregation.to_aggregation_config().build(config.policy.action_period)
        self._safety = SafetyFilter(config.joint_limits())
        self._watchdog = Watchdog(config.watchdog.obs_timeout, config.watchdog.inference_timeout)

        self._lock = threading.Lock()  # aggregator, safety filter, watchdog, trigger state, measured
        self._events_lock = threading.Lock()
        self._events: dict[str, _Event] = {}
        self._measured: np.ndarray | None = None
        self._measured_time = -math.inf
        self._paused = False
        self._pending: _Pending | None = None
        self._last_request: float | None = None
        self._last_failure: float | None = None
        self._last_failure_reason = ""
        self._last_chunk_obs: float | None = None
        self._last_chunk_duration = 0.0
        self._last_assembly: AssemblyResult | None = None
        self._last_obs_time: float | None = None
        self._last_plan_hold = True
        self._last_hold_reason = "not started"
        self._last_clamped: tuple[str, ...] = ()
        self._latency: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        self._compute: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        self._counts = collections.Counter()
        if config.prompt.default:
            self._assembler.update_prompt(config.prompt.default)

    # ---------------------------------------------------------- inputs ---

    def on_image(self, key: str, rgb: np.ndarray, stamp: float, receipt_time: float) -> bool:
        """Buffer a camera frame (uint8 (H, W, 3) RGB); False if it was rejected.

        A zero stamp is replaced by ``receipt_time`` (and reported); a frame
        older than the buffered one, of the wrong size (cameras.<key>.width /
        height) or not an RGB array is rejected and reported.
        """
        expected = self._expected_size.get(key)
        if expected is not None and getattr(rgb, "shape", (0, 0))[:2] != expected:
            shape = getattr(rgb, "shape", ())
            self._event(
                f"wrong_size:{key}",
                receipt_time,
                f"camera {key}: image is {shape[1] if len(shape) > 1 else '?'}x{shape[0] if shape else '?'}, "
                f"expected {expected[1]}x{expected[0]} (cameras.{key}.width/height)",
            )
            return False
        try:
            accepted = self._assembler.update_image(key, rgb, stamp, receipt_time)
        except ObservationError as exc:
            self._event(f"invalid_image:{key}", receipt_time, str(exc))
            return False
        self._report_stamp(key, f"camera {key}", "frame", stamp, receipt_time, accepted)
        return accepted

    def on_joint_state(self, positions: np.ndarray, stamp: float, receipt_time: float) -> bool:
        """Buffer joint positions (D,) in joint_names order; False if rejected (NaN, size, order)."""
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (self._num_joints,):
            self._event(
                f"invalid_state:{JOINT_STATE}",
                receipt_time,
                f"joint state has {positions.size} positions, expected {self._num_joints}",
            )
            return False
        try:
            accepted = self._assembler.update_state(positions, stamp, receipt_time)
        except ObservationError as exc:
            self._event(f"invalid_state:{JOINT_STATE}", receipt_time, str(exc))
            return False
        self._report_stamp(JOINT_STATE, "joint state", "one", stamp, receipt_time, accepted)
        if not accepted:
            return False
        with self._lock:
            self._measured = positions
            self._measured_time = receipt_time
        return True

    def _report_stamp(
        self, source: str, label: str, buffered: str, stamp: float, receipt_time: float, accepted: bool
    ) -> None:
        # After a buffer update: a zero header stamp (the receipt time stood
        # in) and a message older than the ``buffered`` one (rejected).
        if not stamp > 0.0:
            self._event(
                f"zero_stamp:{source}",
                receipt_time,
                f"{label}: header stamp is zero; using the receipt time",
                rejected=False,
            )
        if not accepted:
            self._event(
                f"out_of_order:{source}",
                receipt_time,
                f"{label}: stamp {stamp:.3f} is older than the buffered {buffered}",
            )

    def on_prompt(self, text: str, receipt_time: float | None = None) -> bool:
        """Set the instruction; an empty one is rejected (the old prompt stays)."""
        if self._assembler.update_prompt(text):
            return True
        self._event(
            f"empty:{PROMPT}",
            -math.inf if receipt_time is None else receipt_time,
            "instruction is empty; keeping the previous prompt",
        )
        return False

    def on_input_error(self, source: str, detail: str, receipt_time: float, reason: str = "invalid") -> None:
        """Report an input the caller could not convert (source: camera key, 'joint_state', 'prompt')."""
        self._event(f"{reason}:{source}", receipt_time, detail)

    # ------------------------------------------------------- inference ---

    def next_request(self, now: float) -> RawObservation | None:
        """Return the observation to run the policy on now, or None when no inference is due.

        Call it often (the worker polls it every few ms): each call also
        assembles the current observation, which keeps the watchdog's view of
        observation freshness up to date. An inference is due when none is in
        flight, the node is not paused, the retry delay after a failure has
        passed, and either no chunk covers the future, or (trigger
        'threshold') the newest chunk is executed past execute_threshold, or
        (trigger 'rate') 1 / rate seconds passed since the last request.
        """
        result = self._assembler.assemble(now)
        obs = result.observation
        with self._lock:
            self._last_assembly = result
            if obs is not None:
                self._last_obs_time = obs.timestamp
                self._watchdog.update_observation(obs.timestamp)
            if obs is None or self._paused or self._pending is not None or not self._due(now):
                return None
            self._pending = _Pending(obs.timestamp, obs.state, now)
            self._last_request = now
            self._counts["requests"] += 1
        return obs

    def _due(self, now: float) -> bool:
        cfg = self.config.inference
        if self._last_failure is not None and now - self._last_failure < cfg.retry_delay:
            return False
        if self._last_chunk_obs is None or self._aggregator.remaining(now) <= 0.0:
            return True
        if cfg.trigger == "rate":
            return self._last_request is None or now - self._last_request >= 1.0 / cfg.rate
        executed = (now - self._last_chunk_obs) / self._last_chunk_duration
        return executed >= cfg.execute_threshold

    def on_chunk(self, chunk: ActionChunk, now: float) -> bool:
        """Merge a chunk computed from the observation of ``next_request``; False if nothing of it is used.

        Actions are in robot units, (H, D) with D the joint count; 'delta'
        actions become absolute with the state of that observation; actions
        whose time (obs_time + k / action_rate) has passed are skipped.
        """
        actions = np.asarray(chunk.actions)
        with self._lock:
            pending, self._pending = self._pending, None
            if actions.ndim != 2 or actions.shape[1] != self._num_joints or actions.shape[0] == 0:
                self._fail(
                    f"policy returned actions of shape {actions.shape}, expected (H, {self._num_joints})", now
                )
                return False
            state = None
            if pending is not None and abs(pending.timestamp - chunk.timestamp) < 1e-9:
                state = pending.state
            if self._action_space is ActionSpace.DELTA and state is None:
                self._fail("delta actions arrived without the state of their observation", now)
                return False
            prepared = prepare_chunk(chunk, self._action_space, state, self._delta_mask)
            ignored, non_finite = self._aggregator.ignored_chunks, self._aggregator.non_finite_chunks
            accepted = self._aggregator.update(prepared, now)
            self._latency.append(now - chunk.timestamp)
            if "total" in chunk.timings:
                self._compute.append(float(chunk.timings["total"]))
            if accepted:
                self._counts["chunks"] += 1
                self._last_chunk_obs = float(chunk.timestamp)
                self._last_chunk_duration = actions.shape[0] * self._aggregator.dt
                self._last_failure = None
                self._watchdog.update_chunk(now, self._aggregator.horizon_end())
                return True
            if self._aggregator.non_finite_chunks > non_finite:
                self._fail("policy returned non-finite actions", now)
            elif self._aggregator.ignored_chunks > ignored:
                self._counts["late_chunks"] += 1
                self._event(
                    "late:chunk",
                    now,
                    f"chunk arrived {now - chunk.timestamp:.3f} s after its observation, "
                    "after its last action; inference is too slow for the chunk length",
                    rejected=False,
                )
            return False

    def on_inference_failed(self, reason: str, now: float) -> None:
        """Record that the pending inference failed; the robot holds until a chunk arrives again."""
        with self._lock:
            self._pending = None
            self._fail(reason, now)

    def _fail(self, reason: str, now: float) -> None:
        self._counts["failures"] += 1
        self._last_failure = now
        self._last_failure_reason = reason
        self._watchdog.inference_failed(reason)

    @property
    def inference_pending(self) -> bool:
        with self._lock:
            return self._pending is not None

    # --------------------------------------------------------- control ---

    def tick(self, now: float) -> TrajectoryPlan | None:
        """Return the trajectory to send now: the next output.num_points points, or a hold.

        None until a joint state (or a previous command) gives a position to hold at.
        """
        with self._lock:
            measured = self._measured
            if self._safety.last_command is None and measured is None:
                self._last_plan_hold, self._last_hold_reason = True, "no joint state received yet"
                return None
            if self._paused:
                return self._hold("paused (call ~/resume)")
            status = self._watchdog.status(now)
            if status.hold:
                reason = status.reason
                assembly = self._last_assembly
                if assembly is not None and not assembly.ok and "observation" in reason:
                    reason += f": {assembly.reason}"
                return self._hold(reason)
            plan = plan_points(
                self._aggregator, self._safety, now, self._period, self._num_points, measured, None
            )
            self._last_plan_hold = plan.is_hold
            self._last_hold_reason = plan.reason
            self._counts["holds" if plan.is_hold else "plans"] += 1
            return plan

    def _hold(self, reason: str) -> TrajectoryPlan:
        position = self._safety.last_command
        if position is None:
            position = self._measured
        plan = hold_plan(position, self._period, self._num_points, reason)
        self._safety.commit(plan.positions[0])
        self._last_plan_hold, self._last_hold_reason = True, reason
        self._counts["holds"] += 1
        return plan

    def hold_plan(self, reason: str) -> TrajectoryPlan | None:
        """Return a hold at the last command (or measured position); the schedule is not touched."""
        with self._lock:
            if self._safety.last_command is None and self._measured is None:
                return None
            return self._hold(reason)

    def pause(self) -> bool:
        """Hold from the next tick on; False if already paused."""
        with self._lock:
            was, self._paused = self._paused, True
            return not was

    def resume(self, now: float) -> bool:
        """Start executing again from fresh chunks only; False if not paused."""
        with self._lock:
            if not self._paused:
                return False
            self._paused = False
            self._reset_execution()
            return True

    @property
    def paused(self) -> bool:
        return self._paused

    def activate(self, now: float) -> None:
        """Start from a clean slate: no chunks, no previous command, no pending inference."""
        with self._lock:
            self._paused = False
            self._reset_execution()
            self._safety.reset()

    def _reset_execution(self) -> None:
        self._aggregator.reset()
        self._watchdog.reset()
        self._pending = None
        self._last_request = None
        self._last_failure = None
        self._last_chunk_obs = None

    # ----------------------------------------------------- diagnostics ---

    def _event(self, key: str, t: float, detail: str, rejected: bool = True) -> None:
        with self._events_lock:
            event = self._events.get(key)
            if event is None:
                event = self._events[key] = _Event(rejected=rejected)
            event.count += 1
            event.last_time = t
            event.detail = detail

    def events(self) -> dict[str, tuple[int, str]]:
        """'<reason>:<source>' -> (count, last detail) of every reported input problem, oldest first."""
        with self._events_lock:
            ordered = sorted(self._events.items(), key=lambda item: item[1].last_time)
            return {k: (e.count, e.detail) for k, e in ordered}

    def status(self, now: float) -> ControllerStatus:
        """Everything diagnostics report: state, latency, ages, cameras, rejections, clamping."""
        window = self.config.diagnostics.window
        with self._lock:
            watchdog = self._watchdog.status(now)
            assembly = self._last_assembly
            paused = self._paused
            holding, hold_reason = self._last_plan_hold, self._last_hold_reason
            report = self._safety.report()
            latency = _percentiles(self._latency)
            compute = _percentiles(self._compute)
            counts = dict(self._counts)
            obs_age = None if self._last_obs_time is None else now - self._last_obs_time
            joint_age = None if self._measured is None else now - self._measured_time
            failure = self._last_failure_reason
            aggregator = self._aggregator
            chunk_stats = (aggregator.accepted_chunks, aggregator.ignored_chunks, aggregator.skipped_actions)
        with self._events_lock:
            events = {k: dataclasses.replace(e) for k, e in self._events.items()}

        errors: list[str] = []
        warnings: list[str] = []
        if paused:
            warnings.append("paused (call ~/resume)")
        elif holding:
            (errors if watchdog.level == "ERROR" else warnings).append(f"holding: {hold_reason}")
        if assembly is not None:
            for key, cam in assembly.cameras.items():
                if cam.state == "masked":
                    warnings.append(f"camera {key} masked: {cam.detail}")
                elif cam.state != "fresh" and assembly.ok is False:
                    warnings.append(f"camera {key} {cam.detail}")
            if not assembly.ok and not holding:
                warnings.append(f"no observation: {assembly.reason}")
        recent = [(k, e) for k, e in events.items() if now - e.last_time <= window]
        for key, event in sorted(recent, key=lambda item: -item[1].last_time):
            warnings.append(("rejected " if event.rejected else "") + event.detail)
        if report.last_clamped and not holding:
            warnings.append("clamped by limits: " + ", ".join(report.last_clamped))
        level = "ERROR" if errors else ("WARN" if warnings else "OK")
        message = "; ".join(errors + warnings) if level != "OK" else "executing policy actions"

        values: dict[str, object] = {
            "state": "PAUSED" if paused else ("HOLDING" if holding else "EXECUTING"),
            "hold_reason": hold_reason if holding else "",
            "watchdog": watchdog.reason or "OK",
            "prompt": self._assembler.prompt or "",
            "inference.latency_p50_ms": latency[0] * 1e3,
            "inference.latency_p99_ms": latency[1] * 1e3,
            "inference.compute_p50_ms": compute[0] * 1e3,
            "inference.compute_p99_ms": compute[1] * 1e3,
            "inference.requests": counts.get("requests", 0),
            "inference.failures": counts.get("failures", 0),
            "inference.last_failure": failure,
            "chunks.accepted": chunk_stats[0],
            "chunks.ignored_late": chunk_stats[1],
            "chunks.skipped_actions": chunk_stats[2],
            "observation.age_s": math.nan if obs_age is None else obs_age,
            "observation.status": (
                "ok"
                if assembly is not None and assembly.ok
                else (assembly.reason if assembly is not None else "not assembled yet")
            ),
            "joint_state.age_s": math.nan if joint_age is None else joint_age,
        }
        if assembly is not None:
            for key, cam in assembly.cameras.items():
                values[f"camera.{key}"] = cam.state + (f": {cam.detail}" if cam.detail else "")
                values[f"camera.{key}.age_s"] = math.nan if cam.age is None else cam.age
        for key, event in sorted(events.items()):
            prefix = "rejected" if event.rejected else "warning"
            values[f"{prefix}.{key}"] = event.count
            values[f"{prefix}.{key}.last"] = event.detail
        for kind, per_joint in report.counts.items():
            values[f"safety.{kind}_clamps"] = sum(per_joint)
        values["safety.last_clamped"] = ", ".join(report.last_clamped)
        values["ticks.plans"] = counts.get("plans", 0)
        values["ticks.holds"] = counts.get("holds", 0)
        return ControllerStatus(
            level, message, holding or paused, hold_reason, paused, types.MappingProxyType(values)
        )
