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
    req = ctl.next_request(now)     # an InferenceRequest when an inference is due, else None
    ...                             # run the policy on req.observation (any thread or process)
    ctl.on_chunk(chunk, now, req)   # or ctl.on_inference_failed(reason, now, req)
    plan = ctl.tick(now)            # every control period: TrajectoryPlan (or None before
                                    # the first joint state)
    ctl.status(now)                 # ControllerStatus for diagnostics
    ctl.boundary_jumps()            # how much the plan jumped where new chunks took over

With ``aggregation.mode: rtc`` (Real-Time Chunking, docs/control.md) the
request also carries ``req.guidance`` (a ``ChunkGuidance``: the current plan
from the observation's time on, in the policy's action space, and the
inference delay d); pass it to ``Policy.infer(obs, guidance=req.guidance)``.

Every request carries the controller's generation: anything that restarts
execution (activate, resume, a clock jump) starts a new generation, and a
chunk or failure that answers a request of an older generation is dropped
(counted as ``chunks.dropped_stale``), never executed.

Observation freshness is judged at every tick from the buffers' stamps, not
from the requests, so a slow inference does not make fresh sensors look
stale.

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
import dataclasses
import math
import threading

import numpy as np

from vla_ros.actions.aggregation import TIME_EPS
from vla_ros.actions.limits import SafetyFilter
from vla_ros.actions.trajectory import ActionSpace, hold_plan, plan_points, prepare_chunk, TrajectoryPlan
from vla_ros.actions.watchdog import Watchdog
from vla_ros.errors import ObservationError
from vla_ros.observation.buffers import AssemblyResult, JOINT_STATE, ObservationAssembler
from vla_ros.status import build_status, ControllerStatus, StatusSnapshot
from vla_ros.types import ActionChunk, ChunkGuidance, RawObservation

PROMPT = "prompt"
LATENCY_WINDOW = 100
# Where the plan before and after a chunk's merge counts as different (boundary jump).
JUMP_TOLERANCE = 1e-12
# At most this many future control ticks are compared for the boundary jump.
JUMP_MAX_TICKS = 2000


def _percentile(values, q: float) -> float:
    """numpy.percentile(values, q) (linear method) of a few hundred floats, without numpy overhead."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclasses.dataclass
class _Event:
    """A kind of rejected (or suspicious) input: how often, when last, and why."""

    count: int = 0
    last_time: float = -math.inf
    detail: str = ""
    rejected: bool = True


@dataclasses.dataclass(frozen=True, eq=False)
class InferenceRequest:
    """One inference to run: the observation, and the generation it belongs to.

    Hand the same object back to ``on_chunk`` / ``on_inference_failed``; the
    controller compares it by identity with the request it is waiting for.

    guidance: with aggregation.mode rtc, what to pass to
        ``Policy.infer(..., guidance=)`` (None: run unguided, e.g. the first
        chunk, or the other modes). Its ``delay`` is also where the chunk
        takes over from the current plan.
    """

    observation: RawObservation
    generation: int
    requested_at: float
    guidance: ChunkGuidance | None = None


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
        self._aggregator = config.aggregation.to_aggregation_config().build(
            config.policy.action_period, control_period=config.control_period
        )
        self._safety = SafetyFilter(config.joint_limits())
        self._watchdog = Watchdog(config.watchdog.obs_timeout, config.watchdog.inference_timeout)

        self._lock = threading.Lock()  # aggregator, safety filter, watchdog, trigger state, measured
        self._events_lock = threading.Lock()
        self._events: dict[str, _Event] = {}
        self._measured: np.ndarray | None = None
        self._measured_time = -math.inf
        self._paused = False
        self._pending: InferenceRequest | None = None
        self._generation = 0
        self._future_tolerance = config.watchdog.obs_timeout
        self._topics = {s.key: s.topic for s in config.cameras.streams}
        self._prompt_source = "none"
        self._last_request: float | None = None
        self._last_failure: float | None = None
        self._last_failure_reason = ""
        self._last_chunk_obs: float | None = None
        self._last_chunk_duration = 0.0
        self._last_assembly: AssemblyResult | None = None
        self._last_obs_time: float | None = None
        self._last_plan_hold = True
        self._last_hold_reason = "not started"
        self._latency: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        self._compute: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        self._tokens: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)  # decode models only
        self._spread: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)  # policy.num_samples > 1
        self._counts = collections.Counter()
        # Real-Time Chunking (aggregation.mode rtc): settings, and what the last request used.
        self._rtc = config.aggregation.mode == "rtc"
        self._rtc_config = config.rtc
        self._rtc_settings = config.rtc.to_settings()
        self._last_chunk_len = 0
        self._rtc_delay = 0
        self._rtc_rows = 0
        # Boundary jump of each merged chunk (every mode): last, largest, sum, how many.
        self._jump_last = 0.0
        self._jump_max = 0.0
        self._jump_sum = 0.0
        self._jump_count = 0
        if config.prompt.default:
            self._assembler.update_prompt(config.prompt.default)
            self._prompt_source = "default (prompt.default)"

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
        if self._from_the_future(key, f"camera {key}", stamp, receipt_time):
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
        if self._from_the_future(JOINT_STATE, "joint state", stamp, receipt_time):
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

    def _from_the_future(self, source: str, label: str, stamp: float, receipt_time: float) -> bool:
        # A stamp ahead of the node's clock by more than obs_timeout: the
        # sender runs on another clock (use_sim_time set on one side only) or
        # the message predates a backward clock jump. Buffering it would make
        # every newer message look out of order until the clock caught up.
        if stamp > receipt_time + self._future_tolerance:
            self._event(
                f"future_stamp:{source}",
                receipt_time,
                f"{label}: stamp {stamp:.3f} is {stamp - receipt_time:.3f} s ahead of the node's clock "
                "(different clocks? check use_sim_time on both sides)",
            )
            return True
        return False

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

    def on_prompt(self, text: str, receipt_time: float | None = None, source: str = "topic") -> bool:
        """Set the instruction; an empty one is rejected (the old prompt stays)."""
        if self._assembler.update_prompt(text):
            self._prompt_source = source
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

    def next_request(self, now: float) -> InferenceRequest | None:
        """Return the inference to run now, or None when none is due.

        Call it often (the worker polls it every few ms while idle). An
        inference is due when none is in flight, the node is not paused, the
        retry delay after a failure has passed, and either no chunk covers
        the future, or (trigger 'threshold') the newest chunk is executed
        past execute_threshold, or (trigger 'rate') 1 / rate seconds passed
        since the last request.

        With aggregation.mode rtc the request carries the guidance for the
        next chunk (see ``_guidance``), built here, in the caller's thread,
        so the control tick never pays for it.
        """
        generation = self._generation
        result = self._assembler.assemble(now)
        obs = result.observation
        with self._lock:
            if not self._note_assembly(result, now, generation):
                return None  # execution restarted (a clock jump) while assembling
            if obs is None or self._paused or self._pending is not None or not self._due(now):
                return None
            guidance = self._guidance(obs) if self._rtc else None
            request = InferenceRequest(obs, self._generation, now, guidance)
            self._pending = request
            self._last_request = now
            self._counts["requests"] += 1
        return request

    def rtc_delay(self) -> int:
        """The inference delay d in actions for the next guided request (aggregation.mode rtc).

        d = ceil(p / action_period) + rtc.delay_margin, p the
        rtc.latency_percentile of the recent latencies (chunk arrival minus
        observation time, the last 100); just the margin before any
        latency was measured. Not clipped (the request clips it to the chunk length).
        """
        with self._lock:
            return self._delay_now()

    def _delay_now(self) -> int:
        # Under the lock.
        margin = self._rtc_config.delay_margin
        if not self._latency:
            return margin
        p = _percentile(self._latency, self._rtc_config.latency_percentile)
        return max(0, math.ceil((p - TIME_EPS) / self._aggregator.dt)) + margin

    def _guidance(self, obs: RawObservation) -> ChunkGuidance | None:
        """Under the lock: the Real-Time Chunking inputs for an inference on ``obs``.

        previous: the plan (the aggregated chunks) at obs.timestamp + k *
        action_period for k = 0 .. H - 1 (H: the last chunk's length), up to
        the first time it does not cover, made relative again for 'delta'
        actions (minus ``obs.state`` under policy.delta_mask), so that it is
        in the policy's output space. delay: ``_delay_now()``, at most H.
        None when the plan does not cover obs.timestamp (no chunk yet, or
        after activate / resume / a clock jump): the chunk runs unguided.
        """
        horizon = self._last_chunk_len
        if self._last_chunk_obs is None or horizon <= 0:
            self._rtc_rows = 0
            return None
        delay = min(self._delay_now(), horizon)
        self._rtc_delay = delay
        times = obs.timestamp + self._aggregator.dt * np.arange(horizon, dtype=np.float64)
        values, covered = self._aggregator.values_at(times)
        rows = horizon if covered.all() else int(np.argmin(covered))
        self._rtc_rows = rows
        if rows == 0:
            return None
        guided_end = min(self._rtc_settings.execution_horizon, rows)  # where the guided region ends
        if delay >= guided_end:
            self._event(
                "rtc:horizon", obs.timestamp,
                f"the inference delay d = {delay} actions reaches the end of the guided region "
                f"({guided_end}: rtc.execution_horizon {self._rtc_settings.execution_horizon}, {rows} rows "
                "of plan left): no guided action is executed after the new chunk takes over, so rtc acts "
                "like 'latest'; raise rtc.execution_horizon above d",
                rejected=False,
            )
        previous = values[:rows]
        if self._action_space is ActionSpace.DELTA:
            state = np.asarray(obs.state, dtype=np.float64).reshape(-1)
            if self._delta_mask is not None:
                state = np.where(self._delta_mask, state, 0.0)
            previous = previous - state
        self._counts["guided_requests"] += 1
        return ChunkGuidance(previous.astype(np.float32), delay, self._rtc_settings)

    def _note_assembly(self, result: AssemblyResult, now: float, generation: int) -> bool:
        """Under the lock: keep the newest assembly (diagnostics, watchdog freshness).

        False, keeping nothing, when execution restarted since the assembly
        began (``generation`` read before it): after a clock jump it may hold
        pre-jump stamps. A stamp ahead of ``now`` (another machine's clock)
        counts as ``now``, so stopped sensors still go stale in time.
        """
        if generation != self._generation:
            return False
        self._last_assembly = result
        if result.observation is not None:
            self._last_obs_time = result.observation.timestamp
            self._watchdog.update_observation(min(result.observation.timestamp, now))
        return True

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

    def on_chunk(self, chunk: ActionChunk, now: float, request: InferenceRequest) -> bool:
        """Merge the chunk computed for ``request``; False if nothing of it is used.

        Actions are in robot units, (H, D) with D the joint count; 'delta'
        actions become absolute with the state of the request's observation;
        actions whose time (obs_time + k / action_rate) has passed are
        skipped. A chunk for a request that is no longer pending (execution
        restarted since) is dropped and counted. With aggregation.mode rtc
        the chunk takes over ``request.guidance.delay`` actions after its
        observation time (0 without guidance). Every merged chunk's boundary
        jump is measured (``boundary_jumps``).
        """
        actions = np.asarray(chunk.actions)
        with self._lock:
            if not self._answers_pending(request, "chunk", now):
                return False
            self._pending = None
            if actions.ndim != 2 or actions.shape[1] != self._num_joints or actions.shape[0] == 0:
                self._fail(
                    f"policy returned actions of shape {actions.shape}, expected (H, {self._num_joints})", now
                )
                return False
            if not abs(request.observation.timestamp - chunk.timestamp) < 1e-9:
                self._fail(
                    f"policy stamped its chunk {chunk.timestamp!r}, but its observation was taken at "
                    f"{request.observation.timestamp!r}; chunks keep their observation's time",
                    now,
                )
                return False
            prepared = prepare_chunk(chunk, self._action_space, request.observation.state, self._delta_mask)
            ignored, non_finite = self._aggregator.ignored_chunks, self._aggregator.non_finite_chunks
            delay = request.guidance.delay if request.guidance is not None else 0
            end = float(chunk.timestamp) + (actions.shape[0] - 1) * self._aggregator.dt
            ticks = min(JUMP_MAX_TICKS, max(0, math.floor((end - now + TIME_EPS) / self._period)))
            # From now on: offline replay ticks at the arrival time itself.
            jump_times = now + self._period * np.arange(ticks + 1, dtype=np.float64)
            before = self._aggregator.values_at(jump_times)
            accepted = self._aggregator.update(prepared, now, delay=delay)
            self._latency.append(now - chunk.timestamp)
            if "total" in chunk.timings:
                self._compute.append(float(chunk.timings["total"]))
            tokens = getattr(chunk, "tokens", None)
            if tokens is not None:
                self._tokens.append(int(np.size(tokens)))
            spread = getattr(chunk, "spread", None)
            if spread is not None:
                self._spread.append(float(spread))
            if accepted:
                self._counts["chunks"] += 1
                self._note_jump(before, self._aggregator.values_at(jump_times))
                self._last_chunk_len = actions.shape[0]
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

    def _note_jump(self, before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray]) -> None:
        """Under the lock: the plan's jump where a chunk took over, from samples before and after its merge.

        At the future control ticks, the first tick where the two plans
        differ (by more than JUMP_TOLERANCE on any joint, both covering it)
        gives the jump, the largest absolute difference over the joints
        there; 0 when they agree everywhere. Nothing is counted when the
        plan covered no tick before the merge (the first chunk, a gap).
        """
        (old, old_covered), (new, new_covered) = before, after
        if not old_covered.any():
            return
        both = old_covered & new_covered
        diff = np.where(both, np.abs(new - old).max(axis=1, initial=0.0), 0.0)
        differ = np.flatnonzero(diff > JUMP_TOLERANCE)
        jump = float(diff[differ[0]]) if differ.size else 0.0
        self._jump_last = jump
        self._jump_max = max(self._jump_max, jump)
        self._jump_sum += jump
        self._jump_count += 1

    def boundary_jumps(self) -> dict[str, float | int]:
        """How much the executed plan jumped where merged chunks took over (every aggregation mode).

        For each accepted chunk, the plan is sampled at the future control
        ticks (now + k * control period, over the chunk's span) before and
        after the merge; at the first tick where they differ the jump is the
        largest absolute difference over the joints (robot units), 0 where
        they agree. Returns {"last", "max", "mean": robot units, "count":
        chunks measured}; chunks that found no plan before them (the first,
        one after a gap) are not counted, and with count 0 the rest is 0.0.
        Kept since construction (not reset by activate). For the replay
        tools' comparisons of aggregation modes.
        """
        with self._lock:
            count = self._jump_count
            return {
                "last": self._jump_last,
                "max": self._jump_max,
                "mean": self._jump_sum / count if count else 0.0,
                "count": count,
            }

    def on_inference_failed(self, reason: str, now: float, request: InferenceRequest) -> None:
        """Record that the inference for ``request`` failed; the robot holds until a chunk arrives again.

        A failure of a request that is no longer pending is dropped like its chunk would be.
        """
        with self._lock:
            if not self._answers_pending(request, "failure", now):
                return
            self._pending = None
            self._fail(reason, now)

    def _answers_pending(self, request: InferenceRequest, what: str, now: float) -> bool:
        # Under the lock. Identity, not equality: only the object handed out
        # by next_request answers it.
        if request is self._pending and request.generation == self._generation:
            return True
        self._counts["stale_results"] += 1
        self._event(
            "stale:chunk",
            now,
            f"dropped an inference {what} requested before execution restarted "
            f"(generation {request.generation}, now {self._generation})",
            rejected=False,
        )
        return False

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
        Observation freshness is judged here from the buffers (an assembly of
        references and stamps, no image work: ~15 us), so it holds however
        long an inference runs.
        """
        generation = self._generation
        result = self._assembler.assemble(now)
        with self._lock:
            self._note_assembly(result, now, generation)
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
            plan = plan_points(self._aggregator, self._safety, now, self._period, self._num_points, measured)
            self._last_plan_hold = plan.is_hold
            self._last_hold_reason = plan.reason
            self._counts["holds" if plan.is_hold else "plans"] += 1
            return plan

    def _hold(self, reason: str) -> TrajectoryPlan:
        # The last command, or the measured position clamped into the limits.
        plan = hold_plan(self._safety.hold(self._measured), self._period, self._num_points, reason)
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

    @property
    def prompt(self) -> str | None:
        """The instruction in use, or None before any."""
        return self._assembler.prompt

    @property
    def prompt_source(self) -> str:
        """Where the instruction in use came from: the default parameter or the topic."""
        return self._prompt_source

    @property
    def delta_mask(self) -> np.ndarray | None:
        """policy.delta_mask as a bool array (None: every joint is a delta in 'delta' space)."""
        return self._delta_mask

    def activate(self, now: float) -> None:
        """Start from a clean slate: no chunks, no previous command, no pending inference."""
        with self._lock:
            self._paused = False
            self._reset_execution()
            self._safety.reset()

    def on_clock_jump(self, now: float, jump: float) -> None:
        """The clock went back by ``-jump`` seconds (a restarted simulation, a looped bag).

        Every buffered stamp now lies in the future: forget the sensor
        buffers (the prompt stays), the chunks and the pending request, and
        start over from fresh messages. The last command stays: the robot did
        not move with the clock. Recovery takes one new observation and one
        inference.
        """
        with self._lock:
            # Under the lock with the generation bump, so that no tick or
            # request notes an assembly of pre-jump stamps afterwards.
            self._assembler.reset(keep_prompt=True)
            self._reset_execution()
            self._measured_time = now
            self._last_assembly = None
            self._last_obs_time = None
            self._counts["clock_jumps"] += 1
        with self._events_lock:  # keep the events' ages meaningful on the new clock
            for event in self._events.values():
                event.last_time += jump
        self._event(
            "clock_jump:clock", now, f"clock jumped back {-jump:.3f} s; observation buffers and chunks reset",
            rejected=False,
        )

    def _reset_execution(self) -> None:
        # Under the lock. A new generation: results of earlier requests are dropped.
        self._generation += 1
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

    def _extra_status(self) -> dict[str, object]:
        # Under the lock: the boundary jump (every mode) and, with rtc, what guided the last request.
        values: dict[str, object] = {
            "chunks.boundary_jump_last": self._jump_last,
            "chunks.boundary_jump_max": self._jump_max,
            "chunks.boundary_jumps": self._jump_count,
        }
        if self._spread:
            # policy.num_samples > 1: how far the samples of one inference disagree (normalized units).
            values["inference.sample_spread_last"] = self._spread[-1]
            values["inference.sample_spread_max"] = max(self._spread)
        if self._rtc:
            settings = self._rtc_settings
            values.update({
                "rtc.delay": self._rtc_delay,
                "rtc.guided_rows": self._rtc_rows,
                "rtc.guided_requests": self._counts.get("guided_requests", 0),
                "rtc.max_guidance_weight": settings.max_guidance_weight,
                "rtc.schedule": settings.schedule,
                "rtc.execution_horizon": settings.execution_horizon,
                "rtc.mode": settings.mode,
            })
        return values

    def status(self, now: float) -> ControllerStatus:
        """Everything diagnostics report: state, latency, ages, cameras, rejections, clamping."""
        with self._lock:
            snapshot = StatusSnapshot(
                now=now,
                window=self.config.diagnostics.window,
                watchdog=self._watchdog.status(now),
                assembly=self._last_assembly,
                paused=self._paused,
                holding=self._last_plan_hold,
                hold_reason=self._last_hold_reason,
                safety=self._safety.report(),
                latency=tuple(self._latency),
                compute=tuple(self._compute),
                decoded_tokens=tuple(self._tokens),
                counts=dict(self._counts),
                obs_time=self._last_obs_time,
                joint_time=None if self._measured is None else self._measured_time,
                last_failure=self._last_failure_reason,
                accepted_chunks=self._aggregator.accepted_chunks,
                ignored_chunks=self._aggregator.ignored_chunks,
                skipped_actions=self._aggregator.skipped_actions,
                prompt=self._assembler.prompt or "",
                prompt_source=self._prompt_source,
                camera_topics=self._topics,
                extra=self._extra_status(),
            )
        with self._events_lock:
            snapshot = dataclasses.replace(
                snapshot,
                events={k: (e.count, e.last_time, e.detail, e.rejected) for k, e in self._events.items()},
            )
        return build_status(snapshot)
