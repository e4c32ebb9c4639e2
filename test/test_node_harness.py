"""Test-side ROS 2 plumbing shared by the node tests (no tests of its own).

Importing this module puts the process on its own ROS domain (derived from the
pid) and on localhost discovery, before any rclpy context exists, so that
parallel test runs and other ROS 2 processes on the machine never see each
other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import os
import threading
import time

os.environ["ROS_DOMAIN_ID"] = str(os.getpid() % 100 + 1)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_ros.ros.builtin_time import seconds_to_stamp  # noqa: E402
from vla_ros.ros.image_msgs import rgb_to_compressed_msg, rgb_to_image_msg  # noqa: E402
from vla_ros.ros.qos import INSTRUCTION_QOS  # noqa: E402

# Multiplier on positive waits (VLA_ROS_TEST_WAIT_SCALE overrides).
WAIT_SCALE = float(os.environ.get("VLA_ROS_TEST_WAIT_SCALE", "3"))

JOINT_NAMES = [
    "left_waist",
    "left_shoulder",
    "left_elbow",
    "left_forearm_roll",
    "left_wrist_angle",
    "left_wrist_rotate",
    "left_gripper",
    "right_waist",
    "right_shoulder",
    "right_elbow",
    "right_forearm_roll",
    "right_wrist_angle",
    "right_wrist_rotate",
    "right_gripper",
]
# Measured positions the harness publishes (mid-range, grippers half open).
MEASURED = np.array([0.1 * (i % 7) - 0.2 for i in range(14)])


def test_harness_sets_an_isolated_domain():
    assert 1 <= int(os.environ["ROS_DOMAIN_ID"]) <= 100
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


class Harness:
    """A test node that plays the robot: cameras, joint states, instruction; records the node's output.

    cameras: key -> (topic, kind) with kind 'rgb8', 'bgr8', ... (raw Image) or 'jpeg' (CompressedImage).
    """

    def __init__(
        self,
        prefix: str,
        cameras: Mapping[str, tuple[str, str]],
        size: tuple[int, int] = (240, 320),
        node_name: str = "vla_policy",
        camera_rate: float = 30.0,
        joint_rate: float = 100.0,
    ):
        self.prefix = prefix
        self.node_name = node_name
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"vla_test_harness_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.trajectories: list[tuple[float, JointTrajectory]] = []
        self.positions: list[tuple[float, Float64MultiArray]] = []
        self.debug_trajectories: list[tuple[float, JointTrajectory]] = []
        self.diagnostics: list[tuple[float, dict]] = []
        self.camera_enabled = dict.fromkeys(cameras, True)
        self.joints_enabled = True
        self.measured = MEASURED.copy()

        node = self.node
        self._camera_msgs = {}
        self._camera_pubs = {}
        for i, (key, (topic, kind)) in enumerate(cameras.items()):
            rgb = make_image(size[0], size[1], i)
            if kind == "jpeg":
                from sensor_msgs.msg import CompressedImage

                msg = rgb_to_compressed_msg(rgb, "jpeg")
                pub = node.create_publisher(CompressedImage, topic, qos_profile_sensor_data)
            else:
                from sensor_msgs.msg import Image

                msg = rgb_to_image_msg(rgb, kind)
                pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
            self._camera_msgs[key] = msg
            self._camera_pubs[key] = pub
            node.create_timer(1.0 / camera_rate, self._camera_callback(key))
        self.joint_pub = node.create_publisher(JointState, f"{prefix}/joint_states", qos_profile_sensor_data)
        self.prompt_pub = node.create_publisher(String, f"{prefix}/instruction", INSTRUCTION_QOS)
        node.create_timer(1.0 / joint_rate, self._publish_joints)
        node.create_subscription(
            JointTrajectory, f"{prefix}/joint_trajectory", self._recorder(self.trajectories), 100
        )
        node.create_subscription(Float64MultiArray, f"{prefix}/commands", self._recorder(self.positions), 100)
        node.create_subscription(
            JointTrajectory,
            f"/{node_name}/debug/joint_trajectory",
            self._recorder(self.debug_trajectories),
            100,
        )
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    # -- publishing ---------------------------------------------------------

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _camera_callback(self, key: str) -> Callable[[], None]:
        def publish() -> None:
            if self.camera_enabled[key]:
                msg = self._camera_msgs[key]
                msg.header.stamp = seconds_to_stamp(self.now())
                self._camera_pubs[key].publish(msg)

        return publish

    def joint_state_msg(
        self,
        positions: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
        stamp: float | None = None,
    ) -> JointState:
        """Joint names in reverse order plus an extra joint, as a robot driver might send them."""
        positions = self.measured if positions is None else np.asarray(positions, dtype=np.float64)
        names = list(JOINT_NAMES) if names is None else list(names)
        order = list(range(len(names)))[::-1]
        msg = JointState()
        msg.header.stamp = seconds_to_stamp(self.now() if stamp is None else stamp)
        msg.name = ["gantry_extra_joint"] + [names[i] for i in order]
        msg.position = [0.0] + [float(positions[i]) for i in order]
        return msg

    def _publish_joints(self) -> None:
        if self.joints_enabled:
            self.joint_pub.publish(self.joint_state_msg())

    def publish_camera(self, key: str, msg, times: int = 3) -> None:
        """Publish one (possibly bad) message on a camera topic a few times (best-effort QoS)."""
        for _ in range(times):
            self._camera_pubs[key].publish(msg)
            time.sleep(0.03)

    def publish_joint_state(self, msg: JointState, times: int = 3) -> None:
        for _ in range(times):
            self.joint_pub.publish(msg)
            time.sleep(0.01)

    def publish_prompt(self, text: str) -> None:
        self.prompt_pub.publish(String(data=text))

    # -- recording ----------------------------------------------------------

    def _recorder(self, store: list) -> Callable:
        def record(msg) -> None:
            with self.lock:
                store.append((time.monotonic(), msg))

        return record

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{self.node_name}: policy":
                values = {kv.key: kv.value for kv in status.values}
                values["_level"] = (
                    int.from_bytes(status.level, "little")
                    if isinstance(status.level, bytes)
                    else int(status.level)
                )
                values["_message"] = status.message
                with self.lock:
                    self.diagnostics.append((time.monotonic(), values))

    def latest_diagnostics(self) -> dict | None:
        with self.lock:
            return self.diagnostics[-1][1] if self.diagnostics else None

    def since(self, store: list, t0: float) -> list:
        with self.lock:
            return [msg for t, msg in store if t >= t0]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
        # Positive waits return as soon as the predicate holds; the scale only lengthens
        # the wait before a failure, for CI on two shared cores.
        deadline = time.monotonic() + timeout * WAIT_SCALE
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(poll)
        return predicate()

    def wait_for_diagnostics(self, predicate: Callable[[dict], bool], timeout: float) -> dict | None:
        """The first diagnostics (received from now on) that satisfy predicate, else None."""
        t0 = time.monotonic()
        found: list[dict] = []

        def check() -> bool:
            for values in self.since(self.diagnostics, t0):
                if predicate(values):
                    found.append(values)
                    return True
            return False

        self.wait_for(check, timeout)
        return found[0] if found else None

    def call_trigger(self, name: str, timeout: float = 5.0) -> Trigger.Response:
        client = self.node.create_client(Trigger, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
            future = client.call_async(Trigger.Request())
            assert self.wait_for(future.done, timeout), f"service {name} did not answer"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def is_hold(msg: JointTrajectory) -> bool:
    """Every point at the same position with zero velocity."""
    first = np.array(msg.points[0].positions)
    return all(np.array_equal(np.array(p.positions), first) and not np.any(p.velocities) for p in msg.points)


def duration_s(d) -> float:
    return d.sec + d.nanosec * 1e-9


def check_trajectory(
    msg: JointTrajectory, joint_names: Sequence[str], period: float, num_points: int
) -> None:
    """joint_trajectory_controller conventions (docs/control.md, "JointTrajectory points")."""
    assert list(msg.joint_names) == list(joint_names)
    assert msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 0
    assert len(msg.points) == num_points
    times = [duration_s(p.time_from_start) for p in msg.points]
    assert abs(times[0] - period) < 1e-6, times
    assert all(b > a for a, b in zip(times, times[1:])), times
    for p in msg.points:
        assert len(p.positions) == len(joint_names) and len(p.velocities) == len(joint_names)
        assert np.all(np.isfinite(p.positions)) and np.all(np.isfinite(p.velocities))
    assert not np.any(msg.points[-1].velocities), "the last point must have zero velocity"
