"""`vla-ros train`: chunk targets from a bag, a falling loss, the checkpoint it writes, and replay.

The robot has six joints and one 64 x 48 camera; the bags come from
`vla-ros make-bag`'s functions (smooth sines per joint, the recorded command
the joint state 100 ms ahead, joint states in a shuffled order plus an extra
joint). The policy is pi0-tiny at 56 pixels (16 image tokens), so that a few
hundred steps take seconds. One training run (module fixture, about 15 s)
serves the loss, checkpoint and replay tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from vla_ros.tools import bag_io, make_bag
from vla_ros.tools.cli import main
import yaml

PREFIX = '/vla_train_test'
JOINTS = [f'j{i}' for i in range(6)]
RATE = 50.0
STEPS = 300
# The loss of the run below, mean of the last 30 steps over mean of the first 5: 0.55 measured
# (1.199 -> 0.665); the test asks for less than LOSS_RATIO.
LOSS_RATIO = 0.7
# Offline replay, MAE against the recorded command, trained vs untrained (the same run with --steps 0:
# the data's statistics, the starting weights): 0.302 vs 0.352 on the held-out bag (another motion),
# 0.161 vs 0.333 on a training bag. The test asks for trained < RATIO * untrained.
HELD_OUT_RATIO = 0.95
SEEN_RATIO = 0.6


def robot_params(**changes) -> dict:
    params = {
        'control_rate': RATE,
        'joint_names': JOINTS,
        'policy': {'num_threads': 1, 'warmup_runs': 1, 'seed': 0},
        'prompt': {'topic': f'{PREFIX}/instruction'},
        'joint_states': {'topic': f'{PREFIX}/joint_states', 'max_staleness': 0.2},
        'cameras': {'keys': ['base_0_rgb'],
                    'base_0_rgb': {'topic': f'{PREFIX}/cam/image_raw', 'width': 64, 'height': 48}},
        'output': {'trajectory_topic': f'{PREFIX}/joint_trajectory'},
        'limits': {'lower': [-1.5] * 6, 'upper': [1.5] * 6, 'max_velocity': [2.0]},
    }
    for key, value in changes.items():
        node = params
        *path, last = key.split('.')
        for part in path:
            node = node[part]
        node[last] = value
    return params


def write_config(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({'vla_policy': {'ros__parameters': robot_params(**changes)}}))
    return path


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('train')
    config = write_config(root / 'robot.yaml')
    robot = bag_io.robot_topics_from_yaml(config)
    paths = {}
    for name, seed, seconds in (('a', 1, 6.0), ('b', 2, 6.0), ('held', 3, 4.0)):
        paths[name] = root / name
        make_bag.write_bag(robot, paths[name], seconds, 'sqlite3', seed=seed)
    return root, config, robot, paths


@pytest.fixture(scope='module')
def trained(bags):
    """(trained, untrained) checkpoint dirs: the same run for STEPS steps and for 0."""
    root, config, _, paths = bags
    outs = []
    for name, steps in (('trained', STEPS), ('untrained', 0)):
        out = root / name
        rc = main(['train', '--bags', str(paths['a']), str(paths['b']), '--config', str(config),
                   '--init', 'pi0-tiny', '--image-size', '56', '--out', str(out), '--steps', str(steps),
                   '--batch-size', '8', '--lr', '1e-2', '--seed', '0', '--threads', '1', '--no-progress'])
        assert rc == 0
        outs.append(out)
    return tuple(outs)


# ------------------------------------------------------------------ targets ---

def _samples(config, bag, **options):
    from vla_ros.config import NodeConfig
    from vla_ros.training.dataset import read_bag_samples

    return read_bag_samples(bag, NodeConfig.from_yaml(config), 50, **options)


def test_chunk_targets_are_the_recorded_command_at_the_action_rate(bags, tmp_path):
    root, config, robot, paths = bags
    motion = make_bag.SyntheticMotion.create(robot, 1)
    samples = _samples(config, paths['a'], sample_rate=5.0)
    start = make_bag.START_TIME_NS * 1e-9
    assert samples.signal_kind == 'recorded_command' and samples.skipped == 0
    assert samples.chunks.shape == (29, 50, 6)  # 0.2 s .. 5.8 s: the bag ends at its last message
    for now, obs_time, state, chunk in zip(samples.times, samples.obs_times, samples.states, samples.chunks):
        # the observation: the newest camera frame (30 Hz from 2 ms) no older than the sample time, and
        # the newest joint state (100 Hz; float32, as the assembler gives it), mapped by name from the
        # shuffled message
        frame = (obs_time - start - 0.002) * 30.0
        assert abs(frame - round(frame)) < 1e-4 and now - 1 / 30 - 1e-6 <= obs_time <= now + 1e-6
        tick = math.floor((now - start) * 100)
        assert min(np.abs(state - motion.position(k / 100)).max() for k in (tick - 1, tick, tick + 1)) < 1e-6
        # the command for time tau is the joint state 100 ms ahead, sent 20 ms (one period) before tau;
        # the last one (sent at 5.981 s) holds past its time
        for k in (0, 1, 17, 49):
            tau = min(obs_time - start + k / RATE, 5.981 + 1 / RATE)
            expected = motion.position(tau - 1 / RATE + make_bag.COMMAND_LEAD)
            assert np.abs(chunk[k] - expected).max() < 5e-4, (now, k)


def test_chunk_targets_from_joint_states_in_delta_space_at_another_action_rate(bags, tmp_path):
    _, _, robot, paths = bags
    config = write_config(tmp_path / 'delta.yaml',
                          **{'policy.action_space': 'delta', 'policy.action_rate': 25.0})
    motion = make_bag.SyntheticMotion.create(robot, 1)
    start = make_bag.START_TIME_NS * 1e-9
    samples = _samples(config, paths['a'], sample_rate=2.0, action_source='joint_states')
    assert samples.signal_kind == 'joint_states'
    for obs_time, state, chunk in zip(samples.obs_times, samples.states, samples.chunks):
        for k in (0, 10, 49):
            tau = obs_time + k / 25.0
            if tau > start + 6.0 - 0.011:  # past the last joint state: held at it
                continue
            assert np.abs(chunk[k] + state - motion.position(tau - start)).max() < 1e-4


def _rewrite(source: Path, out: Path, position_topic: str | None) -> Path:
    """`source` without its recorded JointTrajectory; with position_topic, its first points as
    Float64MultiArray (joint_names order) at the same bag times instead."""
    ts = bag_io._typestore()
    command = robot_params()['output']['trajectory_topic']
    with bag_io.BagReader(source) as reader, bag_io.BagWriter(out) as writer:
        for msg in reader.messages():
            if msg.topic != command:
                writer.write(msg.topic, msg.time_ns, msg.data, msg.msgtype)
            elif position_topic:
                traj = bag_io.decode(msg)
                order = [list(traj.joint_names).index(j) for j in JOINTS]
                data = np.asarray(traj.points[0].positions)[order]
                layout = ts.types['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0)
                writer.write(position_topic, msg.time_ns,
                             ts.types[bag_io.FLOAT64_MULTI_ARRAY](layout=layout, data=data),
                             bag_io.FLOAT64_MULTI_ARRAY)
    return out


def test_chunk_targets_from_position_commands_or_joint_states(bags, tmp_path):
    from vla_ros.errors import VlaRosError

    _, _, robot, paths = bags
    topic = f'{PREFIX}/position_commands'
    config = write_config(tmp_path / 'position.yaml', **{'output.position_topic': topic})
    motion = make_bag.SyntheticMotion.create(robot, 1)
    start = make_bag.START_TIME_NS * 1e-9
    # Float64MultiArray: the position at its bag time (sent at t, it is q(t + 100 ms))
    samples = _samples(config, _rewrite(paths['a'], tmp_path / 'position', topic), sample_rate=2.0)
    assert samples.signal_kind == 'position_command' and samples.signal_topic == topic
    for obs_time, chunk in zip(samples.obs_times, samples.chunks):
        for k in (0, 25):
            tau = obs_time - start + k / RATE
            assert np.abs(chunk[k] - motion.position(tau + make_bag.COMMAND_LEAD)).max() < 5e-4
    # no command at all: auto takes the joint states, `command` refuses
    bare = _rewrite(paths['a'], tmp_path / 'bare', None)
    assert _samples(config, bare, sample_rate=2.0).signal_kind == 'joint_states'
    with pytest.raises(VlaRosError, match='no recorded command'):
        _samples(config, bare, sample_rate=2.0, action_source='command')


def test_norm_stats_and_policy_convention():
    from vla_ros.observation.transforms import make_transform
    from vla_ros.training.dataset import compute_norm_stats, to_policy_convention

    # ALOHA: the state as Policy.preprocess transforms it, the actions the inverse of Policy.postprocess
    aloha = make_transform('aloha')
    rng = np.random.default_rng(0)
    states, chunks = rng.uniform(0.1, 0.9, (2, 14)), rng.uniform(0.1, 0.9, (2, 3, 14))
    pi_states, pi_chunks = to_policy_convention(aloha, states, chunks)
    np.testing.assert_allclose(pi_states, aloha.state_to_pi(states))
    np.testing.assert_allclose(aloha.outputs(pi_chunks), chunks, atol=1e-9)

    states = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    actions = np.arange(24, dtype=np.float64).reshape(3, 4, 2)
    stats = compute_norm_stats(states, actions)
    np.testing.assert_allclose(stats['state'].mean, [2.0, 3.0])
    np.testing.assert_allclose(stats['state'].std, np.std(states, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats['actions'].q01, np.quantile(actions.reshape(-1, 2), 0.01, axis=0),
                               rtol=1e-6)
    np.testing.assert_allclose(stats['actions'].q99, np.quantile(actions.reshape(-1, 2), 0.99, axis=0),
                               rtol=1e-6)


def test_flow_matching_loss_reference_conventions():
    import torch
    from vla_ros.training.loss import noisy_actions, sample_time

    t = sample_time(20000, np.random.default_rng(0))
    assert float(t.min()) >= 0.001 and float(t.max()) < 1.0
    # Beta(1.5, 1) * 0.999 + 0.001: mean 0.6 * 0.999 + 0.001
    assert float(t.mean()) == pytest.approx(0.6 * 0.999 + 0.001, abs=0.01)
    actions, noise = torch.ones(1, 2, 3), torch.full((1, 2, 3), 3.0)
    x_t, u_t = noisy_actions(actions, noise, torch.tensor([0.25]))
    assert torch.allclose(x_t, torch.full_like(x_t, 0.25 * 3 + 0.75 * 1)) and torch.allclose(u_t, noise - 1)


# ------------------------------------------------------------ the training run ---

def test_loss_falls(trained):
    meta = json.loads((trained[0] / 'train_meta.json').read_text())
    assert meta['steps'] == STEPS and meta['seed'] == 0 and meta['samples'] == 118
    assert meta['final_loss'] < LOSS_RATIO * meta['start_loss'], meta
    assert meta['command'].startswith('vla-ros train --bags ') and '--steps 300' in meta['command']
    assert (trained[0] / 'loss.png').read_bytes()[:4] == b'\x89PNG'
    lines = (trained[0] / 'loss.csv').read_text().splitlines()
    assert lines[0] == 'step,loss,val_loss' and len(lines) == STEPS + 1


def test_checkpoint_loads_with_the_data_statistics(bags, trained):
    from vla_ros.observation.normalize import load_norm_stats
    from vla_ros.policy import Policy, PolicyOptions
    from vla_ros.types import RawObservation

    _, config, _, paths = bags
    out = trained[0]
    assert {'model.safetensors', 'config.json', 'tokenizer.model', 'assets/robot/norm_stats.json'} <= {
        p.relative_to(out).as_posix() for p in out.rglob('*') if p.is_file()}
    config_json = json.loads((out / 'config.json').read_text())
    assert 'untrained' not in config_json and config_json['trained']['steps'] == STEPS
    assert json.loads((trained[1] / 'config.json').read_text())['untrained'] is True

    # the statistics are the training samples' (identity transform: robot units)
    samples = [_samples(config, paths[name], sample_rate=10.0) for name in ('a', 'b')]
    states = np.concatenate([s.states for s in samples])
    actions = np.concatenate([s.chunks for s in samples]).reshape(-1, 6)
    stats = load_norm_stats(out)
    for key, values in (('state', states), ('actions', actions)):
        np.testing.assert_allclose(stats[key].mean, values.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[key].std, values.std(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[key].q01, np.quantile(values, 0.01, axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[key].q99, np.quantile(values, 0.99, axis=0), rtol=1e-5, atol=1e-6)

    policy = Policy.from_checkpoint(out, PolicyOptions(seed=0, num_threads=1))
    assert policy.cfg.vision.image_size == 56 and not policy.spec.untrained
    obs = RawObservation({'base_0_rgb': np.zeros((48, 64, 3), np.uint8)}, states[0].astype(np.float32), 'go')
    assert policy.infer(obs).actions.shape == (50, 6)


def _replay_mae(config, bag, checkpoint, out):
    assert main(['replay', str(bag), '--config', str(config), '--checkpoint', str(checkpoint),
                 '--out', str(out), '--seed', '0', '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['reference']['kind'] == 'recorded_command' and metrics['counts']['compared'] > 150
    return metrics['overall']['mae']


def test_trained_policy_replays_closer_to_the_recorded_command(bags, trained, tmp_path):
    _, config, _, paths = bags
    held = [_replay_mae(config, paths['held'], c, tmp_path / f'held_{c.name}') for c in trained]
    assert held[0] < HELD_OUT_RATIO * held[1], held
    # on a training bag the gap is larger: the node's replay sees the targets' timing
    seen = [_replay_mae(config, paths['a'], c, tmp_path / f'seen_{c.name}') for c in trained]
    assert seen[0] < SEEN_RATIO * seen[1], seen


def test_refuses_what_it_cannot_train(bags, tmp_path, capsys):
    _, config, _, paths = bags
    rc = main(['train', '--bags', str(paths['a']), '--config', str(config), '--init', 'pi0fast-tiny',
               '--out', str(tmp_path / 'x'), '--no-progress'])
    assert rc == 2 and 'flow-matching' in capsys.readouterr().err
    rc = main(['train', '--bags', str(paths['a']), '--config', str(config), '--init', 'pi0-tiny',
               '--image-size', '50', '--out', str(tmp_path / 'y'), '--no-progress'])
    assert rc == 2 and 'patch' in capsys.readouterr().err
