"""Starting vla_policy_node as a robot team does: one line and a non-zero exit when it cannot run.

Issue 9, "Node start-up a robot team can trust": parameter files rcl would
refuse, a configure failure under auto_activate, an unconfigured node that
says how to proceed, and the process-wide switch interval restored.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml


def _run_node(params_file, timeout=60.0):
    return subprocess.run(
        [sys.executable, "-m", "vla_ros.ros.node", "--ros-args", "--params-file", str(params_file)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def _params(**values):
    base = {
        "joint_names": ["j0", "j1"],
        "limits": {"lower": [-1.0, -1.0], "upper": [1.0, 1.0], "max_velocity": [1.0]},
    }
    base.update(values)
    return {"vla_policy": {"ros__parameters": base}}


@pytest.mark.parametrize(
    "text, fragments",
    [
        (
            "vla_policy:\n  ros__parameters:\n    joint_names: [a, b]\n    limits:\n      lower: [-1, 0.5]\n",
            ["parameter 'limits.lower'", "params.yaml:5", "mixes integers and floats", "1.0, not 1"],
        ),
        (
            "vla_policy:\n  ros__parameters:\n    joint_names: [a, b\n",
            ["params_file", "params.yaml:4", "not valid YAML"],
        ),
        (None, ["params_file", "cannot read", "missing.yaml"]),
    ],
    ids=["mixed_list", "yaml_syntax", "missing_file"],
)
def test_parameter_files_rcl_refuses_give_one_line(tmp_path, text, fragments):
    path = tmp_path / ("params.yaml" if text is not None else "missing.yaml")
    if text is not None:
        path.write_text(text)
    result = _run_node(path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vla_policy_node: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_replay_uses_the_same_loader(tmp_path):
    from vla_ros.config import NodeConfig
    from vla_ros.errors import ConfigError

    path = tmp_path / "robot.yaml"
    path.write_text(
        "vla_policy:\n  ros__parameters:\n    joint_names: [a, b]\n    limits:\n      lower: [-1, 0.5]\n"
    )
    with pytest.raises(ConfigError, match=r"robot.yaml:5: the list \[-1, 0.5\] mixes integers and floats"):
        NodeConfig.from_yaml(path)
    # Numbers are read as rcl reads them: 1e-3 is a float (PyYAML alone makes it a string).
    from vla_ros.config import load_parameters_file

    path.write_text("vla_policy:\n  ros__parameters:\n    limits:\n      max_velocity: [1.0, 1e-3]\n")
    assert load_parameters_file(path)["limits"]["max_velocity"] == [1.0, 0.001]


def test_configure_failure_under_auto_activate_exits_non_zero(tmp_path):
    path = tmp_path / "params.yaml"
    missing = tmp_path / "no_such_checkpoint"
    path.write_text(yaml.safe_dump(_params(checkpoint=str(missing), auto_activate=True)))
    result = _run_node(path)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("vla_policy_node: error: ") and str(missing) in last, last
    assert "Traceback" not in result.stderr


def test_an_unconfigured_node_says_how_to_proceed(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_params(checkpoint=str(tmp_path), auto_activate=False)))
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_ros.ros.node", "--ros-args", "--params-file", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        deadline = time.monotonic() + 60.0
        seen = []
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "unconfigured" in line:
                break
        text = "".join(seen)
        assert "unconfigured (auto_activate is false)" in text, text
        assert "ros2 lifecycle set /vla_policy configure" in text
        assert process.poll() is None, "it waits to be configured"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0


def test_release_restores_the_switch_interval():
    from rclpy.context import Context
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    import test_node_harness  # noqa: F401  (isolated ROS domain)
    from vla_ros.ros.node import VlaPolicyNode

    class Still:
        def infer(self, obs):
            import numpy as np

            from vla_ros.types import ActionChunk

            return ActionChunk(np.zeros((50, 2), np.float32), obs.timestamp)

    before = sys.getswitchinterval()
    context = Context()
    rclpy.init(context=context)
    overrides = {
        "joint_names": ["j0", "j1"],
        "limits.lower": [-1.0, -1.0],
        "limits.upper": [1.0, 1.0],
        "limits.max_velocity": [1.0],
        "cameras.keys": ["base_0_rgb"],
        "policy.warmup_runs": 1,
        "gil_switch_interval": 0.0007,
    }
    node = VlaPolicyNode(
        "vla_switch", context=context, policy_factory=Still,
        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
    )
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert sys.getswitchinterval() == pytest.approx(0.0007)
        # The clock is chosen at configure: switching it under running buffers is refused.
        refused = node.set_parameters([Parameter("use_sim_time", value=True)])[0]
        assert not refused.successful and "configure" in refused.reason
        # Status changes are logged at INFO (OK) and WARN alternately: rclpy refuses a
        # call site that changes severity, which once killed the executor's thread.
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        real = node.controller.status
        for level in ("WARN", "OK", "WARN", "OK"):
            node.controller.status = lambda now, level=level: dataclasses.replace(
                real(now), level=level, message=level.lower()
            )
            node._on_diagnostics_timer()
        node.controller.status = real
        node.trigger_deactivate()
        node.trigger_cleanup()
        assert sys.getswitchinterval() == pytest.approx(before)
    finally:
        node.release()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        sys.setswitchinterval(before)
