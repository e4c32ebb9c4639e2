"""Checkpoint I/O in the real safetensors layout: round trip, key variants, helpful errors."""

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
import torch

from vla_ros.errors import CheckpointError
from vla_ros.model.checkpoint import config_from_checkpoint, EMBED_KEY, LM_HEAD_KEY, load_model
from vla_ros.policy import Policy, PolicyOptions
from vla_ros.types import RawObservation


def _observation(seed=0):
    rng = np.random.default_rng(seed)
    images = {
        "base_0_rgb": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
        "left_wrist_0_rgb": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    }
    return RawObservation(
        images=images, state=rng.normal(size=14).astype(np.float32), prompt="pick up the red cube"
    )


def _actions(directory, noise):
    policy = Policy.from_checkpoint(directory, PolicyOptions(device="cpu", precision="fp32"))
    return policy.infer(_observation(), noise=noise).actions


def _same(a, b):
    # Identical weights; separate processes of the same model can differ in the last
    # bit (oneDNN picks kernels by memory alignment), hence 1e-6 rather than equality.
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.fixture()
def noise():
    return np.random.default_rng(7).standard_normal((50, 32)).astype(np.float32)


def _rewrite(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    tensors = edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_round_trip_gives_identical_actions(tiny_checkpoint, tmp_path, noise):
    model, cfg = load_model(tiny_checkpoint)
    from vla_ros.model.checkpoint import save_checkpoint

    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy)
    save_checkpoint(model, copy)
    a = _actions(tiny_checkpoint, noise)
    b = _actions(copy, noise)
    assert a.shape == (50, 14)
    _same(a, b)


def test_lerobot_layout_with_model_prefix_and_tied_embedding(tiny_checkpoint, tmp_path, noise):
    def edit(tensors):
        out = {"model." + k: v for k, v in tensors.items() if k != EMBED_KEY}
        out["model." + LM_HEAD_KEY] = tensors[EMBED_KEY]  # only the tied head is stored
        out["model.paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.zeros(3, 4)  # unused, ignored
        return out

    variant = _rewrite(tiny_checkpoint, tmp_path / "lerobot", edit)
    _same(_actions(variant, noise), _actions(tiny_checkpoint, noise))


def test_pi05_time_mlp_names_swapped(tiny_pi05_checkpoint, tmp_path, noise):
    def edit(tensors):
        return {
            k.replace("time_mlp_", "action_time_mlp_") if k.startswith("time_mlp_") else k: v
            for k, v in tensors.items()
        }

    variant = _rewrite(tiny_pi05_checkpoint, tmp_path / "swapped", edit)
    assert config_from_checkpoint(variant).pi05
    _same(_actions(variant, noise), _actions(tiny_pi05_checkpoint, noise))


def test_openpi_style_config_json(tiny_checkpoint, tmp_path):
    variant = tmp_path / "openpi"
    shutil.copytree(tiny_checkpoint, variant)
    # Sizes from variant names and tensor shapes instead of our explicit config.
    (variant / "config.json").write_text(json.dumps({"action_horizon": 50, "max_token_len": 48}))
    with pytest.raises(CheckpointError) as info:
        load_model(variant)  # full-size variants by default: the tiny tensors do not fit
    assert "mis-shaped keys" in str(info.value)
    cfg = config_from_checkpoint(variant)
    assert (cfg.pi05, cfg.vision.width, cfg.vision.depth, cfg.action_dim) == (False, 32, 2, 32)


def test_mismatch_error_names_the_keys(tiny_checkpoint, tmp_path):
    def edit(tensors):
        tensors = dict(tensors)
        del tensors["action_out_proj.weight"]
        del tensors["state_proj.bias"]
        tensors["some_new_head.weight"] = torch.zeros(2)
        tensors["action_in_proj.weight"] = torch.zeros(32, 31)
        return tensors

    broken = _rewrite(tiny_checkpoint, tmp_path / "broken", edit)
    # config.json pins the sizes, so the bad shape is reported rather than absorbed
    with pytest.raises(CheckpointError) as info:
        load_model(broken)
    message = str(info.value)
    assert (
        "missing keys (2)" in message and "action_out_proj.weight" in message and "state_proj.bias" in message
    )
    assert "unexpected keys (1)" in message and "some_new_head.weight" in message
    assert "action_in_proj.weight: (32, 31) vs (32, 32)" in message
    assert "Traceback" not in message


def test_missing_weights_file_and_pickles_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_model(tmp_path)
