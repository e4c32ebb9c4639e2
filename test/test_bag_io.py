"""Bag reading and writing (vla_ros.tools.bag_io): round trips and the errors for bad bags."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.ros.builtin_time import seconds_to_duration, seconds_to_stamp
from vla_ros.ros.image_msgs import compressed_to_rgb, image_to_rgb, rgb_to_compressed_msg, rgb_to_image_msg
from vla_ros.tools import bag_io

T0 = 1_700_000_000 * 10**9


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)


def _sample_messages():
    """(topic, msgtype, time_ns, rclpy message), deliberately not in time order."""
    out = []
    for i in range(5):
        t = T0 + i * 10_000_000
        js = JointState(name=['b', 'a'], position=[float(i), -float(i)])
        js.header.stamp = seconds_to_stamp(t * 1e-9)
        out.append(('/joint_states', bag_io.JOINT_STATE, t, js))
    out.append(('/cam/image_raw', bag_io.IMAGE, T0 + 5_000_000,
                rgb_to_image_msg(_rgb(0), 'bgr8', stamp=(T0 + 5_000_000) * 1e-9)))
    out.append(('/cam2/compressed', bag_io.COMPRESSED_IMAGE, T0 + 6_000_000,
                rgb_to_compressed_msg(_rgb(1), 'png', stamp=(T0 + 6_000_000) * 1e-9)))
    out.append(('/instruction', bag_io.STRING, T0, String(data='pick up the cube')))
    point = JointTrajectoryPoint(positions=[0.5, 0.25], velocities=[0.0, 1.0],
                                 time_from_start=seconds_to_duration(0.02))
    out.append(('/cmd', bag_io.JOINT_TRAJECTORY, T0 + 1,
                JointTrajectory(joint_names=['a', 'b'], points=[point])))
    status = DiagnosticStatus(level=DiagnosticStatus.WARN, name='x', message='m',
                              values=[KeyValue(key='k', value='v')])
    out.append(('/diagnostics', bag_io.DIAGNOSTIC_ARRAY, T0 + 2, DiagnosticArray(status=[status])))
    return out


@pytest.mark.parametrize('storage', bag_io.STORAGES)
def test_round_trip(tmp_path, storage):
    messages = _sample_messages()
    with bag_io.BagWriter(tmp_path / 'bag', storage) as writer:
        for topic, msgtype, t, msg in messages:
            writer.write(topic, t, msg, msgtype)
    with bag_io.BagReader(tmp_path / 'bag') as reader:
        assert reader.storage == storage
        assert reader.message_count == len(messages)
        assert {t.name: (t.msgtype, t.count) for t in reader.topics.values()} == {
            '/joint_states': (bag_io.JOINT_STATE, 5), '/cam/image_raw': (bag_io.IMAGE, 1),
            '/cam2/compressed': (bag_io.COMPRESSED_IMAGE, 1), '/instruction': (bag_io.STRING, 1),
            '/cmd': (bag_io.JOINT_TRAJECTORY, 1), '/diagnostics': (bag_io.DIAGNOSTIC_ARRAY, 1)}
        read = list(reader.messages())
        assert [m.time_ns for m in read] == sorted(m[2] for m in messages)  # bag-time order
        decoded = {m.topic: bag_io.decode(m) for m in read}
        assert decoded['/instruction'].data == 'pick up the cube'
        np.testing.assert_array_equal(image_to_rgb(decoded['/cam/image_raw']), _rgb(0))
        np.testing.assert_array_equal(compressed_to_rgb(decoded['/cam2/compressed']), _rgb(1))
        assert decoded['/cmd'].joint_names == ['a', 'b']
        assert list(decoded['/cmd'].points[0].positions) == [0.5, 0.25]
        assert decoded['/cmd'].points[0].time_from_start.nanosec == 20_000_000
        assert decoded['/diagnostics'].status[0].level == DiagnosticStatus.WARN
        assert decoded['/diagnostics'].status[0].values[0].value == 'v'
        states = [bag_io.decode(m) for m in reader.messages(['/joint_states'])]
        assert [list(s.position) for s in states] == [[float(i), -float(i)] for i in range(5)]
        assert [s.header.stamp.sec for s in states] == [T0 // 10**9] * 5
        # a time window
        window = list(reader.messages(['/joint_states'], T0 + 10_000_000, T0 + 30_000_000))
        assert [m.time_ns for m in window] == [T0 + 10_000_000, T0 + 20_000_000]


def test_same_messages_give_same_bytes(tmp_path):
    for name in ('a', 'b'):
        with bag_io.BagWriter(tmp_path / name, 'mcap') as writer:
            for topic, msgtype, t, msg in _sample_messages():
                writer.write(topic, t, msg, msgtype)
    a = [m.data for m in bag_io.BagReader(tmp_path / 'a').messages()]
    b = [m.data for m in bag_io.BagReader(tmp_path / 'b').messages()]
    assert a == b


def test_ros1_bag_is_read_as_cdr(tmp_path):
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import get_typestore, Stores

    store = get_typestore(Stores.ROS1_NOETIC)
    types = store.types
    path = tmp_path / 'old.bag'
    writer = Writer(path)
    writer.open()
    connection = writer.add_connection('/joint_states', bag_io.JOINT_STATE, typestore=store)
    header = types['std_msgs/msg/Header'](seq=7, stamp=types['builtin_interfaces/msg/Time'](sec=5, nanosec=9),
                                          frame_id='base')
    msg = types[bag_io.JOINT_STATE](header=header, name=['a', 'b'], position=np.array([1.0, 2.0]),
                                    velocity=np.zeros(0), effort=np.zeros(0))
    writer.write(connection, 5 * 10**9, store.serialize_ros1(msg, bag_io.JOINT_STATE))
    writer.close()
    with bag_io.BagReader(path) as reader:
        assert reader.storage == 'ros1'
        (message,) = list(reader.messages())
        state = bag_io.decode(message)
    assert list(state.name) == ['a', 'b'] and list(state.position) == [1.0, 2.0]
    assert (state.header.stamp.sec, state.header.stamp.nanosec, state.header.frame_id) == (5, 9, 'base')


def _write(path, storage='sqlite3', messages=None):
    with bag_io.BagWriter(path, storage) as writer:
        for topic, msgtype, t, msg in messages if messages is not None else _sample_messages():
            writer.write(topic, t, msg, msgtype)
    return path


def test_missing_topic_lists_what_the_bag_has(tmp_path):
    with bag_io.BagReader(_write(tmp_path / 'bag')) as reader:
        with pytest.raises(bag_io.MissingTopicError) as info:
            reader.require_topic('/nope', bag_io.IMAGE, 'cameras.base_0_rgb.topic')
    text = str(info.value)
    assert "'/nope' (cameras.base_0_rgb.topic) is not in bag" in text
    assert '/joint_states [sensor_msgs/msg/JointState] 5 msgs' in text and '/cam/image_raw' in text


def test_type_mismatch(tmp_path):
    with bag_io.BagReader(_write(tmp_path / 'bag')) as reader:
        assert reader.require_topic('/cam/image_raw', ['sensor_msgs/Image']).count == 1
        with pytest.raises(bag_io.TopicTypeError, match='has type sensor_msgs/msg/Image .* expects '
                           'sensor_msgs/msg/CompressedImage'):
            reader.require_topic('/cam/image_raw', bag_io.COMPRESSED_IMAGE)


@pytest.mark.parametrize('storage', bag_io.STORAGES)
def test_empty_bag(tmp_path, storage):
    with bag_io.BagWriter(tmp_path / 'bag', storage) as writer:
        writer.add_topic('/joint_states', bag_io.JOINT_STATE)
    with pytest.raises(bag_io.EmptyBagError, match=r'holds no messages; topics: /joint_states'):
        bag_io.BagReader(tmp_path / 'bag')


@pytest.mark.parametrize('storage', bag_io.STORAGES)
def test_truncated_bag(tmp_path, storage):
    bag = _write(tmp_path / 'bag', storage)
    (data,) = [p for p in bag.iterdir() if p.suffix in ('.db3', '.mcap')]
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(bag_io.CorruptBagError, match='truncated or corrupt'):
        with bag_io.BagReader(bag) as reader:
            list(reader.messages())


def test_not_a_bag(tmp_path):
    with pytest.raises(bag_io.BagNotFoundError, match='does not exist'):
        bag_io.BagReader(tmp_path / 'missing')
    (tmp_path / 'dir').mkdir()
    (tmp_path / 'dir' / 'x.mcap').write_bytes(b'')
    with pytest.raises(bag_io.BagNotFoundError, match=r"no metadata.yaml\); it holds \['x.mcap'\]"):
        bag_io.BagReader(tmp_path / 'dir')
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(bag_io.BagNotFoundError, match='is not a bag'):
        bag_io.BagReader(tmp_path / 'notes.txt')


def test_writer_refuses_existing_path_and_aborts_on_error(tmp_path):
    (tmp_path / 'exists').mkdir()
    with pytest.raises(bag_io.BagError, match='exists already'):
        bag_io.BagWriter(tmp_path / 'exists')
    with pytest.raises(RuntimeError):
        with bag_io.BagWriter(tmp_path / 'aborted') as writer:
            writer.write('/instruction', T0, String(data='x'), bag_io.STRING)
            raise RuntimeError('boom')
    assert not (tmp_path / 'aborted' / 'metadata.yaml').exists()
    with pytest.raises(bag_io.BagNotFoundError):
        bag_io.BagReader(tmp_path / 'aborted')
