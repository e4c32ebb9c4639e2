"""Training samples from rosbags: observations as the node assembles them, action chunks as targets.

For each bag:

1. The bag is checked against the robot YAML exactly as `vla-ros replay`
   checks it (`vla_ros.tools.replay_plan.plan_replay`: camera topics and
   transports, joint states, instruction).
2. The action signal is read (`read_action_signal`): the recorded command
   (JointTrajectory on output.trajectory_topic, its first point at header
   stamp + time_from_start, as `vla-ros replay` compares with it), else the
   position command (Float64MultiArray on output.position_topic, at its bag
   time), else the measured joint states (at their header stamps). Joints
   are put into joint_names order by name.
3. The bag's input messages go, in bag-time order, through the node's message
   conversions (`vla_ros.ros.image_msgs`, `joint_state_merge`) into the node's
   `ObservationAssembler` with the YAML's sync settings (max_staleness,
   max_skew, missing_camera_policy); at every sample time (`sample_rate` Hz,
   like a control tick) the assembler is asked for an observation, and the
   times where it gives none (stale camera, skew, no joint state yet) are
   skipped, as the node would skip them.
4. The target of an observation taken at `obs_time` (the assembler's stamp)
   is the action signal at `obs_time + k / policy.action_rate`,
   k = 0 .. horizon - 1, interpolated linearly per joint and held at the
   signal's last value past its end (`robot_chunk`). With
   policy.action_space `delta` the target is that minus the observation's
   joint state (on the joints of policy.delta_mask), which is what the node
   adds back (`vla_ros.actions.trajectory.to_absolute`).
5. Statistics (`compute_norm_stats`) are taken over the observations'
   states and all rows of their target chunks, both in the policy's
   convention (after the robot transform: `transform.inputs` /
   `transform.actions_to_pi`), as openpi computes them over action chunks.

The model inputs of every sample then come from `Policy.preprocess` of a
policy loaded from the checkpoint being trained (with the data's statistics),
so training sees exactly what inference will see; the targets are normalized
with the same policy's normalizer.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

ACTION_SOURCES = ('auto', 'command', 'joint_states')


@dataclasses.dataclass(frozen=True)
class ActionSignal:
    """A time series of joint positions (joint_names order) to cut action chunks from.

    kind: 'recorded_command' (JointTrajectory), 'position_command'
    (Float64MultiArray) or 'joint_states'.
    """

    kind: str
    topic: str
    times: np.ndarray  # (N,) seconds, increasing
    positions: np.ndarray  # (N, D)

    def at(self, times: np.ndarray) -> np.ndarray:
        """Positions (len(times), D) interpolated linearly; held at the first / last value outside."""
        times = np.asarray(times, dtype=np.float64)
        return np.stack([np.interp(times, self.times, self.positions[:, j])
                         for j in range(self.positions.shape[1])], axis=-1)

    @property
    def end(self) -> float:
        return float(self.times[-1])


def _signal(kind: str, topic: str, times: list, positions: list) -> ActionSignal | None:
    if not times:
        return None
    t = np.asarray(times, dtype=np.float64)
    p = np.asarray(positions, dtype=np.float64)
    order = np.argsort(t, kind='stable')
    t, p = t[order], p[order]
    keep = np.append(t[1:] > t[:-1], True)  # equal times: the last message wins
    return ActionSignal(kind, topic, t[keep], p[keep])


def read_action_signal(bag: Any, config: Any, source: str = 'auto',
                       command_topic: str | None = None) -> ActionSignal:
    """The signal the targets are cut from (module docstring, step 2).

    source: 'auto' (commands if the bag has them, else joint states),
    'command' (a recorded command is required) or 'joint_states'.
    """
    from vla_ros.errors import ObservationError
    from vla_ros.ros.builtin_time import stamp_to_seconds
    from vla_ros.ros.joint_state_merge import joint_state_reader
    from vla_ros.tools import bag_io
    from vla_ros.tools.replay_plan import JointOrder

    if source not in ACTION_SOURCES:
        raise bag_io.BagError(f'action source must be one of {list(ACTION_SOURCES)}, got {source!r}')
    names = tuple(config.joint_names)
    if source != 'joint_states':
        topic = command_topic or config.output.trajectory_topic or '/joint_trajectory'
        if topic in bag.topics:
            bag.require_topic(topic, bag_io.JOINT_TRAJECTORY, 'recorded command (output.trajectory_topic)')
            order_of = JointOrder(names)
            times, positions = [], []
            for msg in bag.messages([topic]):
                traj = bag_io.decode(msg)
                order = order_of(traj.joint_names)
                if not traj.points or order is None:
                    continue
                stamp = stamp_to_seconds(traj.header.stamp)
                start = stamp if stamp > 0 else msg.time
                times.append(start + stamp_to_seconds(traj.points[0].time_from_start))
                positions.append(np.asarray(traj.points[0].positions, dtype=np.float64)[order])
            signal = _signal('recorded_command', topic, times, positions)
            if signal is not None:
                return signal
        position_topic = config.output.position_topic
        if position_topic and position_topic in bag.topics:
            bag.require_topic(position_topic, bag_io.FLOAT64_MULTI_ARRAY, 'output.position_topic')
            times, positions = [], []
            for msg in bag.messages([position_topic]):
                data = np.asarray(bag_io.decode(msg).data, dtype=np.float64)
                if data.size >= len(names):
                    times.append(msg.time)
                    positions.append(data[:len(names)])
            signal = _signal('position_command', position_topic, times, positions)
            if signal is not None:
                return signal
        if source == 'command':
            raise bag_io.MissingTopicError(
                f"bag {bag.path} has no recorded command for the configured joints on '{topic}' "
                f"(JointTrajectory) or output.position_topic (Float64MultiArray); pass --action-source "
                f'joint_states to learn the future joint states. The bag has: {bag.describe_topics()}')
    js = config.joint_states
    read = joint_state_reader(names, js.merge_partial, js.max_staleness)
    times, positions = [], []
    for msg in bag.messages([js.topic]):
        try:
            q, stamp = read(bag_io.decode(msg), msg.time)
        except ObservationError:
            continue  # partial messages before every joint was heard (merge_partial), or bad ones
        times.append(stamp if stamp > 0 else msg.time)
        positions.append(q)
    signal = _signal('joint_states', js.topic, times, positions)
    if signal is None:
        raise bag_io.NoJointStatesError(
            f"bag {bag.path} has no joint states with every configured joint on '{js.topic}'")
    return signal


def chunk_times(obs_time: float, horizon: int, action_rate: float) -> np.ndarray:
    """The times of a chunk's actions: action k is meant for obs_time + k / action_rate."""
    return obs_time + np.arange(horizon, dtype=np.float64) / float(action_rate)


def robot_chunk(signal: ActionSignal, obs_time: float, state: np.ndarray, horizon: int,
                action_rate: float, action_space: str = 'absolute',
                delta_mask: Sequence[bool] | None = None, action_dims: int | None = None) -> np.ndarray:
    """The target chunk (horizon, action_dims) in robot units, as the node will execute it.

    `delta` action space: the signal minus `state` (the observation's joint
    state) on the masked joints (all when the mask is empty).
    """
    dims = action_dims or signal.positions.shape[1]
    chunk = signal.at(chunk_times(obs_time, horizon, action_rate))[:, :dims]
    if action_space == 'delta':
        offset = np.asarray(state, dtype=np.float64)[:dims].copy()
        if delta_mask:
            offset = np.where(np.asarray(delta_mask, dtype=bool)[:dims], offset, 0.0)
        chunk = chunk - offset
    return chunk


# ------------------------------------------------------------ observations ---

class _Inputs:
    """The node's observation path without ROS: message conversions into an ObservationAssembler."""

    def __init__(self, config: Any, plan: Any, prompt: str | None):
        from vla_ros.observation.buffers import ObservationAssembler
        from vla_ros.ros.joint_state_merge import joint_state_reader

        self.config = config
        self.plan = plan
        self.assembler = ObservationAssembler(config.sync_config())
        js = config.joint_states
        self.read_joint_state = joint_state_reader(tuple(config.joint_names), js.merge_partial,
                                                   js.max_staleness)
        self.expected = {s.key: s.expected_size for s in config.cameras.streams}
        self.future = config.watchdog.obs_timeout  # the controller's tolerance for stamps ahead
        self.rejected: dict[str, int] = {}
        text = prompt or config.prompt.default
        if text:
            self.assembler.update_prompt(text)
        self.fixed_prompt = bool(prompt)

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def deliver(self, msg: Any, now: float) -> None:
        from vla_ros.errors import ObservationError
        from vla_ros.ros.builtin_time import stamp_to_seconds
        from vla_ros.ros.image_msgs import compressed_to_rgb, image_to_rgb
        from vla_ros.tools import bag_io

        plan = self.plan
        key = plan.camera_topics.get(msg.topic)
        if key is not None:
            try:
                ros_msg = bag_io.decode(msg)
                compressed = msg.msgtype == bag_io.COMPRESSED_IMAGE
                rgb = compressed_to_rgb(ros_msg) if compressed else image_to_rgb(ros_msg)
            except (ObservationError, bag_io.BagError):
                self._reject(f'invalid_image:{key}')
                return
            expected = self.expected.get(key)
            if expected is not None and rgb.shape[:2] != expected:
                self._reject(f'wrong_size:{key}')
                return
            stamp = stamp_to_seconds(ros_msg.header.stamp)
            if stamp > now + self.future:
                self._reject(f'future_stamp:{key}')
                return
            try:
                self.assembler.update_image(key, rgb, stamp, now)
            except ObservationError:
                self._reject(f'invalid_image:{key}')
        elif msg.topic == plan.robot.joint_state_topic:
            try:
                positions, stamp = self.read_joint_state(bag_io.decode(msg), now)
                if stamp > now + self.future:
                    self._reject('future_stamp:joint_state')
                    return
                self.assembler.update_state(positions, stamp, now)
            except ObservationError:
                self._reject('invalid_state:joint_state')
        elif msg.topic == plan.instruction_topic and not self.fixed_prompt:
            self.assembler.update_prompt(bag_io.decode(msg).data)


def iter_observations(bag: Any, config: Any, plan: Any, times: Sequence[float],
                      prompt: str | None = None) -> Iterator[tuple[float, Any]]:
    """(sample time, RawObservation) for the sample times where the node's assembler gives one.

    Messages at a sample's time are delivered after it (as in the offline
    replay, where a tick comes before the messages of its instant).
    """
    inputs = _Inputs(config, plan, prompt)
    times = list(times)
    i = 0
    for msg in bag.messages(plan.input_topics):
        now = msg.time
        while i < len(times) and times[i] <= now:
            result = inputs.assembler.assemble(times[i])
            if result.observation is not None:
                yield times[i], result.observation
            i += 1
        if i >= len(times):
            return
        inputs.deliver(msg, now)
    while i < len(times):
        result = inputs.assembler.assemble(times[i])
        if result.observation is not None:
            yield times[i], result.observation
        i += 1


# ----------------------------------------------------------------- samples ---

@dataclasses.dataclass
class BagSamples:
    """What one bag gives: sample times, observation stamps, states and target chunks (robot units)."""

    path: Path
    signal_kind: str
    signal_topic: str
    times: np.ndarray  # (N,) sample (tick) times
    obs_times: np.ndarray  # (N,) observation stamps
    states: np.ndarray  # (N, D) joint states in joint_names order, robot units
    chunks: np.ndarray  # (N, H, A) targets, robot units (deltas for action_space delta)
    prompts: list[str]
    skipped: int  # sample times without an observation or without a target


def sample_times(start: float, end: float, rate: float) -> np.ndarray:
    """Sample times from start + 1 / rate to end (inclusive), every 1 / rate seconds."""
    count = int(math.floor((end - start) * rate + 1e-9))
    return start + np.arange(1, count + 1, dtype=np.float64) / rate


def read_bag_samples(path: str | Path, config: Any, horizon: int, sample_rate: float = 10.0,
                     action_source: str = 'auto', command_topic: str | None = None,
                     prompt: str | None = None) -> BagSamples:
    """Observations (states, stamps) and target chunks of one bag (module docstring)."""
    from vla_ros.tools import bag_io
    from vla_ros.tools.replay_plan import plan_replay

    path = Path(path)
    if not sample_rate > 0:
        raise bag_io.BagError(f'--sample-rate must be > 0 Hz, got {sample_rate}')
    with bag_io.BagReader(path) as bag:
        plan = plan_replay(bag, config, command_topic, prompt=prompt)
        signal = read_action_signal(bag, config, action_source, command_topic)
        times = sample_times(bag.start_time, bag.end_time, sample_rate)
        policy = config.policy
        dims = policy.action_dims or config.num_joints
        rows = []
        skipped = len(times)
        for now, obs in iter_observations(bag, config, plan, times, prompt):
            if obs.timestamp < signal.times[0]:
                continue  # nothing recorded yet to learn from
            chunk = robot_chunk(signal, obs.timestamp, obs.state, horizon, policy.action_rate,
                                policy.action_space, policy.delta_mask, dims)
            rows.append((now, obs.timestamp, np.asarray(obs.state, dtype=np.float64), chunk, obs.prompt))
            skipped -= 1
    if not rows:
        raise bag_io.EmptyBagError(
            f'bag {path} gives no training sample: the node would assemble no observation at any sample '
            f'time, or none after the first {signal.kind} message (check the cameras, joint states and '
            'the sync settings with `vla-ros replay`)')
    return BagSamples(
        path=path, signal_kind=signal.kind, signal_topic=signal.topic,
        times=np.array([r[0] for r in rows]), obs_times=np.array([r[1] for r in rows]),
        states=np.stack([r[2] for r in rows]), chunks=np.stack([r[3] for r in rows]),
        prompts=[r[4] for r in rows], skipped=skipped)


def to_policy_convention(transform: Any, states: np.ndarray, chunks: np.ndarray) -> tuple[np.ndarray, ...]:
    """States (N, D) and chunks (N, H, A) through the robot transform, as the policy sees them.

    The state goes through `transform.inputs` (what `Policy.preprocess`
    normalizes), the actions through `transform.actions_to_pi` (the inverse
    of what `Policy.postprocess` applies to the model's output).
    """
    pi_states = np.stack([np.asarray(transform.inputs(s, {})[0], dtype=np.float64) for s in states])
    pi_chunks = np.asarray(transform.actions_to_pi(chunks), dtype=np.float64)
    return pi_states, pi_chunks


def compute_norm_stats(states: np.ndarray, actions: np.ndarray) -> dict:
    """{'state', 'actions'}: NormStats with mean, std (population) and the 1% / 99% quantiles.

    states (N, D); actions (..., A), every row counted (a chunk's rows are all
    actions, as openpi's statistics count them).
    """
    from vla_ros.observation.normalize import NormStats

    out = {}
    for key, values in (('state', states), ('actions', actions)):
        flat = np.asarray(values, dtype=np.float64).reshape(-1, np.shape(values)[-1])
        out[key] = NormStats(mean=flat.mean(axis=0), std=flat.std(axis=0),
                             q01=np.quantile(flat, 0.01, axis=0), q99=np.quantile(flat, 0.99, axis=0))
    return out


@dataclasses.dataclass
class TrainingSet:
    """Model inputs and normalized targets, one row per sample (numpy, ready to batch).

    images uint8 (N, C, S, S, 3); image_masks bool (N, C); tokens int32 (N, L);
    token_masks bool (N, L); state float32 (N, 32); actions float32 (N, H, 32)
    normalized and zero-padded to the model's width.
    """

    images: np.ndarray
    image_masks: np.ndarray
    tokens: np.ndarray
    token_masks: np.ndarray
    state: np.ndarray
    actions: np.ndarray

    def __len__(self) -> int:
        return int(self.state.shape[0])


def build_training_set(policy: Any, config: Any, bags: Sequence[BagSamples], sample_rate: float,
                       prompt: str | None = None) -> TrainingSet:
    """Run every sample's observation through `policy.preprocess` (bags read again) and normalize targets."""
    from vla_ros.observation.normalize import pad_to_dim
    from vla_ros.tools import bag_io
    from vla_ros.tools.replay_plan import plan_replay

    cfg = policy.cfg
    noise = np.zeros((cfg.action_horizon, cfg.action_dim), np.float32)
    images, image_masks, tokens, token_masks, states, actions = [], [], [], [], [], []
    for samples in bags:
        wanted = {float(t): i for i, t in enumerate(samples.times)}
        _, pi_chunks = to_policy_convention(policy.transform, samples.states, samples.chunks)
        normalized = policy.normalizer.normalize_actions(pi_chunks)
        with bag_io.BagReader(samples.path) as bag:
            plan = plan_replay(bag, config, None, prompt=prompt)
            for now, obs in iter_observations(bag, config, plan, samples.times, prompt):
                index = wanted.get(float(now))
                if index is None:
                    continue
                if obs.timestamp != samples.obs_times[index]:
                    raise bag_io.BagError(f'bag {samples.path} read differently the second time')
                inputs, _ = policy.preprocess(obs, noise=noise)
                images.append(inputs.images)
                image_masks.append(inputs.image_masks)
                tokens.append(inputs.tokens)
                token_masks.append(inputs.token_masks)
                states.append(inputs.state)
                actions.append(pad_to_dim(normalized[index], cfg.action_dim).astype(np.float32))
    images, image_masks = np.stack(images), np.stack(image_masks)
    used = image_masks.any(axis=0)
    if used.any() and not used.all():
        # Slots no sample fills (fewer cameras than the model has) are masked in every sample; a
        # masked slot takes no position and is no key, so leaving it out changes nothing but memory.
        images, image_masks = images[:, used], image_masks[:, used]
    return TrainingSet(images, image_masks, np.stack(tokens), np.stack(token_masks), np.stack(states),
                       np.stack(actions))
