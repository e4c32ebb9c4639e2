"""The simulated planar arm (vla_ros/sim, vla_ros/ros/sim_node.py): kinematics, the trajectory
follower, rendering, the scripted expert, recorded bags, and the live node over DDS.

All but the last test run on simulated time without ROS and take well under a
second each; the node test runs SimNode in this process on a private domain.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from vla_ros.config import NodeConfig
from vla_ros.errors import ConfigError
from vla_ros.sim.config import load_sim_robot, sim_robot, SimConfig
from vla_ros.sim.episode import run_expert_episode
from vla_ros.sim.expert import ScriptedExpert
from vla_ros.sim.kinematics import PlanarArm
from vla_ros.sim.render import top_view, View, wrist_view
from vla_ros.sim.trajectory import TrajectoryFollower, TrajectoryRejected
from vla_ros.sim.world import SimWorld, Target

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "planar_arm.yaml"
LINKS = (0.30, 0.25, 0.12)


@pytest.fixture(scope="module")
def robot():
    return load_sim_robot(PROFILE)


# ------------------------------------------------------------- profile ---

def test_profile_loads_for_the_node_and_the_sim(robot):
    node = NodeConfig.from_yaml(PROFILE)  # the vla_sim section is not the node's business
    assert node.joint_names == ("planar_joint1", "planar_joint2", "planar_joint3", "planar_gripper")
    assert robot.arm_index == (0, 1, 2) and robot.gripper_index == 3
    assert robot.sim.link_lengths == LINKS
    assert robot.camera_views() == {"base_0_rgb": ("top", 160, 120), "left_wrist_0_rgb": ("wrist", 96, 96)}
    assert {s.transport for s in node.cameras.streams} == {"raw", "compressed"}


def test_sim_section_rejects_unknown_keys_and_bad_values(robot):
    with pytest.raises(ConfigError, match="target.colour.*did you mean 'target.colors'"):
        SimConfig.from_dict({"target": {"colour": ["red"]}})
    with pytest.raises(ConfigError, match="link_lengths"):
        SimConfig.from_dict({"link_lengths": [0.3, -0.2, 0.1]})
    with pytest.raises(ConfigError, match="arm_joints"):
        sim_robot(robot.node, SimConfig(arm_joints=("planar_joint1", "nope", "planar_joint3")))
    with pytest.raises(ConfigError, match=r"home\[1\]"):
        sim_robot(robot.node, SimConfig(home=(0.0, 3.0, 0.0, 0.0)))


def test_a_profile_without_a_sim_section_gets_the_defaults():
    aloha = load_sim_robot(ROOT / "config" / "aloha.yaml")
    assert aloha.sim == SimConfig()
    assert aloha.arm_index == (0, 1, 2)
    assert aloha.joint_names[aloha.gripper_index] == "left_gripper"
    world = SimWorld(aloha)
    assert run_expert_episode(world, ScriptedExpert(world), 0, cameras=False).success
    assert set(world.views) == {"base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"}


# ---------------------------------------------------------- kinematics ---

def test_forward_kinematics_matches_hand_computed_poses():
    arm = PlanarArm(LINKS)
    np.testing.assert_allclose(arm.fk([0, 0, 0]), [0.67, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(arm.fk([math.pi / 2, 0, 0]), [0.0, 0.67, math.pi / 2], atol=1e-12)
    # elbow up 90 degrees, wrist back down: x = l1 + l3, y = l2, heading 0
    np.testing.assert_allclose(arm.fk([0, math.pi / 2, -math.pi / 2]), [0.42, 0.25, 0.0], atol=1e-12)
    # 30 / 60 / -45 degrees
    a1, a12, a123 = math.radians(30), math.radians(90), math.radians(45)
    expected = [0.3 * math.cos(a1) + 0.25 * math.cos(a12) + 0.12 * math.cos(a123),
                0.3 * math.sin(a1) + 0.25 * math.sin(a12) + 0.12 * math.sin(a123), a123]
    np.testing.assert_allclose(arm.fk(np.radians([30, 60, -45])), expected, atol=1e-12)
    np.testing.assert_allclose(PlanarArm(LINKS, base=(0.1, -0.2)).fk([0, 0, 0])[:2], [0.77, -0.2], atol=1e-12)


def test_jacobian_matches_finite_differences():
    arm = PlanarArm(LINKS)
    q = np.array([0.3, -0.8, 1.1])
    eps = 1e-7
    numeric = np.column_stack([(arm.fk(q + eps * e) - arm.fk(q - eps * e)) / (2 * eps) for e in np.eye(3)])
    np.testing.assert_allclose(arm.jacobian(q), numeric, atol=1e-6)


def test_inverse_kinematics_reaches_targets_within_limits(robot):
    lower, upper = robot.lower[:3], robot.upper[:3]
    arm = PlanarArm(LINKS, lower=lower, upper=upper)
    rng = np.random.default_rng(0)
    for _ in range(50):
        r, a = rng.uniform(0.25, 0.6), rng.uniform(-1.4, 1.4)
        x, y = r * math.cos(a), r * math.sin(a)
        q = arm.ik(x, y, reference=rng.uniform(-1, 1, 3))
        assert q is not None, (x, y)
        assert np.linalg.norm(arm.fk(q)[:2] - [x, y]) < 1e-9
        assert arm.within_limits(q)
    assert arm.ik(0.9, 0.0) is None  # beyond the reach of 0.67 m
    q = arm.ik_dls(np.array([0.4, 0.2]), np.array([0.1, 0.5, 0.5]))
    assert np.linalg.norm(arm.fk(q)[:2] - [0.4, 0.2]) < 1e-5
    # the solution closest to the reference: elbow up vs elbow down
    up = arm.ik(0.45, 0.0, reference=[-0.5, 1.0, 0.5])
    down = arm.ik(0.45, 0.0, reference=[0.5, -1.0, -0.5])
    assert up[1] > 0 > down[1]


# ----------------------------------------------------------- follower ---

def follower(max_velocity=(10.0, 10.0), lower=(-3.0, -3.0), upper=(3.0, 3.0), initial=(0.0, 0.0)):
    return TrajectoryFollower(["a", "b"], lower, upper, max_velocity, initial, time=0.0)


def run_to(f, t_end, dt=0.01):
    out = []
    t = f.time
    while t < t_end - 1e-9:
        t = min(t_end, t + dt)
        out.append((t, *f.step(t)))
    return out


def test_follower_interpolates_linearly_between_points():
    f = follower()
    f.set_trajectory(["a", "b"], [1.0, 2.0], [[1.0, -1.0], [3.0, -1.0]])
    ref, vel = f.reference(0.5)
    np.testing.assert_allclose(ref, [0.5, -0.5])  # from the state at receipt to the first point
    np.testing.assert_allclose(vel, [1.0, -1.0])
    np.testing.assert_allclose(f.reference(1.25)[0], [1.5, -1.0])
    np.testing.assert_allclose(f.reference(5.0)[0], [3.0, -1.0])  # holds the last point
    np.testing.assert_allclose(f.reference(5.0)[1], [0.0, 0.0])
    run_to(f, 1.5)
    np.testing.assert_allclose(f.position, [2.0, -1.0], atol=1e-9)  # well inside the velocity limits


def test_follower_uses_cubic_splines_with_velocities():
    f = follower()
    f.set_trajectory(["a", "b"], [1.0, 2.0], [[1.0, 0.0], [2.0, 0.0]], velocities=[[1.0, 0.0], [0.0, 0.0]])
    p, v = f.reference(1.0)
    np.testing.assert_allclose(p, [1.0, 0.0])
    np.testing.assert_allclose(v, [1.0, 0.0])
    p, v = f.reference(1.5)
    # Hermite at s = 0.5: (p0 + p1) / 2 + h (v0 - v1) / 8
    np.testing.assert_allclose(p, [1.5 + 1.0 / 8, 0.0])
    assert not np.isclose(p[0], 1.5)  # not the linear value
    np.testing.assert_allclose(f.reference(2.0)[0], [2.0, 0.0])


def test_a_new_trajectory_replaces_the_current_one_from_now():
    f = follower()
    f.set_trajectory(["a", "b"], [2.0], [[2.0, 2.0]])
    run_to(f, 0.5)
    np.testing.assert_allclose(f.position, [0.5, 0.5], atol=1e-9)
    f.set_trajectory(["a", "b"], [1.0], [[-0.5, 0.5]], now=0.5)  # header stamp 0: start on receipt
    np.testing.assert_allclose(f.reference(0.5)[0], [0.5, 0.5])  # starts where the joints are
    np.testing.assert_allclose(f.reference(1.0)[0], [0.0, 0.5])
    trace = run_to(f, 3.0)
    assert max(p[0] for _, p, _ in trace) <= 0.5 + 1e-9  # the old goal (2.0) is gone
    np.testing.assert_allclose(f.position, [-0.5, 0.5], atol=1e-9)
    assert f.trajectories_received == 2


def test_a_header_stamp_sets_the_trajectory_start():
    f = follower()
    f.set_trajectory(["a", "b"], [0.5], [[1.0, 0.0]], start_time=1.5, now=0.0)
    np.testing.assert_allclose(f.reference(1.0)[0], [0.5, 0.0])  # halfway from now (0) to 1.5 + 0.5 = 2
    np.testing.assert_allclose(f.reference(2.0)[0], [1.0, 0.0])
    # a stamp in the past: sampled where now falls, no segment from the current state
    g = follower()
    run_to(g, 1.0)
    g.set_trajectory(["a", "b"], [0.0, 1.0], [[0.0, 0.0], [2.0, 0.0]], start_time=0.5, now=1.0)
    np.testing.assert_allclose(g.reference(1.0)[0], [1.0, 0.0])


def test_follower_clamps_to_velocity_and_position_limits():
    f = follower(max_velocity=(1.5, 0.5), upper=(0.4, 3.0))
    f.set_trajectory(["a", "b"], [0.1], [[1.0, 1.0]])  # 10 rad/s asked for
    trace = run_to(f, 0.2)
    velocities = np.array([v for _, _, v in trace])
    assert np.all(np.abs(velocities) <= np.array([1.5, 0.5]) + 1e-9)
    np.testing.assert_allclose(trace[9][1], [0.15, 0.05], atol=1e-9)  # after 0.1 s at the limits
    run_to(f, 5.0)
    np.testing.assert_allclose(f.position, [0.4, 1.0], atol=1e-9)  # a clipped at its upper limit


def test_follower_takes_partial_joint_lists_and_rejects_bad_ones():
    f = follower(initial=(0.3, -0.3))
    f.set_trajectory(["b"], [0.5], [[0.7]])
    np.testing.assert_allclose(f.reference(1.0)[0], [0.3, 0.7])  # 'a' holds
    with pytest.raises(TrajectoryRejected, match="unknown joints"):
        f.set_trajectory(["a", "c"], [0.5], [[0.0, 0.0]])
    with pytest.raises(TrajectoryRejected, match="strictly increasing"):
        f.set_trajectory(["a", "b"], [0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(TrajectoryRejected, match="positions"):
        f.set_trajectory(["a", "b"], [0.5], [[0.0]])


# ------------------------------------------------------------- render ---

def _color_centroid(image: np.ndarray, rgb) -> tuple[np.ndarray, int]:
    mask = np.all(np.abs(image.astype(int) - np.asarray(rgb)) < 40, axis=2)
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if xs.size else np.array([np.nan, np.nan]), int(xs.size)


@pytest.mark.parametrize("target", [(0.45, 0.25), (0.30, -0.40), (0.55, 0.0)])
def test_target_pixels_are_where_the_projection_says(robot, target):
    world = SimWorld(robot)
    world.reset(0, 0.0)
    world.target = Target(target[0], target[1], "red")
    # fold the arm away from the target so that it cannot hide it
    side = -1.0 if target[1] >= 0 else 1.0
    world.follower.reset(np.array([side * 1.5, 0.0, 0.0, 0.04]), 0.0)
    image = world.render("base_0_rgb")
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8
    view = world.view("base_0_rgb")
    centroid, count = _color_centroid(image, (220, 30, 30))
    np.testing.assert_allclose(centroid, view.project(np.array(target)), atol=0.5)
    radius_px = robot.sim.target.radius * view.scale
    assert abs(count - math.pi * radius_px ** 2) < 0.35 * math.pi * radius_px ** 2
    # the top camera has the arm's forward (+x) up and its left (+y) on the left of the image
    u, v = view.project(np.array(target))
    assert (u < 80) == (target[1] > 0) or abs(target[1]) < 1e-9
    assert v < view.project(np.zeros(2))[1]


def test_wrist_view_centres_the_target_ahead_of_the_gripper(robot):
    world = SimWorld(robot)
    world.reset(0, 0.0)
    q = np.array([0.4, 0.9, -0.6, 0.04])
    world.follower.reset(q, 0.0)
    x, y, phi = world.ee_pose()
    ahead = robot.sim.wrist_view_extent / 3
    world.target = Target(x + ahead * math.cos(phi), y + ahead * math.sin(phi), "green")
    image = world.render("left_wrist_0_rgb")
    centroid, count = _color_centroid(image, (30, 170, 50))
    assert count > 100
    np.testing.assert_allclose(centroid, [(96 - 1) / 2, (96 - 1) / 2], atol=0.5)
    # a target to the gripper's left shows on the image's left
    world.target = Target(x + ahead * math.cos(phi) - 0.05 * math.sin(phi),
                          y + ahead * math.sin(phi) + 0.05 * math.cos(phi), "green")
    centroid, _ = _color_centroid(world.render("left_wrist_0_rgb"), (30, 170, 50))
    assert centroid[0] < 47.5 - 10


def test_view_projection_by_hand():
    view = View(101, 51, center=(1.0, 2.0), heading=0.0, scale=100.0)
    np.testing.assert_allclose(view.project(np.array([1.0, 2.0])), [50.0, 25.0])
    np.testing.assert_allclose(view.project(np.array([1.1, 2.0])), [50.0, 15.0])  # forward is up
    np.testing.assert_allclose(view.project(np.array([1.0, 2.1])), [40.0, 25.0])  # left is left
    turned = View(101, 51, center=(0.0, 0.0), heading=math.pi / 2, scale=100.0)
    np.testing.assert_allclose(turned.project(np.array([0.0, 0.1])), [50.0, 15.0], atol=1e-9)
    base_v = top_view(160, 120, (0.0, 0.0), 0.67, 1.4).project(np.zeros(2))[1]
    assert base_v == pytest.approx(119 - 0.12 * 120 + 0.5)  # 12 % of the height above the bottom
    assert wrist_view(96, 96, np.array([0.2, 0.0, 0.0]), 0.3).center == pytest.approx((0.3, 0.0))


# ------------------------------------------------------------- expert ---

def test_the_expert_succeeds_on_ten_seeded_episodes(robot):
    world = SimWorld(robot)
    times = []
    targets = set()
    for episode in range(10):
        status = run_expert_episode(world, ScriptedExpert(world), episode, cameras=False)
        assert status.success, status
        assert status.distance < robot.sim.success.tolerance
        assert world.position[3] < 0.005  # the gripper closed at the end
        times.append(status.success_time)
        targets.add((round(status.target.x, 6), round(status.target.y, 6)))
    assert len(targets) == 10  # a new target every episode
    assert max(times) < robot.sim.episode_timeout
    # episodes are reproducible: the same index gives the same target
    assert world.reset(3, 0.0).target == SimWorld(robot).reset(3, 0.0).target


def test_without_commands_an_episode_times_out(robot):
    short = sim_robot(robot.node, dataclasses.replace(robot.sim, episode_timeout=1.0))
    world = SimWorld(short)
    world.reset(0, 0.0)
    world.step(1.0)
    status = world.status()
    assert not status.success and status.timed_out and status.done


def test_success_needs_the_hold_time(robot):
    world = SimWorld(robot)
    world.reset(0, 0.0)
    q = world.arm.ik(world.target.x, world.target.y)
    world.command(robot.joint_names[:3], [0.01], [q])
    world.step(0.02)
    # the velocity limit keeps it from jumping there; run until it arrives
    while not world.status().reached and world.time < 5.0:
        world.step(world.time + 0.01)
    assert world.status().reached
    arrived = world.time
    assert not world.status().success
    world.step(arrived + robot.sim.success.hold + 0.011)
    assert world.status().success


# ------------------------------------------------------------- record ---

def test_recorded_bag_reads_back_with_the_profile_topics(robot, tmp_path):
    from vla_ros.sim.record import record_episodes
    from vla_ros.tools.bag_io import BagReader, decode
    from vla_ros.tools.replay_plan import plan_replay

    summary = record_episodes(robot, tmp_path / "bags", [1])
    assert summary[0]["success"] and summary[0]["bag"] == "episode_001"
    assert json.loads((tmp_path / "bags" / "episodes.json").read_text())["episodes"][0]["episode"] == 1
    node = robot.node
    with BagReader(tmp_path / "bags" / "episode_001") as bag:
        types = {t.name: t.msgtype for t in bag.topics.values()}
        assert types == {
            "/top_camera/image_raw": "sensor_msgs/msg/Image",
            "/wrist_camera/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
            "/joint_states": "sensor_msgs/msg/JointState",
            "/arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
            "/instruction": "std_msgs/msg/String",
        }
        duration = bag.duration
        assert 1.0 < duration < robot.sim.episode_timeout
        counts = {t.name: t.count for t in bag.topics.values()}
        assert abs(counts["/joint_states"] - duration * 50) <= 2
        assert abs(counts["/top_camera/image_raw"] - duration * 10) <= 2
        assert abs(counts["/arm_controller/joint_trajectory"] - duration * 20) <= 2
        assert counts["/instruction"] == 1
        plan_replay(bag, node)  # what `vla-ros replay` checks first
        last_ns = {}
        for message in bag.messages():
            msg = decode(message)
            assert message.time_ns >= last_ns.get(message.topic, 0)
            last_ns[message.topic] = message.time_ns
            if message.topic == "/instruction":
                assert msg.data == summary[0]["instruction"]
                assert msg.data.startswith("reach the ") and msg.data.endswith(" ball")
            elif message.topic == "/arm_controller/joint_trajectory":
                assert list(msg.joint_names) == list(node.joint_names)
                assert len(msg.points) == node.output.num_points
                assert msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 0
                assert msg.points[0].time_from_start.nanosec == 50_000_000  # one control period ahead
                last_command = np.array(msg.points[-1].positions)
            else:
                stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                assert stamp_ns == message.time_ns  # header stamps are the bag times
                if message.topic == "/joint_states":
                    assert list(msg.name) == list(node.joint_names)
                    last_joints = np.array(msg.position)
                elif message.topic == "/top_camera/image_raw":
                    assert (msg.width, msg.height, msg.encoding) == (160, 120, "rgb8")
    # the last command is where the joints ended up (same joints, same order)
    np.testing.assert_allclose(last_command, last_joints, atol=1e-3)
    # the bag ends with the arm at the target
    world = SimWorld(robot)
    world.reset(1, 0.0)
    world.follower.reset(last_joints, 0.0)
    assert world.distance() < robot.sim.success.tolerance


def test_recording_never_overwrites(robot, tmp_path):
    from vla_ros.sim.record import record_episodes
    from vla_ros.tools.bag_io import BagError

    (tmp_path / "episode_000").mkdir()
    with pytest.raises(BagError, match="never overwritten"):
        record_episodes(robot, tmp_path, [0])


def test_cli_record_needs_the_expert(tmp_path, capsys):
    from vla_ros.tools import cli

    rc = cli.main(["sim", "--config", str(PROFILE), "--record", str(tmp_path / "r"), "--episodes", "1"])
    assert rc == 2
    assert "--expert" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------- live node ---

def test_sim_node_follows_a_trajectory_and_resets_over_dds(robot):
    import threading
    import time

    import test_node_harness  # noqa: F401  (a private ROS domain, localhost only, before any context)
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image, JointState
    from std_msgs.msg import Bool, String
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory
    from vla_ros.ros.command_msgs import trajectory_msg
    from vla_ros.ros.qos import COMMAND_QOS, INSTRUCTION_QOS
    from vla_ros.ros.sim_node import SimNode

    prefix = "/sim_test"
    node_cfg = robot.node
    # the profile's topics under a prefix, sim time with /clock
    flat = node_cfg.to_flat()
    flat.update({"joint_states.topic": f"{prefix}/joint_states", "prompt.topic": f"{prefix}/instruction",
                 "output.trajectory_topic": f"{prefix}/joint_trajectory",
                 "cameras.base_0_rgb.topic": f"{prefix}/top",
                 "cameras.left_wrist_0_rgb.topic": f"{prefix}/wrist"})
    sim = dataclasses.replace(robot.sim, publish_clock=True, real_time_factor=1.0, home_noise=0.0)
    live = sim_robot(NodeConfig.from_flat(flat), sim)

    context = Context()
    rclpy.init(context=context)
    sim_node = SimNode(live, context=context, node_name="vla_sim_test")
    client = rclpy.create_node("sim_test_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sim_node)
    executor.add_node(client)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    got = {"joints": [], "top": 0, "wrist": 0, "prompt": [], "success": []}
    lock = threading.Lock()

    def keep(key):
        def callback(msg):
            with lock:
                if isinstance(got[key], list):
                    got[key].append(msg)
                else:
                    got[key] += 1
        return callback

    try:
        client.create_subscription(JointState, f"{prefix}/joint_states", keep("joints"),
                                   qos_profile_sensor_data)
        client.create_subscription(Image, f"{prefix}/top", keep("top"), qos_profile_sensor_data)
        client.create_subscription(CompressedImage, f"{prefix}/wrist", keep("wrist"), qos_profile_sensor_data)
        client.create_subscription(String, f"{prefix}/instruction", keep("prompt"), INSTRUCTION_QOS)
        client.create_subscription(Bool, "/vla_sim_test/success", keep("success"), INSTRUCTION_QOS)
        command_pub = client.create_publisher(JointTrajectory, f"{prefix}/joint_trajectory", COMMAND_QOS)
        reset = client.create_client(Trigger, "/vla_sim_test/reset")

        def wait_for(condition, timeout=10.0 * test_node_harness.WAIT_SCALE):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with lock:
                    if condition():
                        return True
                time.sleep(0.02)
            return False

        assert wait_for(lambda: len(got["joints"]) >= 5 and got["top"] and got["wrist"] and got["prompt"])
        with lock:
            start = np.array(got["joints"][-1].position)
            first_prompt = got["prompt"][-1].data
        np.testing.assert_allclose(start, live.home, atol=1e-6)  # no home noise
        assert got["joints"][-1].header.stamp.sec >= int(sim.start_time)  # simulated stamps
        # the command: the IK solution for the target, reached within 1 s
        target = sim_node.world.target
        q = sim_node.world.arm.ik(target.x, target.y, reference=start[:3])
        goal = np.append(q, 0.04)
        command_pub.publish(trajectory_msg(live.joint_names, [1.0], goal[None, :]))
        assert wait_for(lambda: got["success"] and got["success"][-1].data), "no success reported"
        with lock:
            final = np.array(got["joints"][-1].position)
        assert np.linalg.norm(final - goal) < np.linalg.norm(start - goal) * 0.2
        assert sim_node.rejected == 0

        assert reset.wait_for_service(timeout_sec=5.0)
        future = reset.call_async(Trigger.Request())
        assert wait_for(future.done)
        reply = json.loads(future.result().message)
        assert future.result().success and reply["episode"] == 1 and not reply["success"]
        assert (reply["target"]["x"], reply["target"]["y"]) != (round(target.x, 5), round(target.y, 5))
        assert wait_for(lambda: got["prompt"][-1].data == reply["instruction"]
                        and not got["success"][-1].data)
        assert first_prompt.startswith("reach the ")
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)
        sim_node.destroy_node()
        client.destroy_node()
        rclpy.try_shutdown(context=context)
