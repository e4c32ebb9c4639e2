"""`vla-ros make-bag`: a synthetic recording that matches a robot config."""

from __future__ import annotations

import numpy as np
from vla_ros.ros.image_msgs import compressed_to_rgb, image_to_rgb
from vla_ros.ros.joint_state_msgs import JointStateMapper
from vla_ros.tools import bag_io, make_bag
from vla_ros.tools.cli import main
import yaml

JOINTS = [f'arm_joint_{i}' for i in range(7)] + ['gripper']
LOWER = [-2.0, -1.5, -1.5, -2.5, -1.5, -2.5, -1.0, 0.0]
UPPER = [2.0, 1.5, 1.5, 2.5, 1.5, 2.5, 1.0, 0.04]


def robot_yaml(path, **overrides):
    params = {
        'control_rate': 50.0,
        'joint_names': JOINTS,
        'prompt': {'topic': '/arm/instruction', 'default': 'stack the blocks'},
        'joint_states': {'topic': '/arm/joint_states'},
        'cameras': {
            'keys': ['base_0_rgb', 'left_wrist_0_rgb'],
            'base_0_rgb': {'topic': '/arm/cam_base/image_raw', 'width': 64, 'height': 48},
            'left_wrist_0_rgb': {'topic': '/arm/cam_wrist/image_raw/compressed', 'transport': 'compressed',
                                 'width': 48, 'height': 32},
        },
        'output': {'trajectory_topic': '/arm/controller/joint_trajectory'},
        'limits': {'lower': LOWER, 'upper': UPPER, 'max_velocity': [1.0] * 7 + [0.1]},
    }
    params.update(overrides)
    path.write_text(yaml.safe_dump({'vla_policy': {'ros__parameters': params}}))
    return path


def test_make_bag_cli(tmp_path, capsys):
    config = robot_yaml(tmp_path / 'arm.yaml')
    out = tmp_path / 'bag'
    assert main(['make-bag', '--config', str(config), '--out', str(out), '--seconds', '1.0',
                 '--storage', 'mcap', '--seed', '3']) == 0
    printed = capsys.readouterr().out
    assert 'wrote mcap bag' in printed and '/arm/joint_states' in printed
    assert not list(tmp_path.glob('.bag.partial-*'))

    with bag_io.BagReader(out) as reader:
        assert reader.storage == 'mcap'
        topics = {t.name: (t.msgtype, t.count) for t in reader.topics.values()}
        assert topics == {
            '/arm/instruction': (bag_io.STRING, 1),
            '/arm/joint_states': (bag_io.JOINT_STATE, 100),
            '/arm/controller/joint_trajectory': (bag_io.JOINT_TRAJECTORY, 50),
            '/arm/cam_base/image_raw': (bag_io.IMAGE, 30),
            '/arm/cam_wrist/image_raw/compressed': (bag_io.COMPRESSED_IMAGE, 30),
        }
        messages = list(reader.messages())
    assert messages[0].topic == '/arm/instruction'
    assert bag_io.decode(messages[0]).data == 'stack the blocks'

    mapper = JointStateMapper(JOINTS)
    states, commands = [], []
    for m in messages:
        msg = bag_io.decode(m)
        if m.msgtype == bag_io.STRING:
            continue
        if m.msgtype == bag_io.JOINT_TRAJECTORY:
            assert list(msg.joint_names) == JOINTS
            commands.append((m.time, np.array(msg.points[0].positions)))
            continue
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == m.time_ns  # header stamp = bag time
        if m.msgtype == bag_io.JOINT_STATE:
            # another order than the config's, and an extra joint
            assert list(msg.name) != JOINTS and make_bag.EXTRA_JOINT in msg.name
            states.append((m.time, mapper.update(msg)))
        elif m.msgtype == bag_io.IMAGE:
            assert msg.encoding in ('rgb8', 'bgr8')
            assert image_to_rgb(msg).shape == (48, 64, 3)
        else:
            assert msg.format == 'jpeg'
            assert compressed_to_rgb(msg).shape == (32, 48, 3)
    positions = np.array([p for _, p in states])
    assert np.all(positions >= np.array(LOWER)) and np.all(positions <= np.array(UPPER))
    speed = np.abs(np.diff(positions, axis=0)) / 0.01
    assert np.all(speed <= np.array([1.0] * 7 + [0.1]) + 1e-9)
    assert np.ptp(positions, axis=0).min() > 0  # every joint moves
    # the recorded command is the joint state COMMAND_LEAD seconds later
    times = np.array([t for t, _ in states])
    t_cmd, cmd = commands[5]
    j = int(np.argmin(np.abs(times - (t_cmd + make_bag.COMMAND_LEAD))))
    np.testing.assert_allclose(cmd, positions[j], atol=0.02)


def test_same_seed_same_bag_and_config_joint_order(tmp_path):
    robot = bag_io.robot_topics_from_yaml(robot_yaml(tmp_path / 'arm.yaml'))
    for name in ('a', 'b'):
        make_bag.write_bag(robot, tmp_path / name, 0.3, 'sqlite3', seed=5)
    make_bag.write_bag(robot, tmp_path / 'c', 0.3, 'sqlite3', seed=6, shuffle_joints=False)
    data = {n: [m.data for m in bag_io.BagReader(tmp_path / n).messages()] for n in 'abc'}
    assert data['a'] == data['b']
    assert data['a'] != data['c']
    with bag_io.BagReader(tmp_path / 'c') as reader:
        state = bag_io.decode(next(iter(reader.messages(['/arm/joint_states']))))
    assert list(state.name) == JOINTS


def test_make_bag_refuses_to_overwrite(tmp_path, capsys):
    config = robot_yaml(tmp_path / 'arm.yaml')
    (tmp_path / 'bag').mkdir()
    assert main(['make-bag', '--config', str(config), '--out', str(tmp_path / 'bag'),
                 '--seconds', '0.2']) == 2
    assert 'exists already' in capsys.readouterr().err


def test_make_bag_bad_config(tmp_path, capsys):
    config = robot_yaml(tmp_path / 'arm.yaml', control_rate='fast')
    assert main(['make-bag', '--config', str(config), '--out', str(tmp_path / 'bag')]) == 2
    assert "parameter 'control_rate'" in capsys.readouterr().err
    assert not (tmp_path / 'bag').exists()
