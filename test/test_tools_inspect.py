"""`vla-ros inspect`: what a checkpoint expects, and a starter robot YAML that refuses to run unfilled."""

from __future__ import annotations

import pytest
from vla_ros.config import load_parameters_file, NodeConfig
from vla_ros.errors import ConfigError
from vla_ros.policy import check_config_fits, read_spec
from vla_ros.tools.cli import main
import yaml


def test_inspect_prints_what_the_policy_expects(tiny_checkpoint, capsys):
    assert main(["inspect", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    for fragment in (
        "family:      pi0 (pi0-tiny)",
        "slot 0 base_0_rgb, slot 1 left_wrist_0_rgb, slot 2 right_wrist_0_rgb",
        "state:       14 dims (norm stats), padded to 32",
        "actions:     14 dims per step, 50 steps per chunk",
        "prompt:      48 tokens; tokenizer: ",
        "norm_stats.json",
        "untrained",
    ):
        assert fragment in out, (fragment, out)


def test_starter_yaml_refuses_to_run_until_filled_then_fits(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "robot.yaml"
    assert main(["inspect", str(tiny_checkpoint), "--write-config", str(out)]) == 0
    assert "fill in the values marked FILL" in capsys.readouterr().out
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    params = load_parameters_file(out)
    with pytest.raises(ConfigError, match=r"joint_names\[0\].*placeholder 'FILL_joint_0'"):
        NodeConfig.from_dict(params)
    # Filled in as a user would: the node config builds and fits the checkpoint.
    params["joint_names"] = [f"joint{i}" for i in range(14)]
    for key in params["cameras"]["keys"]:
        params["cameras"][key]["topic"] = f"/robot/{key}/image_raw"
    params["output"]["trajectory_topic"] = "/arm_controller/joint_trajectory"
    with pytest.raises(ConfigError, match=r"policy.action_rate.*placeholder"):
        NodeConfig.from_dict(params)
    params["policy"]["action_rate"] = 50.0
    assert params["policy"]["tokenizer"].endswith("tokenizer.model"), "found beside the checkpoint"
    params["limits"] = {"lower": [-1.0] * 14, "upper": [1.0] * 14, "max_velocity": [1.0]}
    config = NodeConfig.from_dict(params)
    spec = read_spec(tiny_checkpoint)
    assert check_config_fits(spec, config) == [check_config_fits(spec, config)[0]]  # only the untrained note
    # Refuses to overwrite without --overwrite.
    assert main(["inspect", str(tiny_checkpoint), "--write-config", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert yaml.safe_load(out.read_text())["vla_policy"]["ros__parameters"]["dry_run"] is True


def test_inspect_a_missing_directory_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_inspect_a_lerobot_directory_names_its_cameras_and_conventions(tmp_path, capsys):
    from pathlib import Path

    fixture = Path(__file__).resolve().parent / "fixtures" / "lerobot_0_6_1" / "pi0"
    out = tmp_path / "robot.yaml"
    assert main(["inspect", str(fixture), "--write-config", str(out)]) == 0
    text = capsys.readouterr().out
    assert "provenance: lerobot" in text
    assert "slot 0 base_0_rgb <- cam_high" in text and "slot 3 empty_camera_0 (trained empty" in text
    assert "image resize 'lerobot', prompt style 'lerobot'" in text
    cameras = load_parameters_file(out)["cameras"]
    assert cameras["keys"] == ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"], "no empty slot"
    assert cameras["base_0_rgb"]["topic"] == "/FILL/cam_high/image_raw"
    # The fixture keeps its tokenizer in tokenizer/; a LeRobot directory without one gets a FILL.
    assert load_parameters_file(out)["policy"]["tokenizer"].endswith("tokenizer.model")


def test_a_checkpoint_without_a_tokenizer_gets_a_fill_for_policy_tokenizer(tmp_path, capsys):
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "lr", "pi0-tiny", seed=0, dims=14, layout="lerobot")
    (checkpoint / "tokenizer.model").unlink()  # as LeRobot saves it: no tokenizer
    out = tmp_path / "robot.yaml"
    assert main(["inspect", str(checkpoint), "--write-config", str(out)]) == 0
    assert "tokenizer: MISSING: " in capsys.readouterr().out
    params = load_parameters_file(out)
    params["joint_names"] = [f"j{i}" for i in range(14)]
    params["policy"]["action_rate"] = 50.0
    for key in params["cameras"]["keys"]:
        params["cameras"][key]["topic"] = f"/cams/{key}"
    params["output"]["trajectory_topic"] = "/arm/joint_trajectory"
    with pytest.raises(ConfigError, match=r"'policy.tokenizer': still the placeholder"):
        NodeConfig.from_dict(params)


def test_inspect_a_fast_checkpoint_names_its_action_tokenizer(tiny_fast_checkpoint, tmp_path, capsys):
    import shutil

    assert main(["inspect", str(tiny_fast_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "family:      pi0fast (pi0fast-tiny)" in out
    assert "no action expert: decodes FAST action tokens, at most 256" in out
    assert f"FAST tokenizer {tiny_fast_checkpoint / 'fast_tokenizer'} (BPE vocabulary 256" in out
    copy = tmp_path / "ck"
    shutil.copytree(tiny_fast_checkpoint, copy, ignore=shutil.ignore_patterns("fast_tokenizer"))
    assert main(["inspect", str(copy)]) == 0
    assert "action text: MISSING:" in capsys.readouterr().out
