"""`vla-ros make-tiny` and `vla-ros infer` as a user runs them (subprocess, real files)."""

import subprocess
import sys

import numpy as np
import pytest

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


@pytest.fixture(scope="module")
def fast_checkpoint(tmp_path_factory):
    """An untrained pi0fast-tiny checkpoint: its greedy tokens never decode to an action chunk."""
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("pi0fast_tiny"), "pi0fast-tiny", seed=0, dims=7)


def _infer_fast(checkpoint, tmp_path, *flags):
    from vla_ros.tools import cli

    return cli.main(["infer", "--checkpoint", str(checkpoint), "--obs", str(tmp_path / "obs.npz"),
                     "--max-decoding-steps", "5", *map(str, flags)])


def test_infer_decode_failure_writes_the_tokens_and_exits_1(fast_checkpoint, tmp_path, capsys, monkeypatch):
    from vla_ros.model.fast_tokenizer import ActionTokenParser
    from vla_ros.model.pi0_fast import EOS_ID

    base, state, _ = _write_inputs(tmp_path)
    tokens_out, actions_out = tmp_path / "tokens.npy", tmp_path / "actions.npy"
    assert _infer_fast(fast_checkpoint, tmp_path, "--tokens-out", tokens_out, "--out", actions_out) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and "inference failed: ActionDecodeError" in lines[0], captured.err
    assert str(tokens_out) in lines[0]
    assert not actions_out.exists()  # no made-up actions
    ids = np.load(tokens_out)
    assert ids.dtype == np.int64 and 1 <= len(ids) <= 5
    # infer runs the reference engine (concatenating cache): the static-cache engine generates the same.
    policy = Policy.from_checkpoint(
        fast_checkpoint, PolicyOptions(engine="auto", precision="fp32", max_decoding_steps=5)
    )
    inputs, _ = policy.preprocess(RawObservation({"base_0_rgb": base}, state, "open the drawer"))
    policy.engine.encode_prefix(inputs)
    result = policy.engine.decode((policy.action_parser.end_id, EOS_ID))
    expected = result.ids if result.stop is None else np.append(result.ids, result.stop)
    np.testing.assert_array_equal(ids, expected)

    # Tokens that do decode (here: a stand-in FAST parser) give actions, and the same tokens.
    monkeypatch.setattr(ActionTokenParser, "decode", lambda self, ids: np.full((50, 7), 0.25, np.float32))
    tokens_out.unlink()
    assert _infer_fast(fast_checkpoint, tmp_path, "--tokens-out", tokens_out, "--out", actions_out) == 0
    out = capsys.readouterr().out
    assert f"generated {len(ids)} tokens" in out and "decode" in out and f"wrote {tokens_out}" in out
    np.testing.assert_array_equal(np.load(tokens_out), ids)
    assert np.load(actions_out).shape == (50, 7)


def test_infer_temperature_samples_reproducibly(fast_checkpoint, tmp_path, capsys):
    _write_inputs(tmp_path)

    def tokens(name, *flags):
        out = tmp_path / f"{name}.npy"
        assert _infer_fast(fast_checkpoint, tmp_path, "--engine", "auto", "--tokens-out", out, *flags) == 1
        return np.load(out)

    greedy, sampled = tokens("greedy"), tokens("sampled", "--temperature", "1.0")
    assert not np.array_equal(greedy, sampled)
    np.testing.assert_array_equal(tokens("again", "--temperature", "1.0"), sampled)  # seeded
    assert not np.array_equal(tokens("other", "--temperature", "1.0", "--seed", "1"), sampled)


@pytest.mark.parametrize("model, flags, parameter", [
    ("fast", ["--noise", "noise.npy"], "--noise"),
    ("fast", ["--steps", "3"], "--steps"),
    ("fast", ["--temperature", "-1"], "--temperature"),
    ("fast", ["--max-decoding-steps", "0"], "--max-decoding-steps"),
    ("pi0", ["--tokens-out", "tokens.npy"], "--tokens-out"),
    ("pi0", ["--max-decoding-steps", "4"], "--max-decoding-steps"),
    ("fast", ["--rtc-prev", "prev.npy"], "--rtc-prev"),
])
def test_infer_refuses_flags_the_model_has_no_use_for(
    model, flags, parameter, fast_checkpoint, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    from vla_ros.tools import cli

    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    np.save(tmp_path / "noise.npy", np.zeros((50, 32), np.float32))
    checkpoint = fast_checkpoint if model == "fast" else tiny_checkpoint
    assert cli.main(["infer", "--checkpoint", str(checkpoint), "--obs", "obs.npz", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and parameter in err, err
    assert not (tmp_path / "tokens.npy").exists()
