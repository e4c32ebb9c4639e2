"""Reading and writing rosbags without ROS 2's rosbag2_py (pure Python, via ``rosbags``).

Reading: rosbag2 directories (sqlite3 or mcap storage), a single ``.db3`` /
``.mcap`` file, or a ROS 1 ``.bag``. Every message comes out as CDR bytes in
bag-time order (ROS 1 messages are converted on the fly), so the same bytes
can be decoded into rclpy messages with :func:`decode` (what the node's
subscriptions would hand over) or published as-is over DDS.

Writing: :class:`BagWriter` writes a rosbag2 bag from rclpy messages,
``rosbags`` messages or CDR bytes. Messages are serialized by ``rosbags``,
which writes zero padding, so the same messages always give the same bytes
(rclpy's serializer leaves uninitialised padding in its buffers).

Each problem with an input bag raises its own :class:`BagError` subclass with
a message that says what is wrong and what the bag holds instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from vla_ros.errors import VlaRosError

STORAGES = ('sqlite3', 'mcap')

# Common message types, by the name both ROS 1 and ROS 2 tools use.
IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
JOINT_STATE = 'sensor_msgs/msg/JointState'
JOINT_TRAJECTORY = 'trajectory_msgs/msg/JointTrajectory'
STRING = 'std_msgs/msg/String'
FLOAT64_MULTI_ARRAY = 'std_msgs/msg/Float64MultiArray'
DIAGNOSTIC_ARRAY = 'diagnostic_msgs/msg/DiagnosticArray'


class BagError(VlaRosError):
    """A bag cannot be used: missing, unreadable, or not holding what is needed."""


class BagNotFoundError(BagError):
    """The bag path does not exist or is not a bag."""


class CorruptBagError(BagError):
    """The bag is truncated or corrupt (e.g. a recording that was killed)."""


class EmptyBagError(BagError):
    """The bag (or the requested time window) holds no messages."""


class MissingTopicError(BagError):
    """A topic the configuration needs is not in the bag."""


class TopicTypeError(BagError):
    """A topic is in the bag with a different message type than configured."""


class NoJointStatesError(BagError):
    """The bag has no usable joint states, so there is nothing to compare with."""


# ------------------------------------------------- robot topic layout ---

@dataclasses.dataclass(frozen=True)
class CameraTopic:
    """One camera input: the policy camera key, its topic, message type and encoding.

    msgtype: 'sensor_msgs/msg/Image' or 'sensor_msgs/msg/CompressedImage'.
    encoding: rgb8 / bgr8 / mono8 / rgba8 / bgra8 for Image, jpeg / png for
        CompressedImage.
    """

    key: str
    topic: str
    msgtype: str
    encoding: str = ''
    width: int = 320
    height: int = 240


@dataclasses.dataclass(frozen=True)
class RobotTopics:
    """What a robot config says about the topics of a recording.

    lower / upper / max_velocity follow joint_names. command_topic is where
    the executed commands were recorded (JointTrajectory).
    """

    cameras: tuple[CameraTopic, ...]
    joint_state_topic: str
    joint_names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    max_velocity: tuple[float, ...]
    instruction_topic: str
    command_topic: str
    control_rate: float = 50.0
    prompt: str = ''


RAW_ENCODINGS = ('rgb8', 'bgr8')  # written alternately by make-bag for raw cameras


def robot_topics_from_config(config: Any, command_topic: str | None = None) -> RobotTopics:
    """The topics of a recording for a robot config (a vla_ros.config.NodeConfig).

    command_topic: where the executed commands were recorded (default: the
        node's output.trajectory_topic, the topic the robot's controller took
        its commands from).
    """
    cameras = []
    raw_index = 0
    for stream in config.cameras.streams:
        if stream.transport == 'compressed':
            msgtype, encoding = COMPRESSED_IMAGE, 'jpeg'
        else:
            msgtype, encoding = IMAGE, RAW_ENCODINGS[raw_index % len(RAW_ENCODINGS)]
            raw_index += 1
        cameras.append(CameraTopic(stream.key, stream.topic, msgtype, encoding,
                                   stream.width or 320, stream.height or 240))
    return RobotTopics(
        cameras=tuple(cameras),
        joint_state_topic=config.joint_states.topic,
        joint_names=tuple(config.joint_names),
        lower=tuple(config.limits.lower),
        upper=tuple(config.limits.upper),
        max_velocity=tuple(config.limits.max_velocity),
        instruction_topic=config.prompt.topic,
        command_topic=command_topic or config.output.trajectory_topic or '/joint_trajectory',
        control_rate=float(config.control_rate),
        prompt=config.prompt.default,
    )


def load_config(path: str | Path) -> Any:
    """NodeConfig.from_yaml(path), the same robot YAML the node takes."""
    from vla_ros.config import NodeConfig

    return NodeConfig.from_yaml(path)


def robot_topics_from_yaml(path: str | Path, command_topic: str | None = None) -> RobotTopics:
    return robot_topics_from_config(load_config(path), command_topic)


def normalize_msgtype(msgtype: str) -> str:
    """'sensor_msgs/Image' or 'sensor_msgs/msg/Image' -> 'sensor_msgs/msg/Image'."""
    parts = msgtype.strip().split('/')
    if len(parts) == 2:
        return f'{parts[0]}/msg/{parts[1]}'
    return '/'.join(parts)


def message_class(msgtype: str) -> type:
    """The rclpy message class of 'pkg/msg/Name' (imported from the ROS Python package)."""
    from vla_ros.ros import bag_messages

    try:
        return bag_messages.message_class(normalize_msgtype(msgtype))
    except (ImportError, AttributeError) as exc:
        raise BagError(
            f"message type '{msgtype}' is not available in this Python environment: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class TopicSummary:
    """One topic of a bag: its name, message type and number of messages."""

    name: str
    msgtype: str
    count: int


@dataclasses.dataclass(frozen=True)
class BagMessage:
    """One message as recorded: topic, type, bag time (receive time, ns) and CDR bytes."""

    topic: str
    msgtype: str
    time_ns: int
    data: bytes

    @property
    def time(self) -> float:
        """Bag time in seconds."""
        return self.time_ns * 1e-9


def decode(message: BagMessage) -> Any:
    """Deserialize a message's CDR bytes into the rclpy message the node would receive."""
    from vla_ros.ros import bag_messages

    try:
        return bag_messages.deserialize(message.data, message_class(message.msgtype))
    except BagError:
        raise
    except Exception as exc:  # rclpy raises plain RuntimeError / TypeError on bad data
        raise CorruptBagError(
            f"message on '{message.topic}' at bag time {message.time:.3f} s could not be "
            f'decoded as {message.msgtype}: {exc}'
        ) from exc


def _typestore():
    from rosbags.typesys import get_typestore, Stores

    return get_typestore(Stores.ROS2_JAZZY)


def _storage_of(path: Path) -> str:
    if path.suffix == '.bag':
        return 'ros1'
    if path.suffix == '.mcap':
        return 'mcap'
    if path.suffix == '.db3':
        return 'sqlite3'
    metadata = path / 'metadata.yaml'
    text = metadata.read_text(errors='replace') if metadata.is_file() else ''
    for storage in STORAGES:
        if f'storage_identifier: {storage}' in text:
            return storage
    return 'unknown'


def _describe_problem(exc: BaseException) -> str:
    text = ' '.join(str(exc).split())
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


class BagReader:
    """A read-only view of one bag (rosbag2 sqlite3 / mcap, or ROS 1).

    Use as a context manager, or call :meth:`close`. Opening checks that the
    bag exists, can be read and holds at least one message.
    """

    def __init__(self, path: str | Path):
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        if not self.path.exists():
            raise BagNotFoundError(f'bag {self.path} does not exist')
        if self.path.is_dir() and not (self.path / 'metadata.yaml').is_file():
            files = sorted(p.name for p in self.path.iterdir() if p.suffix in ('.db3', '.mcap'))
            hint = (f'; it holds {files}: if the recording was interrupted, run '
                    f'`ros2 bag reindex {self.path}` or pass one of those files directly') if files else ''
            raise BagNotFoundError(f'{self.path} is not a rosbag2 directory (no metadata.yaml){hint}')
        if self.path.is_file() and self.path.suffix not in ('.bag', '.db3', '.mcap'):
            raise BagNotFoundError(
                f'{self.path} is not a bag: expected a rosbag2 directory, a .db3 / .mcap file '
                'or a ROS 1 .bag')
        self.storage = _storage_of(self.path)
        self._typestore = _typestore()
        self._reader = AnyReader([self.path])
        try:
            self._reader.open()
        except Exception as exc:  # sqlite3 / mcap / yaml errors of every kind
            raise CorruptBagError(
                f'bag {self.path} ({self.storage}) could not be opened; it is truncated or corrupt '
                f'({_describe_problem(exc)})') from exc
        self._is_ros1 = not self._reader.is2
        try:
            infos = self._reader.topics
            self.topics: dict[str, TopicSummary] = {
                name: TopicSummary(name, normalize_msgtype(info.msgtype or '(mixed types)'),
                                   int(info.msgcount))
                for name, info in sorted(infos.items())
            }
            self.message_count = int(self._reader.message_count)
            self.start_ns = int(self._reader.start_time) if self.message_count else 0
            self.end_ns = int(self._reader.end_time) if self.message_count else 0
        except Exception as exc:
            self.close()
            raise CorruptBagError(
                f'bag {self.path} has unreadable metadata ({_describe_problem(exc)})') from exc
        if self.message_count == 0:
            self.close()
            listing = f'; topics: {self.describe_topics()}' if self.topics else ' and no topics'
            raise EmptyBagError(f'bag {self.path} holds no messages{listing}')

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        reader, self._reader = getattr(self, '_reader', None), None
        if reader is not None and reader.stack is not None:
            reader.close()

    # -- topics ---------------------------------------------------------------

    @property
    def start_time(self) -> float:
        return self.start_ns * 1e-9

    @property
    def end_time(self) -> float:
        return self.end_ns * 1e-9

    @property
    def duration(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9

    def describe_topics(self) -> str:
        """'/a [pkg/msg/T] 12 msgs, /b [...] ...' for error messages."""
        if not self.topics:
            return '(none)'
        return ', '.join(f'{t.name} [{t.msgtype}] {t.count} msgs' for t in self.topics.values())

    def require_topic(self, topic: str, msgtypes: str | Sequence[str], what: str = '') -> TopicSummary:
        """The summary of `topic`, checked to exist and to have one of `msgtypes`.

        what: the configuration entry that names the topic (for the message).

        Raises:
            MissingTopicError: the bag has no such topic (the message lists what it has).
            TopicTypeError: the topic has another type.
        """
        wanted = [normalize_msgtype(msgtypes)] if isinstance(msgtypes, str) else [
            normalize_msgtype(t) for t in msgtypes]
        label = f' ({what})' if what else ''
        summary = self.topics.get(topic)
        if summary is None:
            raise MissingTopicError(
                f"topic '{topic}'{label} is not in bag {self.path}; the bag has: {self.describe_topics()}")
        if summary.msgtype not in wanted:
            raise TopicTypeError(
                f"topic '{topic}'{label} has type {summary.msgtype} in bag {self.path}, but the "
                f"configuration expects {' or '.join(wanted)}")
        return summary

    # -- messages -----------------------------------------------------------

    def _to_cdr(self, raw: bytes | memoryview, msgtype: str) -> bytes:
        if not self._is_ros1:
            return bytes(raw)
        store = self._typestore if msgtype in self._typestore.fielddefs else self._reader.typestore
        return bytes(store.ros1_to_cdr(raw, msgtype))

    def messages(
        self,
        topics: Iterable[str] | None = None,
        start_ns: int | None = None,
        stop_ns: int | None = None,
    ) -> Iterator[BagMessage]:
        """Messages of `topics` (all if None) with start_ns <= time < stop_ns, in bag-time order.

        Raises:
            CorruptBagError: the data ends early or cannot be parsed.
        """
        if self._reader is None:
            raise BagError(f'bag {self.path} is closed')
        wanted = None if topics is None else set(topics)
        connections = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if wanted is not None and not connections:
            return
        iterator = self._reader.messages(connections=connections, start=start_ns, stop=stop_ns)
        while True:
            try:
                connection, time_ns, raw = next(iterator)
                msgtype = normalize_msgtype(connection.msgtype)
                data = self._to_cdr(raw, connection.msgtype)
            except StopIteration:
                return
            except Exception as exc:
                raise CorruptBagError(
                    f'bag {self.path} ({self.storage}) is truncated or corrupt: reading its messages '
                    f'failed ({_describe_problem(exc)})') from exc
            yield BagMessage(connection.topic, msgtype, int(time_ns), data)


def list_topics(path: str | Path) -> list[TopicSummary]:
    """The topics of a bag, sorted by name."""
    with BagReader(path) as reader:
        return list(reader.topics.values())


# --------------------------------------------------------------- writing ---

_NUMPY_TYPES = {
    'bool': np.bool_, 'byte': np.uint8, 'octet': np.uint8, 'char': np.uint8,
    'int8': np.int8, 'uint8': np.uint8, 'int16': np.int16, 'uint16': np.uint16,
    'int32': np.int32, 'uint32': np.uint32, 'int64': np.int64, 'uint64': np.uint64,
    'float32': np.float32, 'float64': np.float64,
}


def _base_value(value: Any, base: str) -> Any:
    if base == 'string' or base == 'wstring':
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return int(value[0]) if value else 0
    if base == 'bool':
        return bool(value)
    if base in ('float32', 'float64'):
        return float(value)
    return int(value)


def _numeric_array(value: Any, base: str) -> np.ndarray:
    dtype = _NUMPY_TYPES[base]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(value), dtype=np.uint8).astype(dtype)
    return np.asarray(value, dtype=dtype).reshape(-1)


def to_rosbags(msg: Any, msgtype: str, typestore: Any) -> Any:
    """Convert an rclpy message into the equivalent ``rosbags`` message object.

    Walks the type's field definitions in the typestore, so it works for any
    message type the typestore knows.
    """
    from rosbags.typesys.base import Nodetype

    msgtype = normalize_msgtype(msgtype)
    fields = typestore.fielddefs[msgtype][1]
    values = {}
    for name, (node, detail) in fields:
        value = getattr(msg, name)
        if node == Nodetype.BASE:
            values[name] = _base_value(value, detail[0])
        elif node == Nodetype.NAME:
            values[name] = to_rosbags(value, detail, typestore)
        else:  # ARRAY or SEQUENCE
            (sub_node, sub_detail), _ = detail
            if sub_node == Nodetype.BASE:
                if sub_detail[0] in ('string', 'wstring'):
                    values[name] = [str(v) for v in value]
                else:
                    values[name] = _numeric_array(value, sub_detail[0])
            else:
                values[name] = [to_rosbags(v, sub_detail, typestore) for v in value]
    return typestore.types[msgtype](**values)


class BagWriter:
    """Write a rosbag2 bag (sqlite3 or mcap) topic by topic.

    ``write`` takes an rclpy message, a ``rosbags`` message object or CDR
    bytes. The path must not exist. On an exception inside a ``with`` block
    the bag is aborted (no metadata.yaml, so it never looks complete).
    """

    def __init__(self, path: str | Path, storage: str = 'sqlite3'):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise BagError(f"storage must be one of {list(STORAGES)}, got '{storage}'")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path} exists already; choose a new bag path (bags are never overwritten)')
        self.storage = storage
        self.typestore = _typestore()
        plugin = StoragePlugin.SQLITE3 if storage == 'sqlite3' else StoragePlugin.MCAP
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        self._connections: dict[str, tuple[Any, str]] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare a topic (done implicitly by the first ``write`` with a msgtype)."""
        msgtype = normalize_msgtype(msgtype)
        known = self._connections.get(topic)
        if known is not None:
            if known[1] != msgtype:
                raise BagError(f"topic '{topic}' was declared as {known[1]}, cannot also write {msgtype}")
            return
        if msgtype not in self.typestore.fielddefs:
            raise BagError(f"message type '{msgtype}' is unknown to the rosbags ROS 2 Jazzy typestore")
        connection = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        self._connections[topic] = (connection, msgtype)
        self.counts[topic] = 0

    def serialize(self, msg: Any, msgtype: str) -> bytes:
        """CDR bytes of an rclpy or rosbags message (bytes pass through)."""
        if isinstance(msg, (bytes, bytearray, memoryview)):
            return bytes(msg)
        if getattr(msg, '__msgtype__', None) is None:
            msg = to_rosbags(msg, msgtype, self.typestore)
        return bytes(self.typestore.serialize_cdr(msg, normalize_msgtype(msgtype), little_endian=True))

    def write(self, topic: str, time_ns: int, msg: Any, msgtype: str | None = None) -> None:
        """Append one message at bag time `time_ns` (ns)."""
        if topic not in self._connections:
            if msgtype is None:
                raise BagError(f"topic '{topic}' was not declared; pass msgtype or call add_topic first")
            self.add_topic(topic, msgtype)
        connection, declared = self._connections[topic]
        self._writer.write(connection, int(time_ns), self.serialize(msg, declared))
        self.counts[topic] += 1

    def close(self) -> None:
        """Finish the bag (writes metadata.yaml)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def abort(self) -> None:
        """Stop without writing metadata (the bag is left unreadable on purpose)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()
