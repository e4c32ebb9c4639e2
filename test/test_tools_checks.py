"""The tools' one-line errors (exit 2) and their outputs' modes (0644 whatever the umask).

`vla-ros infer` and `vla-ros replay` check the robot against the checkpoint
before loading it; `make-tiny` never overwrites a directory by accident;
`bench --runs 0` and a config.json that is not an object are one line; a
failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import stat

import numpy as np
import pytest
from vla_ros.observation.normalize import save_norm_stats
from vla_ros.tools import make_bag
from vla_ros.tools.cli import build_parser, main
from vla_ros.tools.make_tiny import make_norm_stats
import yaml

JOINTS = [f"j{i}" for i in range(14)]


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(rc, err, command):
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith(f"vla-ros {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def private_umask():
    old = os.umask(0o077)
    yield
    os.umask(old)


def assert_shared(root: Path) -> None:
    """Every file 0644, every directory 0755 (root included)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"


def corrupt_copy(checkpoint, tmp_path, name="ckpt", state_dims=None, config_json=None):
    out = tmp_path / name
    shutil.copytree(checkpoint, out)
    if state_dims is not None:
        save_norm_stats(out / "assets" / "robot" / "norm_stats.json", make_norm_stats(state_dims, 0))
    if config_json is not None:
        (out / "config.json").write_text(config_json)
    return out


# ------------------------------------------------------------------ infer ---


def save_obs(path, **arrays):
    arrays.setdefault("base_0_rgb", np.zeros((48, 64, 3), np.uint8))
    arrays.setdefault("state", np.zeros(14, np.float32))
    arrays.setdefault("prompt", "pick up the cube")
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_infer_help_documents_the_observation_file():
    sub = build_parser()._subparsers._group_actions[0].choices["infer"]
    text = sub.format_help()
    for key in ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb", "state", "prompt",
                "tokenized_prompt", "tokenized_prompt_mask", "--action-dims"):
        assert key in text
    assert "observation file" in text


def test_infer_unknown_keys_list_the_expected_ones(tiny_checkpoint, tmp_path, capsys):
    obs = save_obs(tmp_path / "obs.npz", cam_high=np.zeros((4, 4, 3), np.uint8), joint_pos=np.zeros(3))
    line = one_line_error(*run_cli(capsys, "infer", "--checkpoint", tiny_checkpoint, "--obs", obs)[::2],
                          "infer")
    assert "unknown key(s) ['cam_high', 'joint_pos']" in line
    assert "'base_0_rgb'" in line and "'tokenized_prompt_mask'" in line and "'state'" in line


def test_infer_without_a_camera(tiny_checkpoint, tmp_path, capsys):
    obs = save_obs(tmp_path / "obs.npz", base_0_rgb=None)
    line = one_line_error(*run_cli(capsys, "infer", "--checkpoint", tiny_checkpoint, "--obs", obs)[::2],
                          "infer")
    assert "no camera image" in line and "base_0_rgb" in line


def test_infer_nan_state(tiny_checkpoint, tmp_path, capsys):
    state = np.zeros(14, np.float32)
    state[2] = np.nan
    obs = save_obs(tmp_path / "obs.npz", state=state)
    line = one_line_error(*run_cli(capsys, "infer", "--checkpoint", tiny_checkpoint, "--obs", obs)[::2],
                          "infer")
    assert "NaN/inf" in line and "[2]=nan" in line and str(obs) in line


def test_infer_state_that_does_not_fit_the_norm_stats(tiny_checkpoint, tmp_path, capsys):
    checkpoint = corrupt_copy(tiny_checkpoint, tmp_path, state_dims=7)
    obs = save_obs(tmp_path / "obs.npz", state=np.zeros(8, np.float32))
    line = one_line_error(*run_cli(capsys, "infer", "--checkpoint", checkpoint, "--obs", obs)[::2], "infer")
    assert "parameter '--obs'" in line and "8 entries" in line and "7 state dims" in line
    assert str(checkpoint / "assets" / "robot" / "norm_stats.json") in line


def test_infer_config_json_list(tiny_checkpoint, tmp_path, capsys):
    checkpoint = corrupt_copy(tiny_checkpoint, tmp_path, config_json="[]\n")
    obs = save_obs(tmp_path / "obs.npz")
    line = one_line_error(*run_cli(capsys, "infer", "--checkpoint", checkpoint, "--obs", obs)[::2], "infer")
    assert str(checkpoint / "config.json") in line and "JSON object" in line


def test_infer_writes_a_readable_npy(tiny_checkpoint, tmp_path, capsys, private_umask):
    obs = save_obs(tmp_path / "obs.npz")
    rc, out, err = run_cli(capsys, "infer", "--checkpoint", tiny_checkpoint, "--obs", obs,
                           "--out", tmp_path / "actions.npy", "--device", "cpu")
    assert rc == 0, err
    assert "actions (50, 14)" in out and "untrained" in err
    assert stat.S_IMODE((tmp_path / "actions.npy").stat().st_mode) == 0o644


# -------------------------------------------------------------- make-tiny ---


def test_make_tiny_refuses_a_non_empty_directory(tmp_path, capsys):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    line = one_line_error(*run_cli(capsys, "make-tiny", "--out", out)[::2], "make-tiny")
    assert str(out) in line and "not empty" in line and "--force" in line
    # --force replaces a previous checkpoint, never anything else
    line = one_line_error(*run_cli(capsys, "make-tiny", "--out", out, "--force")[::2], "make-tiny")
    assert "holds no checkpoint" in line
    assert (out / "notes.txt").read_text() == "mine\n"


def test_make_tiny_force_and_modes(tmp_path, capsys, private_umask):
    out = tmp_path / "ckpt"
    rc, _, err = run_cli(capsys, "make-tiny", "--out", out, "--dims", "7")
    assert rc == 0, err
    assert_shared(out)
    rc, _, err = run_cli(capsys, "make-tiny", "--out", out, "--dims", "8", "--force")
    assert rc == 0, err
    stats = json.loads((out / "assets" / "robot" / "norm_stats.json").read_text())
    assert len(stats["norm_stats"]["state"]["mean"]) == 8


# ------------------------------------------------------------------ bench ---


@pytest.mark.parametrize("flag, value", [("--runs", "0"), ("--warmup", "-1"), ("--cameras", "0")])
def test_bench_counts_are_one_line_errors(flag, value, capsys):
    line = one_line_error(*run_cli(capsys, "bench", "--config", "pi0-tiny", flag, value)[::2], "bench")
    assert f"parameter '{flag}'" in line and value in line


# ----------------------------------------------------------------- export ---


def test_failed_export_leaves_no_output_folder(tiny_checkpoint, tmp_path, capsys):
    broken = corrupt_copy(tiny_checkpoint, tmp_path, config_json='"pi0"\n')
    out = tmp_path / "new" / "artifact"
    line = one_line_error(*run_cli(capsys, "export", "--checkpoint", broken, "--out", out)[::2], "export")
    assert str(broken / "config.json") in line and "JSON object" in line
    assert not (tmp_path / "new").exists(), "no empty parent or output folder"
    # A failure after the graph was written (no norm stats to copy) leaves no partial folder either.
    no_stats = corrupt_copy(tiny_checkpoint, tmp_path, name="no_stats")
    shutil.rmtree(no_stats / "assets")
    line = one_line_error(*run_cli(capsys, "export", "--checkpoint", no_stats, "--out", out,
                                   "--no-validate")[::2], "export")
    assert "normalization statistics" in line
    assert not out.exists() and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "no_stats"]


def test_export_modes_and_overwrite_keeps_the_old_export_on_failure(
    tiny_checkpoint, tmp_path, capsys, private_umask
):
    out = tmp_path / "artifact"
    rc, _, err = run_cli(capsys, "export", "--checkpoint", tiny_checkpoint, "--out", out, "--no-validate")
    assert rc == 0, err
    assert_shared(out)
    manifest = (out / "manifest.json").read_text()
    broken = corrupt_copy(tiny_checkpoint, tmp_path, config_json="[]")
    rc, _, err = run_cli(capsys, "export", "--checkpoint", broken, "--out", out, "--overwrite")
    assert rc == 2
    assert (out / "manifest.json").read_text() == manifest, "the previous export is intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "ckpt"]


# --------------------------------------------------------- make-bag, replay ---


def write_config(path: Path, joints=JOINTS) -> Path:
    n = len(joints)
    params = {
        "joint_names": list(joints),
        "policy": {"num_threads": 1, "seed": 0},
        "prompt": {"default": "pick up the cube"},
        "cameras": {"keys": ["base_0_rgb"], "base_0_rgb": {"width": 64, "height": 48}},
        "limits": {"lower": [-1.5] * n, "upper": [1.5] * n, "max_velocity": [2.0]},
    }
    path.write_text(yaml.safe_dump({"vla_policy": {"ros__parameters": params}}))
    return path


@pytest.mark.parametrize("mode", ["offline", "live"])
def test_replay_checks_the_robot_before_loading_the_policy(tiny_checkpoint, tmp_path, capsys, mode):
    from vla_ros.tools import bag_io

    config = write_config(tmp_path / "robot8.yaml", [f"j{i}" for i in range(8)])
    bag = tmp_path / "bag8"
    make_bag.write_bag(bag_io.robot_topics_from_yaml(config), bag, 0.3, "mcap")
    # live: fails before waiting for a node
    line = one_line_error(*run_cli(capsys, "replay", bag, "--config", config, "--mode", mode,
                                   "--checkpoint", tiny_checkpoint, "--out", tmp_path / "out",
                                   "--wait", "60", "--no-progress")[::2], "replay")
    assert "parameter 'joint_names'" in line and "8 joints" in line and "14 state dims" in line
    assert str(Path(tiny_checkpoint) / "assets" / "robot" / "norm_stats.json") in line
    assert not (tmp_path / "out").exists()


def test_make_bag_and_replay_outputs_are_readable(tiny_checkpoint, tmp_path, capsys, private_umask):
    config = write_config(tmp_path / "robot.yaml")
    bag = tmp_path / "bag"
    rc, _, err = run_cli(capsys, "make-bag", "--config", config, "--out", bag, "--seconds", "1")
    assert rc == 0, err
    assert_shared(bag)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "replay", bag, "--config", config, "--checkpoint", tiny_checkpoint,
                         "--out", out, "--duration", "0.5", "--no-progress")
    assert rc == 0, err
    assert "untrained" in err
    assert_shared(out)


def test_write_bag_function_sets_the_modes(tmp_path, private_umask):
    from vla_ros.tools import bag_io

    config = write_config(tmp_path / "robot.yaml")
    bag = tmp_path / "bag2"
    make_bag.write_bag(bag_io.robot_topics_from_yaml(config), bag, 0.2, "mcap")
    assert_shared(bag)
