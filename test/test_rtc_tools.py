"""Real-Time Chunking in the tools: `vla-ros infer --rtc-*` and `vla-ros replay --compare-aggregation`."""

from __future__ import annotations

import numpy as np
import pytest
from vla_ros.tools.cli import main

DIMS = 14  # the tiny_checkpoint fixture's joints


def _write_obs(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    state = (0.3 * rng.normal(size=DIMS)).astype(np.float32)
    np.savez(tmp_path / "obs.npz", base_0_rgb=base, state=state, prompt="fold the towel")
    return tmp_path / "obs.npz"


def _infer(checkpoint, tmp_path, name, *flags):
    out = tmp_path / f"{name}.npy"
    rc = main(["infer", "--checkpoint", str(checkpoint), "--obs", str(tmp_path / "obs.npz"),
               "--device", "cpu", "--precision", "fp32", "--out", str(out), *map(str, flags)])
    assert rc == 0
    return np.load(out)


def test_infer_rtc_guides_the_first_rows_toward_the_previous_chunk(tiny_checkpoint, tmp_path, capsys):
    _write_obs(tmp_path)
    unguided = _infer(tiny_checkpoint, tmp_path, "unguided")
    assert "RTC guidance" not in capsys.readouterr().out
    # The previous chunk: another sample of the same policy (other noise), its first 20 rows.
    other = _infer(tiny_checkpoint, tmp_path, "other", "--seed", "5")
    previous = other[:20]
    np.save(tmp_path / "prev.npy", previous)
    guided = _infer(tiny_checkpoint, tmp_path, "guided", "--rtc-prev", tmp_path / "prev.npy",
                    "--rtc-delay", "5", "--rtc-max-guidance", "10")
    out = capsys.readouterr().out
    assert "RTC guidance: previous chunk" in out and "(20x14), delay 5, horizon 10, schedule linear" in out
    assert "max guidance 10, mode guided, jacobian identity" in out
    assert guided.shape == unguided.shape == (50, DIMS)
    before = np.abs(unguided[:5] - previous[:5]).mean()
    after = np.abs(guided[:5] - previous[:5]).mean()
    print(f"first 5 rows, mean |chunk - previous|: unguided {before:.4f}, guided {after:.2e} "
          f"(ratio {after / before:.2e})")
    assert before > 0.05  # two samples of the untrained model differ
    assert after < 0.2 * before
    # Rows past the horizon (10) are free: guidance moves them far less than it moves the first rows.
    assert np.abs(guided[30:] - unguided[30:]).mean() < np.abs(guided[:5] - unguided[:5]).mean()

    # Weight 0 is the unguided loop, exactly (same seed, same noise).
    zero = _infer(tiny_checkpoint, tmp_path, "zero", "--rtc-prev", tmp_path / "prev.npy",
                  "--rtc-delay", "5", "--rtc-max-guidance", "0")
    np.testing.assert_array_equal(zero, unguided)


def _one_line_error(capsys, checkpoint, tmp_path, *flags):
    rc = main(["infer", "--checkpoint", str(checkpoint), "--obs", str(tmp_path / "obs.npz"),
               *map(str, flags)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("flags, flag", [
    (["--rtc-delay", "5"], "--rtc-delay"),
    (["--rtc-horizon", "8"], "--rtc-horizon"),
    (["--rtc-max-guidance", "5"], "--rtc-max-guidance"),
    (["--rtc-schedule", "exp"], "--rtc-schedule"),
    (["--rtc-mode", "trained"], "--rtc-mode"),
    (["--rtc-jacobian", "vjp"], "--rtc-jacobian"),
])
def test_infer_rtc_settings_need_a_previous_chunk(flags, flag, tiny_checkpoint, tmp_path, capsys):
    _write_obs(tmp_path)
    line = _one_line_error(capsys, tiny_checkpoint, tmp_path, *flags)
    assert flag in line and "needs --rtc-prev" in line


@pytest.mark.parametrize("name, array, needle", [
    ("flat", np.zeros(DIMS, np.float32), "expected a 2-D chunk"),
    ("dims", np.zeros((10, DIMS - 1), np.float32), "the robot has 14"),
    ("nan", np.where(np.arange(10)[:, None] == 3, np.nan, np.zeros((10, DIMS))), "NaN/inf in row(s) 3"),
    ("long", np.zeros((51, DIMS), np.float32), "expected 1..50"),
    ("text", np.array([["a"] * DIMS] * 3), "expected numbers"),
    ("pickled", np.array([{"a": 1}], dtype=object), "not a numpy .npy array"),
    ("missing", None, "no such file"),
])
def test_infer_rtc_refuses_a_bad_previous_chunk(name, array, needle, tiny_checkpoint, tmp_path, capsys):
    _write_obs(tmp_path)
    path = tmp_path / f"{name}.npy"
    if array is not None:
        np.save(path, array, allow_pickle=True)
    line = _one_line_error(capsys, tiny_checkpoint, tmp_path, "--rtc-prev", path, "--rtc-delay", "2")
    assert "--rtc-prev" in line and str(path) in line and needle in line, line


@pytest.mark.parametrize("flags, flag", [
    (["--rtc-delay", "-1"], "--rtc-delay"),
    (["--rtc-horizon", "-2"], "--rtc-horizon"),
    (["--rtc-max-guidance", "-1"], "--rtc-max-guidance"),
    (["--rtc-max-guidance", "nan"], "--rtc-max-guidance"),
])
def test_infer_rtc_refuses_bad_settings(flags, flag, tiny_checkpoint, tmp_path, capsys):
    _write_obs(tmp_path)
    np.save(tmp_path / "prev.npy", np.zeros((10, DIMS), np.float32))
    line = _one_line_error(capsys, tiny_checkpoint, tmp_path, "--rtc-prev", tmp_path / "prev.npy", *flags)
    assert flag in line, line
