"""pi0fast-tiny fitted to one chunk (vla_ros/tools/fit_tiny.py, make-tiny --fit-steps).

The fitted checkpoint is built once per session by `fitted_fast_checkpoint`,
which the node tests (test_node_fast.py) import too.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from vla_ros.errors import ConfigError
from vla_ros.model.config import get_config
from vla_ros.tools.fit_tiny import (
    ambiguous_successors, checkpoint_parser, fit_target, fit_to_chunk, teacher_forced_logits,
)
from vla_ros.tools.make_tiny import add_arguments, make_tiny_checkpoint, run
from vla_ros.types import CAMERA_KEYS, RawObservation

FIT_DIMS = 7
FIT_SEED = 0
FIT_STEPS = 300
_BUILT: dict = {}  # one fitted checkpoint per session, whichever module asks first


@pytest.fixture(scope="session")
def fitted_fast_checkpoint(tmp_path_factory):
    """A pi0fast-tiny (openpi layout, 7 action dims) fitted to one chunk; built once per session."""
    if "path" not in _BUILT:
        _BUILT["path"] = make_tiny_checkpoint(
            tmp_path_factory.mktemp("pi0fast_fitted"), "pi0fast-tiny", seed=FIT_SEED, dims=FIT_DIMS,
            fit_steps=FIT_STEPS,
        )
    return _BUILT["path"]


@pytest.fixture(scope="module")
def fitted_policy(fitted_fast_checkpoint):
    from vla_ros.policy import Policy, PolicyOptions

    return Policy.from_checkpoint(fitted_fast_checkpoint, PolicyOptions(num_threads=1))


def fitted_target(checkpoint) -> np.ndarray:
    """The normalized chunk (H, D) a fitted checkpoint decodes, as config.json records it."""
    return np.asarray(json.loads((checkpoint / "config.json").read_text())["fit_target"], dtype=np.float32)


def _frame(rng, kind: str, height: int, width: int) -> np.ndarray:
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "grey":
        return np.full((height, width, 3), 128, np.uint8)
    if kind == "colour":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3)).copy()
    ramp = np.linspace(0, 255, width)[None, :, None] * rng.uniform(0.2, 1.0, 3)
    return np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)


def fresh_observations(dims: int, seed: int = 1234) -> list[RawObservation]:
    """Observations the fit never saw: 1 to 3 cameras, sizes, kinds, prompts and states of every sort."""
    rng = np.random.default_rng(seed)
    specs = [  # (cameras, frame kind, prompt, state)
        ({"base_0_rgb": "noise"}, "pick up the cube", rng.normal(0.0, 1.0, dims)),
        ({k: "grey" for k in CAMERA_KEYS}, "", np.zeros(dims)),
        ({"left_wrist_0_rgb": "colour", "right_wrist_0_rgb": "ramp"}, "zebra quantum origami " * 4,
         rng.uniform(-3.0, 3.0, dims)),
        ({"base_0_rgb": "grey"}, "warm up", np.zeros(dims)),  # the node's warm-up observation
        ({"base_0_rgb": "ramp", "right_wrist_0_rgb": "noise"}, "Fold_the TOWEL\n",
         rng.normal(0.0, 2.0, dims)),
    ]
    observations = []
    for cameras, prompt, state in specs:
        images = {}
        for key, kind in cameras.items():
            height, width = (int(v) for v in rng.integers(60, 480, 2))
            images[key] = _frame(rng, kind, height, width)
        observations.append(
            RawObservation(images=images, state=np.asarray(state, np.float32), prompt=prompt, timestamp=1.5)
        )
    return observations


def test_fitted_checkpoint_is_marked_untrained_and_records_its_fit(fitted_fast_checkpoint, fitted_policy):
    config = json.loads((fitted_fast_checkpoint / "config.json").read_text())
    assert config["untrained"] is True
    fit = config["fit"]
    assert fit["converged"] is True, fit
    assert "fitted to one chunk" in fit["note"]
    assert 0 < fit["steps"] <= FIT_STEPS and fit["margin"] >= 2.0
    target = fitted_target(fitted_fast_checkpoint)
    assert target.shape == (50, FIT_DIMS) and np.all(np.isfinite(target))
    assert np.ptp(target, axis=0).max() > 0.05, "the target moves"
    assert fitted_policy.spec.untrained, "a fitted checkpoint is still called out as untrained"


def test_target_is_on_the_fast_grid_and_its_tokens_determine_their_successors(fitted_fast_checkpoint):
    tokenizer, parser = checkpoint_parser(fitted_fast_checkpoint, get_config("pi0fast-tiny"), FIT_DIMS)
    target = fitted_target(fitted_fast_checkpoint)
    ids = parser.encode(target)
    # Decoding its own tokens gives the target back: the decoded chunk can be compared exactly.
    np.testing.assert_allclose(parser.decode(ids), target, atol=1e-6)
    assert ambiguous_successors([*ids, 1]) == 0
    assert ambiguous_successors([5, 6, 5, 7]) == 1 and ambiguous_successors([5, 6, 5, 6, 5]) == 0
    # The same seed gives the same target.
    np.testing.assert_array_equal(fit_target(parser.fast, 50, FIT_DIMS, FIT_SEED), target)


def test_fitted_policy_decodes_its_target_for_fresh_observations(fitted_fast_checkpoint, fitted_policy):
    policy = fitted_policy
    target = fitted_target(fitted_fast_checkpoint)
    expected_tokens = policy.action_parser.encode(target)  # "Action: <FAST ids>|", the stop included
    scale = policy.action_parser.fast.scale
    for obs in fresh_observations(FIT_DIMS):
        chunk = policy.infer(obs)
        np.testing.assert_array_equal(chunk.tokens, expected_tokens)
        normalized = policy.action_parser.decode(chunk.tokens)
        # Within the FAST quantization step (1 / scale) of the target; in fact exactly it.
        assert np.abs(normalized - target).max() <= 1.0 / scale
        np.testing.assert_allclose(normalized, target, atol=1e-6)
        np.testing.assert_allclose(chunk.actions, policy.postprocess(target, FIT_DIMS, obs.state), atol=1e-5)
        assert chunk.timestamp == obs.timestamp and chunk.timings["decode"] > 0.0


def test_fit_layout_is_the_decode_runtime_layout(fitted_policy):
    """Teacher-forced logits of the fit equal the prefix + token-by-token decode the engines run."""
    from vla_ros.engines.factory import OPENPI_DECODE_POSITION_GAP

    policy = fitted_policy
    model = policy.engine.decoder.model
    obs = fresh_observations(FIT_DIMS, seed=7)[2]  # two cameras of three, a long prompt: padding everywhere
    inputs, _ = policy.preprocess(obs)
    batch = [torch.from_numpy(np.asarray(a)[None]) for a in
             (inputs.images, inputs.image_masks, inputs.tokens, inputs.token_masks)]
    sequence = [*policy.action_parser.encode(np.zeros((50, FIT_DIMS), np.float32)), 1]
    gap = OPENPI_DECODE_POSITION_GAP
    with torch.no_grad():
        embs, pad = model.prefix_embeddings(*batch)
        assert not pad.all(), "the padded layout has masked slots; the fit compacts them away"
        cache, logits = model.prefix(*batch)
        reference = [logits[0]]
        position = int(pad.sum()) + gap
        for k, token in enumerate(sequence[:-1]):
            logits, cache = model.decode_step(cache, torch.tensor([token]), torch.tensor([position + k]))
            reference.append(logits[0])
        reference = torch.stack(reference)
        fitted = teacher_forced_logits(model, embs[0][pad[0]], sequence, gap)
        shifted = teacher_forced_logits(model, embs[0][pad[0]], sequence, gap + 1)
    assert fitted.shape == reference.shape == (len(sequence), model.cfg.vocab_size)
    torch.testing.assert_close(fitted, reference, atol=1e-4, rtol=0)
    # A layout one position off is visibly different: the comparison above can fail.
    assert (shifted - reference).abs().max() > 1e-3


@pytest.fixture(scope="module")
def unfitted_fast(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("pi0fast_unfitted"), "pi0fast-tiny", seed=4, dims=4)


def _fit_briefly(checkpoint, seed: int, steps: int = 6) -> dict[str, torch.Tensor]:
    from vla_ros.model.checkpoint import load_model

    model, cfg = load_model(checkpoint)
    tokenizer, parser = checkpoint_parser(checkpoint, cfg, 4)
    target = fit_target(parser.fast, parser.horizon, parser.action_dim, 4)
    threads = torch.get_num_threads()
    report = fit_to_chunk(model, tokenizer, parser, target, seed=seed, max_steps=steps, check_every=10**6)
    assert report.steps == steps and not report.converged and np.isfinite(report.loss)
    assert torch.get_num_threads() == threads, "the fit restores torch's thread count"
    assert not any(p.requires_grad for p in model.parameters())
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fit_is_deterministic_for_a_seed(unfitted_fast):
    first = _fit_briefly(unfitted_fast, seed=1)
    again = _fit_briefly(unfitted_fast, seed=1)
    other = _fit_briefly(unfitted_fast, seed=2)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    changed = [k for k in first if not torch.equal(first[k], other[k])]
    assert changed and all("vision" not in k and "embed_tokens" not in k for k in changed), changed


def test_fit_steps_only_for_decode_configs(tmp_path):
    with pytest.raises(ConfigError, match="--fit-steps"):
        make_tiny_checkpoint(tmp_path / "pi0", "pi0-tiny", fit_steps=5)
    with pytest.raises(ConfigError, match="--fit-steps"):
        make_tiny_checkpoint(tmp_path / "neg", "pi0fast-tiny", fit_steps=-1)
    assert not (tmp_path / "pi0").exists() and not (tmp_path / "neg").exists()


def test_cli_reports_a_fit_that_did_not_converge(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "fast"
    args = parser.parse_args(
        ["--config", "pi0fast-tiny", "--out", str(out), "--dims", "3", "--seed", "5", "--fit-steps", "2"]
    )
    assert run(args) == 1
    printed = capsys.readouterr().out
    assert "fitted to one chunk in 2 steps" in printed and "NOT converged" in printed, printed
    config = json.loads((out / "config.json").read_text())
    assert config["untrained"] is True and config["fit"]["converged"] is False
    assert np.asarray(config["fit_target"]).shape == (50, 3)
