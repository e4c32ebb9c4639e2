"""`vla-ros make-tiny` and `vla-ros infer` as a user runs them (subprocess, real files)."""

import subprocess
import sys

import numpy as np

from vla_ros.policy import Policy, PolicyOptions
from vla_ros.types import RawObservation


def _cli(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "vla_ros", *map(str, args)], capture_output=True, text=True
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _write_inputs(tmp_path):
    """obs.npz (one 160x120 camera, a 7-dim state, a prompt) and noise.npy; returns the arrays."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    state = rng.normal(size=7).astype(np.float32)
    noise = rng.standard_normal((50, 32)).astype(np.float32)
    np.savez(tmp_path / "obs.npz", base_0_rgb=base, state=state, prompt="open the drawer")
    np.save(tmp_path / "noise.npy", noise)
    return base, state, noise


def test_make_tiny_then_infer_matches_policy(tmp_path):
    ckpt = tmp_path / "ckpt"
    _cli("make-tiny", "--config", "pi05-tiny", "--out", ckpt, "--seed", "3", "--dims", "7")
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "assets",
        "config.json",
        "model.safetensors",
        "tokenizer.model",
    ]
    base, state, noise = _write_inputs(tmp_path)
    result = _cli(
        "infer",
        "--checkpoint",
        ckpt,
        "--obs",
        tmp_path / "obs.npz",
        "--noise",
        tmp_path / "noise.npy",
        "--out",
        tmp_path / "actions.npy",
    )
    assert "actions (50, 7)" in result.stdout
    actions = np.load(tmp_path / "actions.npy")
    policy = Policy.from_checkpoint(ckpt, PolicyOptions(device="cpu", precision="fp32"))
    expected = policy.infer(
        RawObservation({"base_0_rgb": base}, state, "open the drawer"), noise=noise
    ).actions
    np.testing.assert_allclose(actions, expected, atol=1e-5)

    # A given tokenized prompt is used as-is: the tokens the policy would build give the same actions,
    # other tokens give other actions.
    norm_state = policy.normalizer.normalize_state(state)
    tokens, mask = policy.tokenizer.tokenize("open the drawer", norm_state)

    def infer_with_tokens(name, token_ids):
        np.savez(tmp_path / f"{name}.npz", base_0_rgb=base, state=state,
                 tokenized_prompt=token_ids, tokenized_prompt_mask=mask)
        _cli("infer", "--checkpoint", ckpt, "--obs", tmp_path / f"{name}.npz",
             "--noise", tmp_path / "noise.npy", "--out", tmp_path / f"{name}_actions.npy")
        return np.load(tmp_path / f"{name}_actions.npy")

    np.testing.assert_allclose(infer_with_tokens("tok", tokens), expected, atol=1e-5)
    tokens2 = tokens.copy()
    tokens2[1 : int(mask.sum())] = (tokens2[1 : int(mask.sum())] + 5) % policy.cfg.vocab_size
    # (an untrained tiny model reacts weakly to language: well above the 1e-5 parity, not large)
    assert np.abs(infer_with_tokens("tok2", tokens2) - expected).max() > 1e-4


def test_infer_reports_bad_input_in_one_line(tmp_path, tiny_checkpoint):
    np.savez(tmp_path / "obs.npz", state=np.zeros(14, np.float32))
    result = _cli("infer", "--checkpoint", tiny_checkpoint, "--obs", tmp_path / "obs.npz", check=False)
    assert result.returncode == 2
    assert "needs 'prompt' or 'tokenized_prompt'" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("infer", "--checkpoint", tmp_path / "nowhere", "--obs", tmp_path / "obs.npz", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_infer_steps_default_to_the_checkpoints(tmp_path):
    import argparse
    import json

    from vla_ros.tools import cli
    from vla_ros.tools.infer import policy_options
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    args = argparse.Namespace(device="cpu", precision="fp32", engine="reference", suffix="auto", steps=None)
    assert policy_options(args).num_steps is None
    assert policy_options(args, num_steps=4).num_steps == 4  # an override wins, no duplicate keyword
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", "pi0-tiny", seed=1, dims=7, layout="lerobot")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "num_inference_steps": 3}))
    base, state, noise = _write_inputs(tmp_path)
    out = tmp_path / "actions.npy"
    command = ["infer", "--checkpoint", str(ckpt), "--obs", str(tmp_path / "obs.npz"), "--noise",
               str(tmp_path / "noise.npy"), "--out", str(out), "--device", "cpu", "--precision", "fp32"]
    assert cli.main(command) == 0
    obs = RawObservation({"base_0_rgb": base}, state, "open the drawer")
    for steps, same in ((3, True), (10, False)):
        options = PolicyOptions(device="cpu", precision="fp32", engine="reference", num_steps=steps)
        expected = Policy.from_checkpoint(ckpt, options)
        close = np.allclose(np.load(out), expected.infer(obs, noise=noise).actions, atol=1e-5)
        assert close == same, steps
