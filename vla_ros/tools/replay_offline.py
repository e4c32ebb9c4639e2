"""Offline replay: the bag through the node's own code on simulated time, no DDS.

The bag's messages, in bag-time order, go through the same message
conversions as the node (vla_ros.ros.image_msgs, joint_state_msgs), its PolicyController
(observation assembly, inference trigger, aggregation, limits, watchdog) and
Policy. The control timer ticks every 1 / control_rate seconds of bag time,
and a chunk arrives `latency` after its request (fixed: --latency-ms;
measured: the inference's own wall-clock time). With a fixed latency the
result is a function of the bag, the config, the checkpoint and --seed (the
seed of the policy's noise): two runs give identical outputs.

An inference that raises a VlaRosError (a pi0-FAST decode whose tokens are no
action chunk: ActionDecodeError) is a failed inference, as in the node: the
controller holds, the replay goes on, and the report counts the failures by
kind with the last message.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
import time
from typing import Any

from vla_ros.tools.replay_plan import (DEFAULT_NODE_NAME, instruction_before_window, Progress,
                                       record_diagnostics, record_trajectory, ReplayPlan)

DEFAULT_LATENCY_MS = 100.0


def model_input_sheet(plan: ReplayPlan, begin: float, end: float, spec: Any = None) -> Any:
    """The contact sheet to fill: every configured camera slot with its topic, at the model's size."""
    from vla_ros.tools.replay_report import ModelInputSheet

    slots = [(s.key, s.topic) for s in plan.config.cameras.streams]
    return ModelInputSheet(slots, begin, end, size=getattr(spec, 'image_size', None) or 224,
                           method=getattr(spec, 'image_resize', None) or 'openpi')


def load_policy(config: Any, directory: Path, seed: int) -> Any:
    from vla_ros.policy import Policy

    options = dataclasses.replace(config.policy.to_policy_options(), seed=seed)
    return Policy.from_checkpoint(directory, options)


def _diagnostic_array(name: str, status: Any, now: float, hardware_id: str = '') -> Any:
    from vla_ros.ros.diagnostics_msgs import diagnostic_array, diagnostic_status

    return diagnostic_array(
        [diagnostic_status(name, status.level, status.message, status.values, hardware_id)], now)


class OfflineReplay:
    """Feeds a PolicyController from bag messages on a simulated clock.

    Event order at equal times: a chunk that arrives at a tick's time is
    merged before the tick; messages at a tick's time come after the tick.
    """

    def __init__(self, plan: ReplayPlan, policy: Any, latency: str = 'fixed',
                 latency_ms: float = DEFAULT_LATENCY_MS):
        from vla_ros.controller import PolicyController
        from vla_ros.ros.joint_state_merge import joint_state_reader

        if latency not in ('fixed', 'measured'):
            raise ValueError(f"latency must be 'fixed' or 'measured', got {latency!r}")
        self.plan = plan
        self.config = plan.config
        self.policy = policy
        self.latency = latency
        self.latency_s = latency_ms / 1e3
        self.controller = PolicyController(self.config)
        js = self.config.joint_states
        self.read_joint_state = joint_state_reader(
            self.config.joint_names, js.merge_partial, js.max_staleness
        )
        self.period = self.config.control_period
        self.pending: tuple[float, Any, float] | None = None  # (arrival, chunk or error text, obs time)
        self.latencies: list[float] = []
        self.compute: list[float] = []  # measured wall-clock seconds per inference (not in the outputs)
        self.failures = 0
        self.failure_kinds: dict[str, int] = {}  # exception name -> count
        self.last_failure = ''
        self.trajectory_topic = self.config.output.trajectory_topic or '/joint_trajectory'
        self.sheet: Any = None  # ModelInputSheet, set by run()

    # -- inputs --------------------------------------------------------

    def deliver(self, msg: Any, now: float) -> None:
        from vla_ros.errors import ObservationError
        from vla_ros.ros.builtin_time import stamp_to_seconds
        from vla_ros.ros.image_msgs import compressed_to_rgb, image_to_rgb
        from vla_ros.tools import bag_io

        ctl = self.controller
        key = self.plan.camera_topics.get(msg.topic)
        if key is not None:
            try:
                ros_msg = bag_io.decode(msg)
                compressed = msg.msgtype == bag_io.COMPRESSED_IMAGE
                rgb = compressed_to_rgb(ros_msg) if compressed else image_to_rgb(ros_msg)
            except (ObservationError, bag_io.BagError) as exc:
                ctl.on_input_error(key, str(exc), now)
                return
            ctl.on_image(key, rgb, stamp_to_seconds(ros_msg.header.stamp), now)
            if self.sheet is not None and self.sheet.needs(key, now):
                self.sheet.add(key, rgb, now)
        elif msg.topic == self.plan.robot.joint_state_topic:
            ros_msg = bag_io.decode(msg)
            try:
                positions, stamp = self.read_joint_state(ros_msg, now)
            except ObservationError as exc:
                ctl.on_input_error('joint_state', str(exc), now)
                return
            ctl.on_joint_state(positions, stamp, now)
        elif msg.topic == self.plan.instruction_topic and self.plan.prompt_override is None:
            ctl.on_prompt(bag_io.decode(msg).data, now)

    # -- inference -----------------------------------------------------

    def maybe_request(self, now: float) -> None:
        if self.pending is not None:
            return
        request = self.controller.next_request(now)
        if request is None:
            return
        from vla_ros.errors import VlaRosError

        started = time.perf_counter()
        try:
            guidance = getattr(request, 'guidance', None)  # aggregation.mode rtc: the guided chunk
            if guidance is None:
                result: Any = self.policy.infer(request.observation)
            else:
                result = self.policy.infer(request.observation, guidance=guidance)
        except VlaRosError as exc:
            result = f'{type(exc).__name__}: {exc}'
        compute = time.perf_counter() - started
        self.compute.append(compute)
        delay = compute if self.latency == 'measured' else self.latency_s
        if not isinstance(result, str):
            # The controller reports chunk timings in diagnostics: give it the simulated
            # time, so that a fixed latency keeps every output reproducible.
            result = dataclasses.replace(result, timings={'total': delay})
        self.pending = (now + delay, result, request)

    def arrive(self) -> None:
        arrival, result, request = self.pending
        self.pending = None
        if isinstance(result, str):
            self.failures += 1
            kind = result.split(':', 1)[0]
            self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1
            self.last_failure = result
            self.controller.on_inference_failed(result, arrival, request)
        else:
            self.latencies.append(arrival - request.observation.timestamp)
            self.controller.on_chunk(result, arrival, request)
        self.maybe_request(arrival)

    # -- the loop ------------------------------------------------------

    def run(self, bag: Any, record: Any, progress: bool = True) -> None:
        from vla_ros.ros.command_msgs import trajectory_msg
        from vla_ros.tools import bag_io

        plan = self.plan
        begin, end = plan.begin_ns * 1e-9, plan.end_ns * 1e-9
        names = tuple(self.config.joint_names)
        velocities = self.config.output.velocities
        spec = getattr(self.policy, 'spec', None)
        self.sheet = record.model_inputs = model_input_sheet(plan, begin, end, spec)
        diag_period = 1.0 / self.config.diagnostics.rate
        self.controller.activate(begin)
        if plan.prompt_override:
            self.controller.on_prompt(plan.prompt_override, begin)
        elif plan.instruction_topic:
            last = instruction_before_window(bag, plan)
            if last is not None:
                self.controller.on_prompt(bag_io.decode(last).data, begin)

        k = 1
        next_tick = begin + self.period
        next_diag = begin + diag_period
        bar = Progress(end - begin, 'replay (offline)', progress)

        def advance(until: float) -> None:
            nonlocal k, next_tick, next_diag
            while True:
                arrival = self.pending[0] if self.pending is not None else math.inf
                tick = next_tick if next_tick <= end else math.inf
                t = min(arrival, tick)
                if t > until or t == math.inf:
                    return
                if arrival <= tick:
                    self.arrive()
                    continue
                now = tick
                plan_ = self.controller.tick(now)
                if plan_ is not None:
                    msg = trajectory_msg(names, plan_.times_from_start, plan_.positions,
                                         plan_.velocities if velocities else None)
                    record_trajectory(record, now, self.trajectory_topic, msg,
                                      now + float(plan_.times_from_start[0]), plan_.positions[0],
                                      plan_.is_hold)
                if now >= next_diag:
                    status = self.controller.status(now)
                    record_diagnostics(record, now, _diagnostic_array(
                        f'{DEFAULT_NODE_NAME}: policy', status, now, self.config.diagnostics.hardware_id))
                    next_diag += diag_period
                self.maybe_request(now)
                k += 1
                next_tick = begin + k * self.period
                bar.to(now - begin)

        try:
            for msg in bag.messages(plan.input_topics, plan.begin_ns, plan.end_ns):
                now = msg.time
                advance(now)
                self.deliver(msg, now)
                self.maybe_request(now)
                bar.to(now - begin)
            advance(end)
        finally:
            bar.close()
        status = self.controller.status(end)
        record.chunks = int(status.values.get('chunks.accepted', 0))
        record.skipped_actions = int(status.values.get('chunks.skipped_actions', 0))
        record.latencies = list(self.latencies)
        record.inference_failures = self.failures
        if self.failures:
            record.info['inference_failure_kinds'] = dict(sorted(self.failure_kinds.items()))
            record.info['last_inference_failure'] = self.last_failure
        record.info['controller'] = {
            'final_state': status.values.get('state'),
            'final_message': status.message,
            'late_chunks': int(status.values.get('chunks.ignored_late', 0)),
            'requests': int(status.values.get('inference.requests', 0)),
            'rejected_inputs': {k: v[0] for k, v in sorted(self.controller.events().items())},
        }
