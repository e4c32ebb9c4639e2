"""vla_ros' SmolVLA against golden outputs of LeRobot 0.6.1's own `SmolVLAPolicy` pipeline.

The fixture test/fixtures/lerobot_0_6_1/smolvla was written by
scripts/make_lerobot_smolvla_fixtures.py inside a LeRobot 0.6.1 venv (this venv
cannot import LeRobot); its README.md says what it holds: a tiny SmolVLA with the
sizes of `smolvla-tiny`, LeRobot's config.json and processor files, `smolvlm/`
(the VLM's config.json and tokenizer.json LeRobot read in place of the Hub
repo), two observations ("full"; "missing" without cam_left_wrist, whose slot
LeRobot drops) and LeRobot's outputs for a fixed noise.

Everything here goes through `Policy.from_checkpoint(<the fixture folder>)`
from the raw observation, with no convention forced: prompt tokens (exact;
LeRobot does not pad one prompt, vla_ros pads to 48 with a mask), model-input
images (left / top padding) and normalized state, the first Euler velocity,
the normalized and the final actions, on both observations.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lerobot_0_6_1" / "smolvla"
OBSERVATIONS = ("full", "missing")
IMAGE_ATOL = 1e-5  # [-1, 1] units
STATE_ATOL = 1e-4
ACTION_ATOL = 1e-4
IMAGES_PREFIX = "observation.images."


@functools.lru_cache(maxsize=None)
def _meta() -> dict:
    return json.loads((FIXTURE / "expected_meta.json").read_text())


@functools.lru_cache(maxsize=None)
def _expected(observation: str) -> dict:
    files = _meta()["observations"][observation]["files"]
    with np.load(FIXTURE / files["observation"]) as obs:
        images = {k[len(IMAGES_PREFIX):]: obs[k] for k in obs.files if k.startswith(IMAGES_PREFIX)}
        state, prompt = obs["state"], str(obs["prompt"])
    with np.load(FIXTURE / files["images"]) as saved:
        model_images, image_masks = saved["images"], saved["masks"]
    return {
        "images": images,
        "state": state,
        "prompt": prompt,
        "noise": np.load(FIXTURE / "noise.npy"),
        "tokens": np.load(FIXTURE / files["tokens"]),
        "token_mask": np.load(FIXTURE / files["token_mask"]),
        "model_images": model_images,
        "image_masks": image_masks,
        "norm_state": np.load(FIXTURE / files["state"]),
        "velocity": np.load(FIXTURE / files["velocity_t1"]),
        "normalized": np.load(FIXTURE / files["actions_normalized"]),
        "actions": np.load(FIXTURE / files["actions"]),
    }


@functools.lru_cache(maxsize=None)
def _policy():
    from vla_ros.policy import Policy, PolicyOptions

    # The eager reference engine (policy.engine auto runs the optimised one: test_engines_smolvla.py).
    return Policy.from_checkpoint(FIXTURE, PolicyOptions(device="cpu", engine="reference"))


def _observation(observation: str):
    from vla_ros.types import RawObservation

    f = _expected(observation)
    spec = _policy().spec
    by_source = dict(zip(spec.camera_sources, spec.camera_keys))
    images = {by_source[name]: image for name, image in f["images"].items()}
    return RawObservation(images=images, state=f["state"].copy(), prompt=f["prompt"])


def _max_err(actual, expected) -> float:
    return float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))


def test_policy_reads_the_lerobot_smolvla_directory():
    policy = _policy()
    spec = policy.spec
    assert (spec.variant, spec.config_name) == ("smolvla", "smolvla-tiny")
    assert policy.engine.name == "reference" and policy.engine.describe()["dtype"] == "torch.float32"
    assert (spec.provenance.source, spec.image_resize, spec.prompt_style) == ("lerobot", "smolvla", "lerobot")
    assert [IMAGES_PREFIX + name for name in spec.camera_sources] == _meta()["camera_slots"]
    assert (spec.image_size, spec.max_token_len, spec.action_horizon) == (512, 48, 50)
    assert spec.state_dim == spec.action_stats_dim == 14
    assert policy.options.num_steps == 10
    assert policy.tokenizer.source == FIXTURE / "smolvlm" / "tokenizer.json"


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_preprocessing_matches_lerobot(observation):
    f = _expected(observation)
    inputs, action_dims = _policy().preprocess(_observation(observation), f["noise"])
    assert action_dims == 14
    # Tokens: LeRobot's unpadded ids, then vla_ros' masked padding up to 48.
    count = len(f["tokens"])
    assert f["token_mask"].all()
    assert inputs.tokens[:count].astype(np.int64).tolist() == f["tokens"].tolist()
    assert inputs.token_masks.tolist() == [True] * count + [False] * (48 - count)
    # Images: LeRobot's slots first (a missing camera's slot is dropped there, masked here, last).
    slots = len(f["image_masks"])
    assert inputs.image_masks.tolist() == [True] * slots + [False] * (3 - slots)
    assert inputs.images.dtype == np.float32
    err = _max_err(inputs.images[:slots], f["model_images"].transpose(0, 2, 3, 1))
    assert err <= IMAGE_ATOL, f"model-input images: max error {err:.2e}"
    err = _max_err(inputs.state, f["norm_state"])
    assert err <= STATE_ATOL, f"normalized, padded state: max error {err:.2e}"


def test_long_prompt_is_truncated_on_the_tokenizers_side():
    long_prompt = _meta()["long_prompt"]
    tokens, mask = _policy().tokenizer.tokenize(long_prompt["task"])
    assert mask.all()
    assert tokens.astype(np.int64).tolist() == np.load(FIXTURE / long_prompt["file"]).tolist()


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_first_velocity_matches_lerobot(observation):
    import torch

    f = _expected(observation)
    policy = _policy()
    inputs, _ = policy.preprocess(_observation(observation), f["noise"])
    policy.engine.encode_prefix(inputs)
    with torch.no_grad():
        velocity = policy.engine.model.denoise_step(
            policy.engine._cache, torch.from_numpy(f["noise"])[None], torch.ones(1)
        )
    err = _max_err(velocity[0].numpy(), f["velocity"])
    assert err <= ACTION_ATOL, f"first Euler velocity: max error {err:.2e}"


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_actions_match_lerobot(observation):
    f = _expected(observation)
    policy = _policy()
    inputs, _ = policy.preprocess(_observation(observation), f["noise"])
    policy.engine.encode_prefix(inputs)
    normalized = policy.engine.denoise(inputs)
    err = _max_err(normalized[:, :14], f["normalized"])
    assert err <= ACTION_ATOL, f"normalized actions: max error {err:.2e}"
    chunk = policy.infer(_observation(observation), noise=f["noise"])
    assert chunk.actions.shape == f["actions"].shape
    err = _max_err(chunk.actions, f["actions"])
    assert err <= ACTION_ATOL, f"actions (robot units): max error {err:.2e}"


def test_missing_vlm_config_falls_back_to_the_named_config(tmp_path):
    import shutil

    from vla_ros.model.checkpoint import config_from_checkpoint

    folder = tmp_path / "smolvla"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("smolvlm", "expected_*", "observation*"))
    assert config_from_checkpoint(folder).name == "smolvla-tiny"


def test_unknown_sizes_without_vlm_config_name_the_file(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from vla_ros.errors import CheckpointError
    from vla_ros.model.checkpoint import config_from_checkpoint

    folder = tmp_path / "smolvla"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("smolvlm", "expected_*", "observation*"))
    weights = load_file(str(folder / "model.safetensors"))
    key = "model.vlm_with_expert.vlm.model.text_model.layers.0.mlp.gate_proj.weight"
    weights[key] = weights[key][:96]  # a text MLP no named config has
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="vlm_config.json") as info:
        config_from_checkpoint(folder)
    assert "\n" not in str(info.value)
