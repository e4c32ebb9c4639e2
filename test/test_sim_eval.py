"""Closed-loop evaluation on simulated time (vla_ros/sim/evaluate.py, `vla-ros sim --eval`).

The scripted expert behind the policy interface drives the simulator through
the node's PolicyController and succeeds; an untrained tiny pi0 does not; and
the same expert with the profile's joint order reversed (the chain broken on
purpose) fails: the closed loop checks the wiring. Episodes are cut to 5 s of
simulated time (the expert needs under 4 s), so the whole file takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from vla_ros.sim.config import load_sim_robot, sim_robot
from vla_ros.sim.evaluate import ClosedLoopEval, ExpertPolicy, reversed_joint_order, untrained_copy

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "planar_arm.yaml"
EPISODES = range(4)


@pytest.fixture(scope="module")
def robot():
    robot = load_sim_robot(PROFILE)
    # held-out episodes (the recordings use seed 0), cut short
    return sim_robot(robot.node, dataclasses.replace(robot.sim, seed=1000, episode_timeout=5.0))


def expert_eval(robot, **kwargs) -> ClosedLoopEval:
    ev = ClosedLoopEval(robot, None, **kwargs)
    ev.policy = ExpertPolicy(ev.world)
    return ev


def test_the_expert_as_a_policy_succeeds_through_the_controller(robot):
    summary = expert_eval(robot).run(EPISODES, "expert")
    assert summary.success_rate == 1.0
    assert summary.mean_time_to_success < 4.0
    assert summary.mean_final_distance <= robot.sim.success.tolerance
    for result in summary.episodes:
        assert result.inferences >= 1 and result.chunks >= 1 and result.failures == 0
    # deterministic: the same episodes give the same outcome
    again = expert_eval(robot).run(EPISODES, "expert")
    assert [r.as_dict() for r in again.episodes] == [r.as_dict() for r in summary.episodes]


def test_reversing_the_joint_order_breaks_the_loop(robot):
    broken = reversed_joint_order(robot.node)
    assert broken.joint_names == tuple(reversed(robot.node.joint_names))
    summary = expert_eval(robot, node_config=broken).run(EPISODES, "expert, joints reversed")
    assert summary.success_rate == 0.0
    assert summary.mean_final_distance > 5 * robot.sim.success.tolerance


def test_latency_and_blank_cameras_are_options(robot):
    # The expert reads the world, not the images: blanking the cameras changes nothing for it,
    # and a longer (still short) latency is absorbed by its chunks.
    summary = expert_eval(robot, latency_ms=300, blank=["all"]).run(range(2), "expert")
    assert summary.success_rate == 1.0
    with pytest.raises(ValueError, match="unknown camera"):
        ClosedLoopEval(robot, None, blank=["nope"])


def test_an_untrained_policy_fails_where_the_expert_succeeds(robot, tmp_path):
    from vla_ros.tools.make_tiny import make_tiny_checkpoint
    from vla_ros.tools.replay_offline import load_policy

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny4", "pi0-tiny", seed=0, dims=4)
    twin = untrained_copy(checkpoint, tmp_path / "twin", seed=1)
    assert json.loads((twin / "config.json").read_text())["untrained"] is True
    policy = load_policy(robot.node, twin, seed=0)
    short = sim_robot(robot.node, dataclasses.replace(robot.sim, episode_timeout=3.0))  # 224-pixel inference
    expert = expert_eval(short).run(range(3), "expert")
    untrained = ClosedLoopEval(short, policy).run(range(3), "untrained")
    assert expert.success_rate == 1.0
    assert untrained.success_rate == 0.0
    assert untrained.mean_final_distance > 2 * robot.sim.success.tolerance
    assert all(r.inferences >= 1 and r.chunks >= 1 for r in untrained.episodes)


def test_cli_eval_expert_writes_json(tmp_path, capsys):
    from vla_ros.tools.cli import main

    out = tmp_path / "eval.json"
    code = main(["sim", "--config", str(PROFILE), "--eval", "expert", "--episodes", "2", "--seed", "1000",
                 "--eval-out", str(out)])
    assert code == 0
    document = json.loads(out.read_text())
    assert document["seed"] == 1000 and document["episodes"] == [0, 1]
    assert document["runs"][0]["successes"] == 2
    assert "2/2 succeeded" in capsys.readouterr().out
