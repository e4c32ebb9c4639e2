"""NodeConfig: YAML / flat ROS parameters -> validated frozen dataclasses; shipped YAMLs and launch file."""

from __future__ import annotations

import ast
import dataclasses
import glob
import math
import os

import pytest
from vla_ros.config import DEFAULT_NODE_NAME, load_parameters_file, NodeConfig, parameter_specs, unflatten
from vla_ros.errors import ConfigError
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "config", "*.yaml")))
LAUNCH_FILE = os.path.join(ROOT, "launch", "vla_policy.launch.py")

BASE = {
    "joint_names": ["a", "b", "c"],
    "limits": {"lower": [-1.0, -1.0, -1.0], "upper": [1.0, 1.0, 1.0], "max_velocity": [2.0]},
}


def build(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return NodeConfig.from_dict(data)


def error_of(**changes) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(**changes)
    return info.value


def test_defaults_and_shorthands():
    cfg = build()
    assert cfg.control_rate == 50.0 and cfg.control_period == pytest.approx(0.02)
    assert cfg.cameras.keys == ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    assert cfg.cameras["left_wrist_0_rgb"].topic == "/left_wrist_0_rgb/image_raw"
    assert cfg.limits.max_velocity == (2.0, 2.0, 2.0), "one value applies to every joint"
    assert cfg.limits.max_distance_from_measured == (math.inf,) * 3
    assert cfg.aggregation.mode == "temporal_ensemble"
    assert cfg.sync_config().missing_camera_policy == "mask"
    assert cfg.joint_limits().num_joints == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.control_rate = 10.0


def test_rtc_defaults_are_lerobots_and_become_rtc_settings():
    from vla_ros.types import RTCSettings

    cfg = build(**{"aggregation.mode": "rtc"})
    assert cfg.aggregation.mode == "rtc"
    rtc = cfg.rtc
    # LeRobot 0.6.1 RTCConfig: execution_horizon 10, LINEAR, max_guidance_weight 10.0.
    assert (rtc.execution_horizon, rtc.schedule, rtc.max_guidance_weight) == (10, "linear", 10.0)
    assert (rtc.mode, rtc.jacobian) == ("guided", "identity")
    assert (rtc.latency_percentile, rtc.delay_margin) == (95.0, 1)
    assert rtc.to_settings() == RTCSettings()
    custom = build(**{"rtc.schedule": "exp", "rtc.execution_horizon": 25, "rtc.max_guidance_weight": 5})
    expected = RTCSettings(execution_horizon=25, schedule="exp", max_guidance_weight=5.0)
    assert custom.rtc.to_settings() == expected
    flat = custom.to_flat()
    assert flat["rtc.schedule"] == "exp" and flat["rtc.delay_margin"] == 1
    names = {s.name: s for s in parameter_specs()}
    assert names["rtc.schedule"].choices == ("zeros", "ones", "linear", "exp")
    assert "rtc" in names["aggregation.mode"].choices


def test_compressed_camera_default_topic_and_per_camera_qos():
    cfg = build(
        **{
            "cameras.keys": ["base_0_rgb"],
            "cameras.base_0_rgb": {"transport": "compressed", "qos": "reliable"},
        }
    )
    assert cfg.cameras["base_0_rgb"].topic == "/base_0_rgb/image_raw/compressed"
    assert cfg.cameras.qos_of("base_0_rgb") == "reliable"
    assert build().cameras.qos_of("base_0_rgb") == "sensor_data"


def test_policy_options_sentinels():
    options = build(
        **{"policy.seed": -1, "policy.num_threads": 0, "policy.asset_id": ""}
    ).policy.to_policy_options()
    assert options.seed is None and options.num_threads is None and options.asset_id is None
    options = build(
        **{"policy.seed": 7, "policy.num_threads": 2, "policy.action_dims": 3}
    ).policy.to_policy_options()
    assert (options.seed, options.num_threads, options.action_dims) == (7, 2, 3)
    assert options.pack_weights is True
    assert build().joint_states.merge_partial is False
    assert build(**{"joint_states.merge_partial": True}).joint_states.merge_partial is True
    assert build(**{"policy.pack_weights": False}).policy.to_policy_options().pack_weights is False


@pytest.mark.parametrize(
    "changes, parameter, text",
    [
        ({"limits.max_velocity": [1.0, 1.0, 1.0, -2.0]}, "limits.max_velocity", "one value per joint"),
        ({"limits.max_velocity": [1.0, 1.0, -2.0]}, "limits.max_velocity[2]", "must be > 0"),
        ({"limits.lower": [-1.0, 2.0, -1.0]}, "limits.lower[1]", "must be < limits.upper[1]"),
        ({"limits.upper": [1.0, "x", 1.0]}, "limits.upper[1]", "expected a number"),
        ({"limits": {"upper": [1.0] * 3, "max_velocity": [1.0]}}, "limits.lower", "required"),
        ({"cameras.base_0_rgb.topic": "/bad topic"}, "cameras.base_0_rgb.topic", "whitespace"),
        ({"cameras.base_0_rgb.transport": "theora"}, "cameras.base_0_rgb.transport", "expected one of"),
        ({"cameras.base_0_rgb.width": -1}, "cameras.base_0_rgb.width", "size in pixels"),
        ({"cameras.base_0_rgb.tpoic": "/x"}, "cameras.base_0_rgb.tpoic", "mean 'cameras.base_0_rgb.topic'"),
        ({"cameras.keys": ["base_0_rgb", "top_0_rgb"]}, "cameras.keys[1]", "expected one of"),
        (
            {"cameras.keys": ["base_0_rgb"], "cameras.left_wrist_0_rgb": {"topic": "/x"}},
            "cameras.left_wrist_0_rgb",
            "not listed in cameras.keys",
        ),
        ({"cameras.qos": "best_effort"}, "cameras.qos", "expected one of"),
        ({"control_rate": "fast"}, "control_rate", "expected a number"),
        ({"control_rate": 0}, "control_rate", "number > 0"),
        ({"controll_rate": 50.0}, "controll_rate", "did you mean 'control_rate'"),
        ({"dry_run": "yes"}, "dry_run", "true or false"),
        ({"output.num_points": 2.5}, "output.num_points", "expected an integer"),
        ({"output.num_points": 0}, "output.num_points", "1..1000"),
        (
            {"output.trajectory_topic": "", "output.position_topic": ""},
            "output.trajectory_topic",
            "publish nothing",
        ),
        ({"joint_names": ["a", "b", "a"]}, "joint_names", "repeated"),
        ({"joint_names": []}, "joint_names", "got none"),
        ({"policy.robot_transform": "aloha"}, "policy.robot_transform", "14 ALOHA joints"),
        ({"policy.engine": "tensorrtt"}, "policy.engine", "expected one of"),
        ({"policy.delta_mask": [True, False]}, "policy.delta_mask", "one entry per joint"),
        ({"policy.action_space": "velocity"}, "policy.action_space", "expected one of"),
        ({"inference.execute_threshold": 1.5}, "inference.execute_threshold", "(0, 1]"),
        ({"inference.mode": "proces"}, "inference.mode", "did you mean 'process'"),
        ({"aggregation.mode": "average"}, "aggregation.mode", "unknown mode"),
        ({"aggregation.ensemble_m": -1.0}, "aggregation.ensemble_m", ">= 0"),
        ({"rtc.execution_horizon": -1}, "rtc.execution_horizon", ">= 0"),
        ({"rtc.execution_horizon": 2.5}, "rtc.execution_horizon", "expected an integer"),
        ({"rtc.schedule": "cosine"}, "rtc.schedule", "cosine"),
        ({"rtc.max_guidance_weight": -1.0}, "rtc.max_guidance_weight", ">= 0"),
        ({"rtc.max_guidance_weight": float("inf")}, "rtc.max_guidance_weight", "finite"),
        ({"rtc.mode": "clamped"}, "rtc.mode", "guided, trained"),
        ({"rtc.jacobian": "exact"}, "rtc.jacobian", "identity, vjp"),
        ({"rtc.latency_percentile": 0.0}, "rtc.latency_percentile", "(0, 100]"),
        ({"rtc.latency_percentile": 101}, "rtc.latency_percentile", "(0, 100]"),
        ({"rtc.delay_margin": -1}, "rtc.delay_margin", ">= 0"),
        ({"sync.missing_camera_policy": "drop"}, "sync.missing_camera_policy", "expected one of"),
        ({"watchdog.obs_timeout": 0.0}, "watchdog.obs_timeout", "number > 0"),
        ({"gil_switch_interval": 1.0}, "gil_switch_interval", "[0, 0.1]"),
        ({"executor_threads": 0}, "executor_threads", "1..64"),
        ({"policy": "fast"}, "policy", "expected a mapping"),
    ],
)
def test_errors_name_the_parameter(changes, parameter, text):
    error = error_of(**changes)
    assert error.parameter == parameter, str(error)
    assert text in str(error)


def test_ints_are_accepted_for_floats_but_not_bools():
    assert build(control_rate=100).control_rate == 100.0
    assert build(**{"limits.lower": [-1, -1, -1]}).limits.lower == (-1.0, -1.0, -1.0)
    assert error_of(control_rate=True).parameter == "control_rate"


def test_flat_parameters_round_trip():
    cfg = build(**{"cameras.keys": ["base_0_rgb", "left_wrist_0_rgb"], "cameras.left_wrist_0_rgb.width": 64})
    flat = cfg.to_flat()
    assert flat["cameras.left_wrist_0_rgb.width"] == 64 and flat["limits.lower"] == [-1.0, -1.0, -1.0]
    assert NodeConfig.from_flat(flat) == cfg
    specs = {s.name for s in parameter_specs(cfg.cameras.keys)}
    assert set(flat) == specs, "every parameter is declared, and only those"


def test_unflatten_rejects_a_value_that_is_also_a_section():
    assert unflatten({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    with pytest.raises(ConfigError):
        unflatten({"a": 1, "a.b": 2})


def test_every_parameter_has_a_description_and_a_kind():
    specs = parameter_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    for spec in specs:
        assert spec.description and spec.description[-1] in ".)", spec.name
        assert spec.kind in ("str", "bool", "int", "float", "str[]", "bool[]", "float[]")
    assert "cameras.right_wrist_0_rgb.transport" in names
    assert [s for s in specs if s.name == "inference.mode"][0].choices == ("thread", "process", "remote")


def test_parameter_file_sections(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "/**": {"ros__parameters": {"control_rate": 30.0, "dry_run": True}},
                "robot": {"vla_policy": {"ros__parameters": dict(BASE, control_rate=40.0)}},
                "other_node": {"ros__parameters": {"x": 1}},
            }
        )
    )
    cfg = NodeConfig.from_yaml(path)
    assert cfg.control_rate == 40.0 and cfg.dry_run is True
    assert load_parameters_file(path, "missing") == {
        "control_rate": 30.0,
        "dry_run": True,
    }, "/** applies to all"
    only = tmp_path / "only.yaml"
    only.write_text(yaml.safe_dump({"other_node": {"ros__parameters": {"x": 1}}}))
    with pytest.raises(ConfigError, match="no 'vla_policy: ros__parameters:' section"):
        load_parameters_file(only)
    bad = tmp_path / "bad.yaml"
    bad.write_text("vla_policy: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        NodeConfig.from_yaml(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = NodeConfig.from_yaml(path)
    assert cfg.num_joints in (4, 8, 14)  # planar arm + gripper, 7-DoF arm + gripper, ALOHA
    assert 2 <= len(cfg.cameras.keys) <= 3
    assert NodeConfig.from_flat(cfg.to_flat()) == cfg
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    # The policy node's section, and the simulator's where the profile has one (vla-ros sim).
    assert DEFAULT_NODE_NAME in data and set(data) <= {DEFAULT_NODE_NAME, "vla_sim"}
    # Every key of the file is a declared parameter (rcl would otherwise ignore a typo).
    declared = {s.name for s in parameter_specs(cfg.cameras.keys)}
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(data[DEFAULT_NODE_NAME]["ros__parameters"], "")
    assert set(flat) <= declared
    # ROS parameter arrays must not mix integers and floats.
    for name, value in flat.items():
        if isinstance(value, list):
            assert len({type(v) for v in value}) <= 1, name


def test_robot_profiles():
    aloha = NodeConfig.from_yaml(os.path.join(ROOT, "config", "aloha.yaml"))
    assert aloha.num_joints == 14 and len(aloha.cameras.keys) == 3
    assert aloha.policy.robot_transform == "aloha"
    arm = NodeConfig.from_yaml(os.path.join(ROOT, "config", "arm7dof.yaml"))
    assert arm.num_joints == 8
    assert "compressed" in {s.transport for s in arm.cameras.streams}
    assert "raw" in {s.transport for s in arm.cameras.streams}


def _launch_tree():
    with open(LAUNCH_FILE, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=LAUNCH_FILE)


def test_launch_file_matches_setup_and_configs():
    tree = _launch_tree()
    constants = {
        n.targets[0].id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign)
        and isinstance(n.value, ast.Constant)
        and isinstance(n.targets[0], ast.Name)
    }
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        setup_source = f.read()
    assert constants["PACKAGE"] == "vla_ros" and "package_name = 'vla_ros'" in setup_source
    assert f"'{constants['EXECUTABLE']} = vla_ros.ros.node:main'" in setup_source
    assert constants["NODE_NAME"] == DEFAULT_NODE_NAME
    assert os.path.isfile(os.path.join(ROOT, "config", constants["DEFAULT_CONFIG"]))
    for path in CONFIGS:
        with open(path, encoding="utf-8") as f:
            assert DEFAULT_NODE_NAME in yaml.safe_load(f), path
    # Parameter names the launch file sets (dict keys / subscripts) are node parameters.
    declared = {s.name for s in parameter_specs()}
    set_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            set_names |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.ctx, ast.Store)
        ):
            set_names.add(node.slice.value)
    assert set_names and set_names <= declared, set_names - declared
    assert {"checkpoint", "auto_activate"} <= set_names
