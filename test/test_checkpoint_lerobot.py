"""LeRobot policy directories (pi0 / pi0.5) loaded directly: weights, statistics, cameras, relative actions.

The LeRobot layout is written by `save_lerobot_layout` (LeRobot's real file
and key names, processor JSON and safetensors; no LeRobot import) from the
same tiny weights and statistics as the openpi-layout checkpoint it is
compared with.
"""

import dataclasses
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
import torch

from vla_ros.config import NodeConfig
from vla_ros.errors import CheckpointError, ConfigError, ObservationError
from vla_ros.model.checkpoint import load_model
from vla_ros.model.lerobot_layout import (
    read_lerobot_config,
    read_processors,
    relative_mask,
    save_lerobot_layout,
)
from vla_ros.observation.image import prepare_images
from vla_ros.observation.normalize import Normalizer, NormStats
from vla_ros.policy import (
    check_config_fits,
    check_fits,
    Policy,
    PolicyOptions,
    PolicySpec,
    Provenance,
    read_spec,
)
from vla_ros.tools.make_tiny import make_tiny_checkpoint
from vla_ros.types import CAMERA_KEYS, RawObservation

FP32 = dict(device="cpu", precision="fp32", engine="reference")
P = "model.paligemma_with_expert."

# The normalized key names of model.safetensors as LeRobot 0.6.1 saved a tiny pi0 / pi0.5
# (`PI0Policy.save_pretrained`, layer index -> N). Common to both, then per variant.
LEROBOT_COMMON_KEYS = {
    "model.action_in_proj.bias", "model.action_in_proj.weight",
    "model.action_out_proj.bias", "model.action_out_proj.weight",
    P + "gemma_expert.lm_head.weight",
    *(P + f"gemma_expert.model.layers.N.mlp.{m}_proj.weight" for m in ("down", "gate", "up")),
    *(P + f"gemma_expert.model.layers.N.self_attn.{m}_proj.weight" for m in "qkvo"),
    P + "paligemma.lm_head.weight",
    P + "paligemma.model.language_model.embed_tokens.weight",
    *(P + f"paligemma.model.language_model.layers.N.{n}.weight"
      for n in ("input_layernorm", "post_attention_layernorm")),
    *(P + f"paligemma.model.language_model.layers.N.mlp.{m}_proj.weight" for m in ("down", "gate", "up")),
    *(P + f"paligemma.model.language_model.layers.N.self_attn.{m}_proj.weight" for m in "qkvo"),
    P + "paligemma.model.language_model.norm.weight",
    P + "paligemma.model.multi_modal_projector.linear.bias",
    P + "paligemma.model.multi_modal_projector.linear.weight",
    *(P + f"paligemma.model.vision_tower.vision_model.embeddings.{n}"
      for n in ("patch_embedding.bias", "patch_embedding.weight", "position_embedding.weight")),
    *(P + f"paligemma.model.vision_tower.vision_model.encoder.layers.N.{m}.{w}"
      for m in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.out_proj",
                "self_attn.q_proj", "self_attn.v_proj")
      for w in ("bias", "weight")),
    *(P + f"paligemma.model.vision_tower.vision_model.post_layernorm.{w}" for w in ("bias", "weight")),
}
LEROBOT_PI0_KEYS = {
    *(f"model.{m}.{w}"
      for m in ("action_time_mlp_in", "action_time_mlp_out", "state_proj") for w in ("bias", "weight")),
    *(P + f"gemma_expert.model.layers.N.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")),
    P + "gemma_expert.model.norm.weight",
}
LEROBOT_PI05_KEYS = {
    *(f"model.{m}.{w}" for m in ("time_mlp_in", "time_mlp_out") for w in ("bias", "weight")),
    *(P + f"gemma_expert.model.layers.N.{n}.dense.{w}"
      for n in ("input_layernorm", "post_attention_layernorm") for w in ("bias", "weight")),
    *(P + f"gemma_expert.model.norm.dense.{w}" for w in ("bias", "weight")),
}
# LeRobot 0.6.1's processor steps (policy_preprocessor.json / policy_postprocessor.json).
LEROBOT_STEPS = {
    "pi0": (
        ["rename_observations_processor", "to_batch_processor", "pi0_new_line_processor",
         "tokenizer_processor", "device_processor", "relative_actions_processor", "normalizer_processor"],
        ["unnormalizer_processor", "absolute_actions_processor", "device_processor"],
    ),
    "pi05": (
        ["rename_observations_processor", "to_batch_processor", "relative_actions_processor",
         "normalizer_processor", "pi05_prepare_state_tokenizer_processor_step", "tokenizer_processor",
         "device_processor"],
        ["unnormalizer_processor", "absolute_actions_processor", "device_processor"],
    ),
}
# LeRobot 0.6.1's PI0Config fields, in the order its config.json has them.
LEROBOT_PI0_CONFIG_FIELDS = [
    "type", "n_obs_steps", "input_features", "output_features", "device", "use_amp", "use_peft",
    "push_to_hub", "repo_id", "private", "tags", "license", "pretrained_path", "pretrained_revision",
    "paligemma_variant", "action_expert_variant", "dtype", "chunk_size", "n_action_steps", "max_state_dim",
    "max_action_dim", "num_inference_steps", "time_sampling_beta_alpha", "time_sampling_beta_beta",
    "time_sampling_scale", "time_sampling_offset", "min_period", "max_period", "use_relative_actions",
    "relative_exclude_joints", "action_feature_names", "rtc_config", "image_resolution", "empty_cameras",
    "normalization_mapping", "gradient_checkpointing", "compile_model", "compile_mode",
    "freeze_vision_encoder", "train_expert_only", "optimizer_lr", "optimizer_betas", "optimizer_eps",
    "optimizer_weight_decay", "optimizer_grad_clip_norm", "scheduler_warmup_steps", "scheduler_decay_steps",
    "scheduler_decay_lr", "tokenizer_max_length",
]
ACTION_NAMES = ["shoulder", "elbow", "wrist_flex", "wrist_roll", "waist", "lift", "left_Gripper"]


def _stats(dims=7, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for key in ("state", "actions"):
        mean = rng.normal(0.0, 0.5, dims)
        std = rng.uniform(0.2, 1.0, dims)
        q01 = mean - rng.uniform(1.0, 2.0, dims)
        out[key] = NormStats(mean=mean, std=std, q01=q01, q99=q01 + rng.uniform(1.0, 3.0, dims),
                             q10=mean - 0.5, q90=mean + 0.5, minimum=mean - 3.0, maximum=mean + 3.0)
    return out


def _one_line(exc):
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Per variant: the openpi-layout tiny checkpoint and the same weights + stats in the LeRobot layout."""
    out = {}
    for variant, config, seed in (("pi0", "pi0-tiny", 0), ("pi05", "pi05-tiny", 1)):
        root = tmp_path_factory.mktemp(variant)
        openpi = make_tiny_checkpoint(root / "openpi", config, seed=seed, dims=7)
        model, _ = load_model(openpi)
        stats = json.loads(next((openpi / "assets").rglob("norm_stats.json")).read_text())["norm_stats"]
        stats = {k: NormStats(**v) for k, v in stats.items()}
        lerobot = save_lerobot_layout(model, root / "lerobot", stats)
        shutil.copy(openpi / "tokenizer.model", lerobot / "tokenizer.model")
        out[variant] = (openpi, lerobot, model, stats)
    return out


def _normalized_keys(path):
    with safe_open(str(path), framework="pt") as handle:
        return {re.sub(r"\.\d+\.", ".N.", k) for k in handle.keys()}


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_weights_load_equal_to_the_openpi_layout(layouts, variant, tmp_path):
    openpi, lerobot, _, _ = layouts[variant]
    expected = LEROBOT_COMMON_KEYS | (LEROBOT_PI05_KEYS if variant == "pi05" else LEROBOT_PI0_KEYS)
    assert _normalized_keys(lerobot / "model.safetensors") == expected  # LeRobot's real key names
    a, cfg_a = load_model(openpi)
    b, cfg_b = load_model(lerobot)
    assert cfg_b.pi05 == (variant == "pi05") and cfg_b.name == f"{variant}-tiny"
    assert (cfg_a.vision, cfg_a.prefix, cfg_a.expert, cfg_a.vocab_size) == (
        cfg_b.vision, cfg_b.prefix, cfg_b.expert, cfg_b.vocab_size)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key

    # The embedding is read from embed_tokens, never from paligemma.lm_head (LeRobot saves both, and a
    # fine-tune may leave them different); SigLIP keys without `vision_model.` load too.
    tensors = load_file(str(lerobot / "model.safetensors"))
    tensors[P + "paligemma.lm_head.weight"] = torch.zeros_like(tensors[P + "paligemma.lm_head.weight"])
    tensors = {k.replace("vision_tower.vision_model.", "vision_tower."): v for k, v in tensors.items()}
    variant_dir = tmp_path / "variant"
    shutil.copytree(lerobot, variant_dir)
    save_file(tensors, str(variant_dir / "model.safetensors"))
    sc = load_model(variant_dir)[0].state_dict()
    assert all(torch.equal(sa[key], sc[key]) for key in sa)


def test_weight_mismatch_names_the_keys(layouts, tmp_path):
    _, lerobot, _, _ = layouts["pi0"]
    broken = tmp_path / "broken"
    shutil.copytree(lerobot, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.state_proj.bias"]
    tensors["model.some_head.weight"] = torch.zeros(2)
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_model(broken)
    message = str(info.value)
    assert "missing keys (1)" in message and "state_proj.bias" in message
    assert "unexpected keys (1)" in message and "some_head.weight" in message


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_files_are_lerobot_s(layouts, variant):
    _, lerobot, _, _ = layouts[variant]
    meta = json.loads((lerobot / "config.json").read_text())
    fields = list(LEROBOT_PI0_CONFIG_FIELDS)
    if variant == "pi05":  # PI05Config declares tokenizer_max_length before normalization_mapping
        fields.remove("tokenizer_max_length")
        fields.insert(fields.index("normalization_mapping"), "tokenizer_max_length")
    assert list(meta) == fields
    assert meta["type"] == variant and "vla_ros" not in meta
    pre = json.loads((lerobot / "policy_preprocessor.json").read_text())
    post = json.loads((lerobot / "policy_postprocessor.json").read_text())
    assert [s["registry_name"] for s in pre["steps"]] == LEROBOT_STEPS[variant][0]
    assert [s["registry_name"] for s in post["steps"]] == LEROBOT_STEPS[variant][1]
    index = LEROBOT_STEPS[variant][0].index("normalizer_processor")
    state_file = f"policy_preprocessor_step_{index}_normalizer_processor.safetensors"
    assert pre["steps"][index]["state_file"] == state_file


def test_stats_mean_std_and_quantiles_read_from_the_processor_files(tmp_path):
    model = load_model(make_tiny_checkpoint(tmp_path / "src", "pi05-tiny", seed=2, dims=7))[0]
    stats = _stats()
    # Different modes for state and actions, the state file moved to another step index.
    out = save_lerobot_layout(model, tmp_path / "lr", stats,
                              normalization_mapping={"STATE": "MEAN_STD", "ACTION": "QUANTILES"})
    pre = json.loads((out / "policy_preprocessor.json").read_text())
    pre["steps"].insert(0, {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}})
    (out / "policy_preprocessor.json").write_text(json.dumps(pre))
    processors = read_processors(out, read_lerobot_config(out))
    assert (processors.state_mode, processors.action_mode, processors.eps) == ("zscore", "quantile", 1e-8)
    for key in ("state", "actions"):
        for name in ("mean", "std", "q01", "q99", "q10", "q90", "minimum", "maximum"):
            np.testing.assert_array_equal(
                getattr(processors.stats[key], name), getattr(stats[key], name).astype(np.float32)
            )
    # The files hold what LeRobot's hold: `<feature>.<stat>`, min/max under LeRobot's names.
    with safe_open(str(processors.action_file), framework="np") as handle:
        assert {"action.min", "action.max", "action.q01", "observation.state.mean"} <= set(handle.keys())

    # LeRobot's formulas (eps 1e-8 on std going in only; the quantile width not widened; no clipping).
    spec = read_spec(out)
    assert spec.normalization == "state zscore, actions quantile (lerobot formulas)"
    policy = Policy.from_checkpoint(out, PolicyOptions(**FP32, tokenizer=str(tmp_path / "src")))
    x = np.array([0.3, -2.0, 9.0, 0.0, 1.0, -1.0, 0.5], np.float32)
    s, a = stats["state"], stats["actions"]
    mean, std = s.mean.astype(np.float32), s.std.astype(np.float32)
    np.testing.assert_array_equal(policy.normalizer.normalize_state(x), (x - mean) / (std + np.float32(1e-8)))
    q01, q99 = a.q01.astype(np.float32), a.q99.astype(np.float32)
    y = np.array([[-1.0, 1.0, 3.0, 0.0, 0.5, -5.0, 2.0]], np.float32)
    unnorm = policy.normalizer.unnormalize_actions(y)
    np.testing.assert_array_equal(unnorm, (y + np.float32(1)) * (q99 - q01) / np.float32(2) + q01)
    assert unnorm[0, 2] > q99[2]  # no clipping
    # The openpi convention is untouched: +1e-6 both ways.
    openpi = Normalizer({"state": s, "actions": a}, "zscore")
    np.testing.assert_allclose(
        openpi.normalize_state(np.float64(x)), (x - s.mean) / (s.std + 1e-6), rtol=1e-7
    )


def test_zero_width_ranges_tiny_std_and_identity_follow_lerobot():
    f32 = np.float32
    stats = NormStats(mean=[0.0, 2.0], std=[1e-6, 2.0], q01=[1.0, 0.0], q99=[1.0, 4.0])
    lr = Normalizer({"state": stats, "actions": stats}, "quantile", "lerobot", action_mode="zscore")
    x = np.array([1.5, 3.0], np.float32)
    # A zero quantile width is replaced by eps, not widened by it.
    np.testing.assert_array_equal(
        lr.normalize_state(x), [f32(2) * f32(0.5) / f32(1e-8) - f32(1), f32(2) * f32(3) / f32(4) - f32(1)]
    )
    # std gets eps going in only, none coming out (visible on a tiny std).
    np.testing.assert_array_equal(lr.normalize_actions(x), [f32(1.5) / (f32(1e-6) + f32(1e-8)), f32(0.5)])
    np.testing.assert_array_equal(
        lr.unnormalize_actions(np.array([4.0, 1.0], np.float32)), [f32(4) * f32(1e-6), 4]
    )
    ident = Normalizer({"state": stats, "actions": stats}, "identity", "lerobot")
    np.testing.assert_array_equal(ident.normalize_state(x), x)
    with pytest.raises(ConfigError, match="openpi convention"):
        Normalizer({"state": stats, "actions": stats}, "identity")


def test_cameras_follow_input_features_order_with_empty_cameras(tmp_path):
    model = load_model(make_tiny_checkpoint(tmp_path / "src", "pi0-tiny", seed=0, dims=7))[0]
    out = save_lerobot_layout(
        model, tmp_path / "lr", _stats(), camera_names=["top", "wrist"], empty_cameras=1
    )
    shutil.copy(tmp_path / "src" / "tokenizer.model", out)
    spec = read_spec(out)
    assert spec.camera_keys == ("base_0_rgb", "left_wrist_0_rgb", "empty_camera_0")
    assert spec.camera_sources == ("top", "wrist", "empty_camera_0")
    assert spec.empty_camera_slots == ("empty_camera_0",)
    assert str(spec.provenance) == "lerobot" and spec.image_resize == "lerobot"
    # The spec crosses to the process runner as builtins.
    assert PolicySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec

    # The order of input_features decides the slots.
    meta = json.loads((out / "config.json").read_text())
    features = meta["input_features"]
    meta["input_features"] = {k: features[k] for k in ("observation.images.wrist", "observation.state",
                                                       "observation.images.top",
                                                       "observation.images.empty_camera_0")}
    (out / "config.json").write_text(json.dumps(meta))
    spec = read_spec(out)
    assert spec.camera_sources == ("wrist", "top", "empty_camera_0")

    # A camera the checkpoint has no slot for (the empty one is never fed) is refused, naming the parameter.
    assert check_fits(spec, 7, camera_keys=["base_0_rgb", "left_wrist_0_rgb"]) == []
    with pytest.raises(ConfigError) as info:
        check_fits(spec, 7, camera_keys=["base_0_rgb", "right_wrist_0_rgb"])
    assert info.value.parameter == "cameras.keys" and "empty_cameras" in _one_line(info)

    # Images go in LeRobot's order: present cameras first, then the missing ones, masked.
    policy = Policy.from_checkpoint(out, PolicyOptions(**FP32))
    rng = np.random.default_rng(0)
    wrist = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    inputs, _ = policy.preprocess(RawObservation({"left_wrist_0_rgb": wrist}, np.zeros(7, np.float32), "x"))
    assert inputs.image_masks.tolist() == [True, False, False]
    # LeRobot's images reach the model as floats in [-1, 1], never rounded to uint8.
    np.testing.assert_allclose(inputs.images[0], wrist / 255.0 * 2.0 - 1.0, atol=1e-6)
    # Frames are letterboxed the LeRobot way (auto), or as forced by policy.image_resize.
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    obs = RawObservation({"base_0_rgb": frame}, np.zeros(7, np.float32), "x")
    lerobot_way = prepare_images({"k": frame}, ["k"], 224, "lerobot", model_range=True)[0][0]
    openpi_way = prepare_images({"k": frame}, ["k"], 224, "openpi", model_range=True)[0][0]
    assert not np.array_equal(lerobot_way, openpi_way)
    np.testing.assert_array_equal(policy.preprocess(obs)[0].images[0], lerobot_way)
    forced = Policy.from_checkpoint(out, PolicyOptions(**FP32, image_resize="openpi"))
    # openpi's resize works on uint8 and hands the model uint8.
    np.testing.assert_array_equal(
        forced.preprocess(obs)[0].images[0], prepare_images({"k": frame}, ["k"], 224, "openpi")[0][0]
    )
    with pytest.raises(ObservationError) as info:
        policy.preprocess(RawObservation({"base_0_rgb": wrist, "right_wrist_0_rgb": wrist}, np.zeros(7), "x"))
    assert "empty_cameras" in _one_line(info)


def test_empty_cameras_on_top_of_three_real_ones(layouts, tmp_path):
    """LeRobot allows any number of slots: three fed cameras plus an empty one make a four-slot model."""
    directory = _lerobot_copy(layouts, tmp_path)
    _edit_json(directory / "config.json", lambda m: m.update(empty_cameras=1))
    spec = read_spec(directory)
    assert spec.camera_keys == (*CAMERA_KEYS, "empty_camera_0")
    assert spec.empty_camera_slots == ("empty_camera_0",)
    policy = Policy.from_checkpoint(directory, PolicyOptions(**FP32))
    assert policy.cfg.num_cameras == 4
    rng = np.random.default_rng(1)
    images = {k: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for k in CAMERA_KEYS}
    obs = RawObservation(images, np.zeros(7, np.float32), "x")
    inputs, _ = policy.preprocess(obs)
    assert inputs.image_masks.tolist() == [True, True, True, False]
    assert policy.infer(obs).actions.shape == (50, 7)


def test_relative_actions_made_absolute_like_lerobot(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "src", "pi0-tiny", seed=0, dims=7)
    model = load_model(src)[0]
    stats = _stats()
    out = save_lerobot_layout(
        model, tmp_path / "lr", stats, use_relative_actions=True, action_names=ACTION_NAMES
    )
    shutil.copy(src / "tokenizer.model", out)
    assert relative_mask(7, ["gripper"], ACTION_NAMES) == (True,) * 6 + (False,)
    spec = read_spec(out)
    assert spec.relative_action_dims == (0, 1, 2, 3, 4, 5)
    policy = Policy.from_checkpoint(out, PolicyOptions(**FP32))
    state = np.array([0.3, -0.2, 5.0, 0.1, 1.5, -2.5, 0.04], np.float32)
    normalized = np.random.default_rng(4).normal(size=(50, 32)).astype(np.float32)
    a = stats["actions"]
    by_hand = normalized[:, :7] * a.std.astype(np.float32) + a.mean.astype(np.float32)
    by_hand[:, :6] += state[:6]  # the gripper stays absolute
    np.testing.assert_array_equal(policy.postprocess(normalized, 7, state), by_hand)

    # Without action names LeRobot makes every dim relative, grippers too.
    meta = json.loads((out / "config.json").read_text())
    pre = json.loads((out / "policy_preprocessor.json").read_text())
    meta["action_feature_names"] = None
    for step in pre["steps"]:
        if step["registry_name"] == "relative_actions_processor":
            step["config"]["action_names"] = None
    (out / "config.json").write_text(json.dumps(meta))
    (out / "policy_preprocessor.json").write_text(json.dumps(pre))
    policy = Policy.from_checkpoint(out, PolicyOptions(**FP32))
    by_hand[:, 6] += state[6]
    np.testing.assert_array_equal(policy.postprocess(normalized, 7, state), by_hand)

    # The node must not add the state a second time.
    config = _node_config(out, policy={"action_space": "delta"})
    with pytest.raises(ConfigError) as info:
        check_config_fits(policy.spec, config)
    assert info.value.parameter == "policy.action_space" and "absolute" in _one_line(info)


def _node_config(checkpoint, **sections):
    data = {"checkpoint": str(checkpoint), "joint_names": [f"j{i}" for i in range(7)],
            "limits": {"lower": [-9.0] * 7, "upper": [9.0] * 7, "max_velocity": [1.0]}, **sections}
    return NodeConfig.from_dict(data)


def _cli(*args):
    result = subprocess.run(
        [sys.executable, "-m", "vla_ros", *map(str, args)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("variant, config, mapping", [
    ("pi0", "pi0-tiny", {"STATE": "MEAN_STD", "ACTION": "MEAN_STD"}),
    ("pi05", "pi05-tiny", {"STATE": "QUANTILES", "ACTION": "QUANTILES"}),
])
def test_same_weights_in_both_layouts_give_identical_actions_through_vla_ros_infer(
    tmp_path, variant, config, mapping
):
    """The must-hold: openpi layout and LeRobot layout, same weights, same actions (fp32, same noise).

    The LeRobot directory runs with everything on auto (its provenance picks
    LeRobot's conventions). The openpi-layout checkpoint is forced onto the
    same conventions, because the two code bases differ where they are not
    forced: `--normalization lerobot` (openpi adds 1e-6 to std and to the
    quantile width both ways, LeRobot 1e-8 on std going in only),
    `--image-resize lerobot` (Pillow vs torch bilinear on a 320x240 frame),
    `--prompt-style lerobot` (pi0: openpi cleans the text and tokenizes the
    newline apart; the prompt has an underscore and a trailing space, which
    only openpi cleans). Relative actions have no openpi-layout counterpart in
    `vla-ros infer`, so the openpi result plus state * mask (gripper
    excluded) is compared, which is LeRobot's `to_absolute_actions`. The
    third slot is an empty camera on the LeRobot side and a missing camera
    on the openpi side: both are a masked black image.
    """
    openpi = make_tiny_checkpoint(tmp_path / "openpi", config, seed=5, dims=7)
    model, _ = load_model(openpi)
    stats = json.loads(next((openpi / "assets").rglob("norm_stats.json")).read_text())["norm_stats"]
    stats = {k: NormStats(**v) for k, v in stats.items()}
    lerobot = save_lerobot_layout(
        model, tmp_path / "lerobot", stats, camera_names=["base_0_rgb", "left_wrist_0_rgb"], empty_cameras=1,
        normalization_mapping=mapping, use_relative_actions=True, action_names=ACTION_NAMES,
    )
    shutil.copy(openpi / "tokenizer.model", lerobot / "tokenizer.model")

    rng = np.random.default_rng(11)
    state = rng.normal(size=7).astype(np.float32)
    np.savez(tmp_path / "obs.npz", base_0_rgb=rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
             left_wrist_0_rgb=rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), state=state,
             prompt="pick_up the red block ")
    np.save(tmp_path / "noise.npy", rng.standard_normal((50, 32)).astype(np.float32))
    common = ["--obs", tmp_path / "obs.npz", "--noise", tmp_path / "noise.npy", "--precision", "fp32",
              "--device", "cpu"]
    _cli("infer", "--checkpoint", openpi, *common, "--out", tmp_path / "a.npy",
         "--normalization", "lerobot", "--image-resize", "lerobot", "--prompt-style", "lerobot")
    result = _cli("infer", "--checkpoint", lerobot, *common, "--out", tmp_path / "b.npy")
    assert "untrained" not in result.stderr  # save_lerobot_layout without tags: not marked untrained
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    absolute = a.copy()
    absolute[:, :6] += state[:6]
    assert b.shape == (50, 7)
    np.testing.assert_allclose(b, absolute, atol=1e-6, rtol=0)
    assert np.abs(b - a).max() > 1e-2  # the relative actions did change something


def test_make_tiny_lerobot_layout_cli(tmp_path):
    out = tmp_path / "lr"
    _cli("make-tiny", "--config", "pi05-tiny", "--out", out, "--dims", "7", "--layout", "lerobot")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "policy_postprocessor.json",
        "policy_postprocessor_step_0_unnormalizer_processor.safetensors", "policy_preprocessor.json",
        "policy_preprocessor_step_3_normalizer_processor.safetensors", "tokenizer.model",
    ]
    spec = read_spec(out)
    assert spec.untrained and spec.provenance.source == "lerobot" and spec.state_dim == 7
    assert "untrained" not in json.loads((out / "config.json").read_text())  # LeRobot refuses unknown keys


def _lerobot_copy(layouts, tmp_path, variant="pi0"):
    copy = tmp_path / "copy"
    shutil.copytree(layouts[variant][1], copy)
    return copy


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _set_step(pipeline, registry_name, **fields):
    """Edit `fields` of the step registered as `registry_name` in a processor JSON."""
    def edit(data):
        next(step for step in data["steps"] if step["registry_name"] == registry_name).update(fields)

    return lambda d: _edit_json(d / pipeline, edit)


@pytest.mark.parametrize("break_it, names", [
    (lambda d: (d / "policy_preprocessor.json").unlink(), ["policy_preprocessor.json"]),
    (lambda d: next(d.glob("policy_postprocessor_step_*")).unlink(),
     ["policy_postprocessor.json", "unnormalizer_processor.safetensors"]),
    (lambda d: _edit_json(d / "config.json",
                          lambda m: m["input_features"]["observation.state"].update(shape=[6])),
     ["normalizer_processor.safetensors", "config.json", "declares 6"]),
    (lambda d: _edit_json(d / "config.json", lambda m: m.update(image_resolution=[224, 192])),
     ["config.json", "'image_resolution'"]),
    (lambda d: _edit_json(d / "config.json", lambda m: m.update(type="pi05")), ["config.json", "fix 'type'"]),
    (lambda d: _edit_json(d / "config.json", lambda m: m["input_features"].update(
        {"observation.images.side": {"type": "VISUAL", "shape": [3, 224, 224]}})),
     ["config.json", "'input_features'", "has 4 cameras", "at most 3"]),
    (lambda d: _edit_json(d / "policy_postprocessor.json",
                          lambda m: m["steps"][0]["config"].update(norm_map={"ACTION": "MIN_MAX"})),
     ["unnormalizer_processor.safetensors", "MIN_MAX", "needs min/max"]),
    (lambda d: _edit_json(d / "policy_postprocessor.json",
                          lambda m: m["steps"][0]["config"].update(norm_map={"ACTION": "LOG"})),
     ["policy_postprocessor.json", "norm_map.ACTION"]),
    (lambda d: _edit_json(d / "policy_postprocessor.json",
                          lambda m: m["steps"][0]["config"].update(norm_map={"ACTION": ["MEAN_STD"]})),
     ["policy_postprocessor.json", "norm_map.ACTION"]),
    # A step config that is not an object: one line naming the file and the step, not an AttributeError.
    (_set_step("policy_preprocessor.json", "normalizer_processor", config=[1, 2]),
     ["policy_preprocessor.json", "normalizer_processor step's 'config'", "JSON array"]),
    (_set_step("policy_postprocessor.json", "unnormalizer_processor", config="MEAN_STD"),
     ["policy_postprocessor.json", "unnormalizer_processor step's 'config'", "JSON string"]),
    (_set_step("policy_preprocessor.json", "relative_actions_processor", config=["gripper"]),
     ["policy_preprocessor.json", "relative_actions_processor step's 'config'"]),
    (_set_step("policy_postprocessor.json", "absolute_actions_processor", config=True),
     ["policy_postprocessor.json", "absolute_actions_processor step's 'config'", "JSON boolean"]),
    (_set_step("policy_preprocessor.json", "tokenizer_processor", config=["google/paligemma-3b-pt-224"]),
     ["policy_preprocessor.json", "tokenizer_processor step's 'config'"]),
    (_set_step("policy_preprocessor.json", "normalizer_processor", state_file="../stats.safetensors"),
     ["policy_preprocessor.json", "normalizer_processor step's state_file", "file name beside it"]),
    (lambda d: _edit_json(d / "config.json", lambda m: m.update(dtype="float16")),
     ["config.json", "'dtype'", "float16", "bfloat16"]),
])
def test_broken_lerobot_directories_fail_in_one_line_naming_the_file(layouts, tmp_path, break_it, names):
    directory = _lerobot_copy(layouts, tmp_path)
    break_it(directory)
    if not names:
        read_spec(directory)
        return
    with pytest.raises(CheckpointError) as info:
        read_spec(directory)
    message = _one_line(info)
    for name in names:
        assert name in message, message


def test_quantiles_missing_name_the_statistics_file(tmp_path):
    model = load_model(make_tiny_checkpoint(tmp_path / "src", "pi05-tiny", seed=2, dims=7))[0]
    stats = {k: NormStats(mean=v.mean, std=v.std) for k, v in _stats().items()}
    out = save_lerobot_layout(model, tmp_path / "lr", stats)  # pi0.5: QUANTILES
    with pytest.raises(CheckpointError) as info:
        read_spec(out)
    assert "normalizer_processor.safetensors" in _one_line(info) and "q01/q99" in str(info.value)


def test_options_name_their_parameters(layouts, tmp_path):
    _, lerobot, _, _ = layouts["pi0"]
    with pytest.raises(ConfigError) as info:
        read_spec(lerobot, PolicyOptions(asset_id="robot"))
    assert info.value.parameter == "policy.asset_id" and "leave policy.asset_id empty" in _one_line(info)
    directory = _lerobot_copy(layouts, tmp_path)
    _edit_json(directory / "policy_preprocessor.json",
               lambda m: m["steps"][-1]["config"].update(
                   norm_map={"STATE": "IDENTITY", "ACTION": "MEAN_STD"}))
    assert read_spec(directory).normalization == "state identity, actions zscore (lerobot formulas)"
    with pytest.raises(ConfigError) as info:
        read_spec(directory, PolicyOptions(normalization="openpi"))
    assert info.value.parameter == "policy.normalization" and "identity" in _one_line(info)
    for name in ("image_resize", "normalization", "prompt_style"):
        with pytest.raises(ConfigError) as info:
            PolicyOptions(**{name: "jax"})
        assert info.value.parameter == f"policy.{name}"
    (directory / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError) as info:
        Policy.from_checkpoint(directory, PolicyOptions(**FP32))
    assert "policy.tokenizer" in _one_line(info)
    # The hint names the tokenizer the preprocessor names.
    _set_step("policy_preprocessor.json", "tokenizer_processor",
              config={"tokenizer_name": "acme/paligemma-finetuned"})(directory)
    with pytest.raises(CheckpointError) as info:
        Policy.from_checkpoint(directory, PolicyOptions(**FP32))
    assert "'acme/paligemma-finetuned'" in _one_line(info)
    # Provenance's own error is about the checkpoint, not a parameter named "provenance".
    with pytest.raises(CheckpointError, match="unknown checkpoint source 'jax'"):
        Provenance("jax")
    with pytest.raises(CheckpointError, match="'jax'"):
        PolicySpec.from_dict({**read_spec(lerobot).to_dict(), "provenance": "jax"})


def test_node_parameters_reach_the_policy_options(layouts):
    _, lerobot, _, _ = layouts["pi0"]
    options = _node_config(lerobot).policy.to_policy_options()
    assert (options.tokenizer, options.image_resize, options.num_steps) == (None, "auto", None)
    policy = {"tokenizer": "/opt/paligemma", "image_resize": "openpi", "num_steps": 5}
    options = _node_config(lerobot, policy=policy).policy.to_policy_options()
    assert (options.tokenizer, options.image_resize, options.num_steps) == ("/opt/paligemma", "openpi", 5)
    with pytest.raises(ConfigError) as info:
        _node_config(lerobot, policy={"image_resize": "bicubic"})
    assert info.value.parameter == "policy.image_resize"
    # num_steps 0 (the default) takes LeRobot's num_inference_steps.
    _edit_json(lerobot / "config.json", lambda m: m.update(num_inference_steps=3))
    try:
        policy = Policy.from_checkpoint(lerobot, PolicyOptions(**FP32, num_steps=None))
        assert policy.options.num_steps == 3 and policy.engine.num_steps == 3
    finally:
        _edit_json(lerobot / "config.json", lambda m: m.update(num_inference_steps=10))


def test_num_steps_default_is_the_checkpoints_own(layouts, tmp_path):
    """PolicyOptions.num_steps None (the default): LeRobot's num_inference_steps, else 10, wherever built."""
    from vla_ros.engines.factory import build_engine

    assert PolicyOptions().num_steps is None
    openpi = layouts["pi0"][0]
    policy = Policy.from_checkpoint(openpi, PolicyOptions(**FP32))
    assert policy.options.num_steps == 10 and policy.engine.num_steps == 10
    directory = _lerobot_copy(layouts, tmp_path)
    _edit_json(directory / "config.json", lambda m: m.update(num_inference_steps=3))
    policy = Policy.from_checkpoint(directory, PolicyOptions(**FP32))
    assert policy.options.num_steps == 3 and policy.engine.num_steps == 3
    forced = Policy.from_checkpoint(directory, PolicyOptions(**FP32, num_steps=5))
    assert forced.options.num_steps == 5 and forced.engine.num_steps == 5
    assert build_engine(directory, PolicyOptions(**FP32))[0].num_steps == 3  # unresolved options too
    eager = dict(FP32, engine="pytorch", suffix="eager")
    assert build_engine(directory, PolicyOptions(**eager))[0].denoiser.num_steps == 3
    # A Policy built from parts resolves it from its meta.
    parts = (policy.cfg, policy.engine, policy.tokenizer, policy.normalizer)
    assert Policy(*parts, meta=policy.meta).options.num_steps == 3
    assert Policy(*parts).options.num_steps == 10
    # The node's 0 is the checkpoint's.
    assert _node_config(directory).policy.to_policy_options().num_steps is None


def test_lerobot_dtype_is_read_and_shown_but_does_not_pick_the_precision(layouts, tmp_path):
    openpi, lerobot, _, _ = layouts["pi0"]
    assert read_spec(openpi).lerobot_dtype is None
    assert read_spec(lerobot).lerobot_dtype == "float32"
    directory = _lerobot_copy(layouts, tmp_path)
    _edit_json(directory / "config.json", lambda m: m.update(dtype="bfloat16"))
    assert read_lerobot_config(directory).dtype == "bfloat16"
    spec = read_spec(directory)
    assert spec.lerobot_dtype == "bfloat16"
    assert PolicySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    _edit_json(directory / "config.json", lambda m: m.pop("dtype"))
    assert read_spec(directory).lerobot_dtype == "float32"  # LeRobot's default
    # policy.precision "auto" picks the same engine for a bfloat16 config as for a float32 one.
    _edit_json(directory / "config.json", lambda m: m.update(dtype="bfloat16"))
    auto = dict(device="cpu", engine="reference")
    as_bf16 = Policy.from_checkpoint(directory, PolicyOptions(**auto)).engine.describe()
    assert as_bf16 == Policy.from_checkpoint(lerobot, PolicyOptions(**auto)).engine.describe()


def test_inference_uses_the_slots_and_mask_worked_out_at_load(tmp_path, monkeypatch):
    """Slot order, usable slots and the relative mask come from the meta once, at load, not per inference."""
    from vla_ros.policy import CheckpointMeta

    src = make_tiny_checkpoint(tmp_path / "src", "pi0-tiny", seed=0, dims=7)
    out = save_lerobot_layout(
        load_model(src)[0], tmp_path / "lr", _stats(), camera_names=["top", "wrist"], empty_cameras=1,
        use_relative_actions=True, action_names=ACTION_NAMES,
    )
    shutil.copy(src / "tokenizer.model", out)
    policy = Policy.from_checkpoint(out, PolicyOptions(**FP32, seed=0))
    rng = np.random.default_rng(3)
    state = rng.uniform(-1, 1, 7).astype(np.float32)
    frames = {k: rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for k in CAMERA_KEYS[:2]}
    observations = [RawObservation(frames, state, "x"),
                    RawObservation({"left_wrist_0_rgb": frames["left_wrist_0_rgb"]}, state, "x")]
    noise = policy.sample_noise()
    expected = [policy.infer(obs, noise=noise).actions for obs in observations]
    normalized = rng.normal(size=(50, 32)).astype(np.float32)
    post = {dims: policy.postprocess(normalized, dims, state) for dims in (7, 5)}

    def recomputed(*args, **kwargs):
        raise AssertionError("recomputed per inference")

    for name in ("slot_keys", "relative_mask"):
        monkeypatch.setattr(CheckpointMeta, name, recomputed)
    monkeypatch.setattr("vla_ros.policy.relative_mask", recomputed)
    monkeypatch.setattr("vla_ros.policy.slot_keys", recomputed)
    for obs, actions in zip(observations, expected):
        np.testing.assert_array_equal(policy.infer(obs, noise=noise).actions, actions)
    inputs, _ = policy.preprocess(observations[1])
    assert inputs.image_masks.tolist() == [True, False, False]  # present first (LeRobot), empty last
    for dims, actions in post.items():
        np.testing.assert_array_equal(policy.postprocess(normalized, dims, state), actions)
    # The mask of 5 dims is the start of the mask of 7 (all relative but the gripper, dim 6).
    a = _stats()["actions"]
    by_hand = normalized[:, :5] * a.std[:5].astype(np.float32) + a.mean[:5].astype(np.float32) + state[:5]
    np.testing.assert_array_equal(post[5], by_hand)
    with pytest.raises(ObservationError) as info:
        policy.preprocess(RawObservation({"right_wrist_0_rgb": frames["base_0_rgb"]}, state, "x"))
    assert "base_0_rgb (= top), left_wrist_0_rgb (= wrist)" in _one_line(info)


def test_config_json_is_parsed_once_for_the_conventions(layouts, monkeypatch):
    from vla_ros.model import checkpoint

    parsed = []
    read_json = checkpoint._read_json

    def counting(path):
        parsed.append(path.name)
        return read_json(path)

    monkeypatch.setattr(checkpoint, "_read_json", counting)
    read_spec(layouts["pi0"][1])
    # config_from_checkpoint's, and one for the conventions and the untrained tag (was three).
    assert parsed.count("config.json") <= 2, parsed


@pytest.mark.parametrize("break_it, names", [
    (lambda d: (d / "policy_preprocessor.json").write_text("{not json"),
     ["policy_preprocessor.json", "not valid JSON"]),
    (lambda d: (d / "policy_postprocessor.json").write_text('{"steps": 3}'),
     ["policy_postprocessor.json", '"steps"']),
    (lambda d: (d / "policy_postprocessor.json").write_text('["unnormalizer_processor"]'),
     ["policy_postprocessor.json", '"steps"']),
    (_set_step("policy_preprocessor.json", "normalizer_processor", state_file="/etc/passwd"),
     ["policy_preprocessor.json", "file name beside it"]),
    (_set_step("policy_postprocessor.json", "unnormalizer_processor", state_file="gone.safetensors"),
     ["policy_postprocessor.json", "gone.safetensors", "does not exist"]),
    (lambda d: (d / "config.json").write_text("[1, 2]"), ["config.json", "JSON object"]),
])
def test_export_copies_processor_files_through_the_guarded_reader(layouts, tmp_path, break_it, names):
    from vla_ros.engines.artifact import copy_runtime_files
    from vla_ros.model.checkpoint import config_from_checkpoint

    directory = _lerobot_copy(layouts, tmp_path)
    cfg = config_from_checkpoint(directory)
    good = tmp_path / "good"
    good.mkdir()
    copied = copy_runtime_files(directory, good, cfg)
    state_files = sorted(p.name for p in directory.glob("policy_*processor_step_*.safetensors"))
    assert sorted(set(copied) - {"config.json", "tokenizer.model"}) == sorted(
        ["policy_preprocessor.json", "policy_postprocessor.json", *state_files]
    )
    break_it(directory)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError) as info:
        copy_runtime_files(directory, out, cfg)
    message = _one_line(info)
    for name in names:
        assert name in message, message


def test_a_lerobot_checkpoint_exports_to_a_deployable_artifact(tmp_path):
    """Export copies the processor files and takes LeRobot's float images unrounded (float graph input)."""
    import onnx

    from vla_ros.engines.onnx_export import export_artifact
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "ck", "pi05-tiny", seed=3, dims=14, layout="lerobot")
    manifest = export_artifact(checkpoint, tmp_path / "art")
    assert manifest["graph"]["file"] == "prefix.onnx"
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        assert (tmp_path / "art" / name).is_file()
    graph = onnx.load(str(tmp_path / "art" / "prefix.onnx"), load_external_data=False)
    images = next(i for i in graph.graph.input if i.name == "images")
    assert images.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    rng = np.random.default_rng(5)
    obs = RawObservation(
        {"base_0_rgb": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)},
        rng.uniform(-0.5, 0.5, 14).astype(np.float32),
        "pick up the cube",
    )
    options = PolicyOptions(device="cpu", precision="fp32", seed=0)
    reference = Policy.from_checkpoint(checkpoint, dataclasses.replace(options, engine="reference"))
    deployed = Policy.from_artifacts(tmp_path / "art", options)
    assert deployed.spec.provenance.source == "lerobot"
    noise = reference.sample_noise()
    expected = reference.infer(obs, noise=noise).actions
    np.testing.assert_allclose(deployed.infer(obs, noise=noise).actions, expected, atol=1e-4)
