"""vla_ros against golden outputs of LeRobot 0.6.1's own pi0 / pi0.5 pipeline.

The fixtures in test/fixtures/lerobot_0_6_1/{pi0,pi05} were written by
scripts/make_lerobot_fixtures.py inside a LeRobot 0.6.1 venv (this venv cannot
import LeRobot): tiny policies with the sizes of `pi0-tiny` / `pi05-tiny`,
saved with LeRobot's `save_pretrained`, and LeRobot's preprocessor ->
`predict_action_chunk(noise=...)` -> postprocessor run in float32 on two
observations with the same state, prompt and noise. Each folder's README.md
says what it holds. pi0 has three cameras plus `empty_cameras=1` (four model
slots) and absolute actions; pi0.5 has the three cameras and
`use_relative_actions` with the grippers excluded.

The two observations (`expected_meta.json` -> `observations`, whose `files`
name each one's files):

- "full": every camera. cam_high is a 480x640 frame with fine stripes, a
  chirp and a noise patch, which LeRobot shrinks to 168x224 with torch's
  bilinear without antialiasing (where it differs most from Pillow's); the
  two wrist cameras are small and enlarged.
- "missing": the same without the middle camera (cam_left_wrist; files with
  the suffix `_missing`). LeRobot puts the present cameras first, so
  cam_right_wrist moves into the second slot and the missing slot follows,
  all -1 and masked; the fixture records LeRobot's own order and outputs.

Every comparison below runs on both observations.

What is compared, stage by stage, so that a mismatch points at its stage:

- the fixture itself is a LeRobot policy directory (no vla_ros involved);
- prompt tokens: `PromptTokenizer(style="lerobot")` from the fixture's
  tokenizer.json and tokenizer.model (exact);
- model-input images: `prepare_images(method="lerobot", model_range=True)`
  (1e-6 in [-1, 1]);
- normalized state and unnormalized actions: `Normalizer(convention="lerobot")`
  with the statistics of the processor files (1e-6 / 1e-5);
- the network: vla_ros' `Pi0Model` with the fixture's weights, fed LeRobot's
  own model inputs, against LeRobot's normalized actions (1e-4);
- end to end through `Policy.from_checkpoint(<LeRobot dir>)`: its
  preprocessed inputs (tokens, images, state), its engine's normalized
  actions and `infer`'s actions (1e-4).

The pi0 fixture has three cameras plus LeRobot's `empty_cameras=1`: four
model slots, the empty one never fed. Where a masked slot sits does not move
the actions (it takes no position and no attention), so the slot order is
checked on the model-input images, slot by slot.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lerobot_0_6_1"
FAMILIES = ("pi0", "pi05")
OBSERVATIONS = ("full", "missing")  # all cameras; cam_left_wrist absent
ACTION_ATOL = 1e-4  # float32 end to end, LeRobot vs vla_ros
IMAGE_ATOL = 1e-6  # [-1, 1] units; one uint8 level is 2 / 255 = 7.8e-3
STATE_ATOL = 1e-6
UNNORM_ATOL = 1e-5

POLICY_FAMILIES = ["pi0", "pi05"]  # pi0: three cameras plus one empty slot (four)


@functools.lru_cache(maxsize=None)
def fixture(family: str, observation: str = "full") -> dict:
    """One observation's inputs and LeRobot's outputs, as plain numpy (cached; treat as read-only)."""
    folder = FIXTURES / family
    meta = json.loads((folder / "expected_meta.json").read_text())
    case = meta["observations"][observation]
    files = case["files"]
    prefix = "observation.images."
    with np.load(folder / files["observation"]) as obs:
        images = {key[len(prefix):]: obs[key] for key in obs.files if key.startswith(prefix)}
        state, prompt = obs["state"], str(obs["prompt"])
    with np.load(folder / files["images"]) as expected_images:
        model_images, image_masks = expected_images["images"], expected_images["masks"]
    return {
        "dir": folder,
        "meta": meta,
        "case": case,  # this observation's entry in expected_meta.json
        "images": images,  # camera name (cam_high, ...) -> uint8 (H, W, 3); absent cameras left out
        "state": state,
        "prompt": prompt,
        "noise": np.load(folder / "noise.npy"),
        "tokens": np.load(folder / files["tokens"]),
        "token_mask": np.load(folder / files["token_mask"]),
        "model_images": model_images,  # (slots, 3, 224, 224) float32 in [-1, 1], in LeRobot's slot order
        "image_masks": image_masks,
        "norm_state": np.load(folder / files["state"]),  # (32,), zero-padded
        "normalized": np.load(folder / files["actions_normalized"]),
        "actions": np.load(folder / files["actions"]),
        # The order LeRobot filled the model's slots: present cameras, then the missing ones.
        "slots": [key[len(prefix):] for key in case["camera_slots"]],
        "config_slots": [key[len(prefix):] for key in meta["camera_slots"]],
    }


def _max_err(actual, expected) -> float:
    return float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _processor_stats(family: str) -> tuple[dict, dict, float]:
    """(state stats, action stats, eps) from the LeRobot normalizer files named in the processor JSON."""
    folder = FIXTURES / family
    pre = json.loads((folder / "policy_preprocessor.json").read_text())
    step = next(s for s in pre["steps"] if s.get("registry_name") == "normalizer_processor")
    tensors = _read_safetensors(folder / step["state_file"])

    def stats(feature: str) -> dict:
        return {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == feature}

    return stats("observation.state"), stats("action"), float(step["config"]["eps"])


# --- the fixture is a LeRobot 0.6.1 policy directory --------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_fixture_is_a_lerobot_policy_directory(family):
    f = fixture(family)
    folder, meta = f["dir"], f["meta"]
    config = json.loads((folder / "config.json").read_text())
    assert config["type"] == family
    assert config["paligemma_variant"] == "gemma_2b" and config["action_expert_variant"] == "gemma_300m"
    assert [k for k, v in config["input_features"].items() if v["type"] == "VISUAL"] == meta["camera_slots"]
    assert config["output_features"]["action"]["shape"] == [14]
    assert config["empty_cameras"] == (1 if family == "pi0" else 0)
    assert config["use_relative_actions"] is (family == "pi05")
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        pipeline = json.loads((folder / name).read_text())
        assert pipeline["name"] == name[: -len(".json")]
        for step in pipeline["steps"]:
            assert "registry_name" in step and "config" in step
            if "state_file" in step:
                assert (folder / step["state_file"]).is_file()
    pre = json.loads((folder / "policy_preprocessor.json").read_text())
    tokenizer_step = next(s for s in pre["steps"] if s["registry_name"] == "tokenizer_processor")
    assert tokenizer_step["config"]["tokenizer_name"] == "google/paligemma-3b-pt-224"
    assert tokenizer_step["config"]["max_length"] == meta["tokenizer_max_length"]
    weights = _read_safetensors(folder / "model.safetensors")
    assert all(key.startswith("model.") for key in weights)
    assert all(v.dtype == np.float32 for v in weights.values())
    embed = weights["model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"]
    assert embed.shape == (512, 64)
    assert weights["model.action_in_proj.weight"].shape == (32, 32)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / "tokenizer" / name).is_file()
    sizes = {k[len("observation.images."):]: tuple(hw) for k, hw in meta["camera_sizes_hw"].items()}
    # At least one real camera frame that LeRobot shrinks (a 480x640 camera), besides enlarged ones.
    assert (480, 640) in sizes.values()
    assert any(max(hw) < 224 for hw in sizes.values())


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_fixture_observation(family, observation):
    f = fixture(family, observation)
    meta, case = f["meta"], f["case"]
    n_slots = len(meta["camera_slots"])
    assert f["model_images"].shape == (n_slots, 3, 224, 224) and f["model_images"].dtype == np.float32
    assert f["image_masks"].tolist() == case["image_masks"]
    assert sorted(f["slots"]) == sorted(f["config_slots"])
    assert f["tokens"].shape == f["token_mask"].shape == (meta["tokenizer_max_length"],)
    assert int(f["token_mask"].sum()) == case["num_tokens"]
    assert f["noise"].shape == (50, 32) and f["norm_state"].shape == (32,)
    assert f["normalized"].shape == f["actions"].shape == (50, 14)
    assert f["state"].shape == (14,) and f["state"].dtype == np.float32
    assert str(f["prompt"]) == meta["task"]
    sizes = {k[len("observation.images."):]: tuple(hw) for k, hw in meta["camera_sizes_hw"].items()}
    absent = {k[len("observation.images."):] for k in case["absent_cameras"]}
    assert {name: image.shape[:2] for name, image in f["images"].items()} == {
        name: hw for name, hw in sizes.items() if name not in absent
    }
    assert all(image.dtype == np.uint8 and image.shape[2] == 3 for image in f["images"].values())
    # A masked slot (missing or empty camera) is all -1, a fed one is not.
    for slot, (name, fed) in enumerate(zip(f["slots"], f["image_masks"])):
        assert fed == (name in f["images"]), name
        assert bool(np.all(f["model_images"][slot] == -1.0)) == (not fed), name


def test_fixture_missing_camera_moves_the_later_cameras_forward():
    """LeRobot's own record: the missing camera's slot goes last among the cameras, the later ones move up."""
    for family in FAMILIES:
        full, missing = fixture(family, "full"), fixture(family, "missing")
        assert missing["case"]["absent_cameras"] == ["observation.images.cam_left_wrist"]
        assert full["slots"] == full["config_slots"]
        assert missing["slots"][:3] == ["cam_high", "cam_right_wrist", "cam_left_wrist"]
        assert missing["image_masks"][:3].tolist() == [True, True, False]
        for name in missing["images"]:  # each camera is resized on its own: same image, other slot
            expected = full["model_images"][full["slots"].index(name)]
            assert np.array_equal(missing["model_images"][missing["slots"].index(name)], expected), name
        assert _max_err(missing["normalized"], full["normalized"]) > 1e-2  # a different case, not a copy
        assert np.array_equal(missing["noise"], full["noise"])
        assert np.array_equal(missing["state"], full["state"])


# --- stage by stage -----------------------------------------------------------------------


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("tokenizer_file", ["tokenizer.json", "tokenizer.model"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_match_lerobot(family, tokenizer_file, observation):
    from vla_ros.observation.tokenizer import PromptTokenizer

    f = fixture(family, observation)
    tokenizer = PromptTokenizer(
        f["dir"] / "tokenizer" / tokenizer_file, f["meta"]["tokenizer_max_length"], family, style="lerobot"
    )
    # pi0.5 puts the normalized state in the prompt: LeRobot's own, so that only the tokenizer is tested.
    state = f["norm_state"][:14] if family == "pi05" else None
    tokens, mask = tokenizer.tokenize(f["prompt"], state)
    assert mask.tolist() == f["token_mask"].tolist()
    lerobot = f["tokens"][: f["case"]["num_tokens"]].tolist()
    assert tokens.astype(np.int64).tolist() == f["tokens"].tolist(), (
        f"LeRobot tokenized {f['case']['tokenized_text']!r} as {lerobot}"
    )
    if family == "pi0":  # the fixture tells the two pi0 prompt styles apart
        openpi = PromptTokenizer(
            f["dir"] / "tokenizer" / tokenizer_file, f["meta"]["tokenizer_max_length"], family, style="openpi"
        )
        assert openpi.tokenize(f["prompt"])[0].tolist() != f["tokens"].tolist()


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_model_input_images_match_lerobot(family, observation):
    from vla_ros.observation.image import prepare_images

    f = fixture(family, observation)
    # In LeRobot's slot order (a missing camera after the present ones): the resize, pad and range.
    images, masks = prepare_images(f["images"], f["slots"], 224, "lerobot", model_range=True)
    assert masks.tolist() == f["image_masks"].tolist()
    assert images.dtype == np.float32
    expected = f["model_images"].transpose(0, 2, 3, 1)  # LeRobot's CHW -> vla_ros' HWC
    for slot, name in enumerate(f["slots"]):
        err = _max_err(images[slot], expected[slot])
        assert err <= IMAGE_ATOL, f"slot {slot} ({name}): max error {err:.2e} in [-1, 1] units"


def _lerobot_normalizer(family: str):
    from vla_ros.observation.normalize import Normalizer, NormStats

    state, action, eps = _processor_stats(family)
    mode = {"MEAN_STD": "zscore", "QUANTILES": "quantile"}
    mapping = fixture(family)["meta"]["normalization_mapping"]

    def norm_stats(values: dict) -> NormStats:
        return NormStats(mean=values["mean"], std=values["std"], q01=values["q01"], q99=values["q99"])

    return Normalizer(
        {"state": norm_stats(state), "actions": norm_stats(action)},
        mode[mapping["STATE"]],
        "lerobot",
        action_mode=mode[mapping["ACTION"]],
        eps=eps,
    )


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_normalized_state_matches_lerobot(family, observation):
    f = fixture(family, observation)
    normalized = _lerobot_normalizer(family).normalize_state(f["state"])
    err = _max_err(normalized, f["norm_state"][:14])
    assert err <= STATE_ATOL, f"max error {err:.2e}"
    if family == "pi05":  # the fixture puts two dims outside [-1, 1]: bins -1 and 255, not clipped
        from vla_ros.observation.tokenizer import discretize_state

        assert discretize_state(normalized)[:2].tolist() == [-1, 255]


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_unnormalized_actions_match_lerobot(family, observation):
    f = fixture(family, observation)
    actions = _lerobot_normalizer(family).unnormalize_actions(f["normalized"])
    # LeRobot's AbsoluteActionsProcessorStep: + raw state on the relative dims (mask recorded by the script).
    actions = actions + f["state"] * np.asarray(f["meta"]["relative_mask"], np.float32) * float(
        f["meta"]["use_relative_actions"]
    )
    err = _max_err(actions, f["actions"])
    assert err <= UNNORM_ATOL, f"max error {err:.2e}"


def _tiny_model(family: str):
    """vla_ros' Pi0Model with the fixture's weights, without the LeRobot loader (sizes from get_config)."""
    import torch

    from vla_ros.model.config import get_config
    from vla_ros.model.pi0 import Pi0Model

    f = fixture(family)
    cfg = get_config(f"{family}-tiny", num_cameras=len(f["slots"]))
    model = Pi0Model(cfg)
    weights = {
        key[len("model."):]: torch.from_numpy(value)
        for key, value in _read_safetensors(f["dir"] / "model.safetensors").items()
        if not key.endswith("lm_head.weight")  # unused by inference; LeRobot saves both heads
    }
    model.load_state_dict(weights, strict=True)
    return model.float().eval()


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_network_matches_lerobot_given_lerobot_inputs(family, observation):
    import torch

    f = fixture(family, observation)
    model = _tiny_model(family)
    # Float images are taken as already in [-1, 1]: LeRobot's own model inputs, unrounded.
    pixels = np.ascontiguousarray(f["model_images"].transpose(0, 2, 3, 1))
    with torch.no_grad():
        out = model.sample_actions(
            torch.from_numpy(pixels)[None],
            torch.from_numpy(f["image_masks"])[None],
            torch.from_numpy(f["tokens"])[None],
            torch.from_numpy(f["token_mask"])[None],
            torch.from_numpy(f["norm_state"])[None],
            noise=torch.from_numpy(f["noise"])[None],
            num_steps=f["meta"]["num_inference_steps"],
        )
    err = _max_err(out[0, :, :14].numpy(), f["normalized"])
    assert err <= ACTION_ATOL, f"normalized actions: max error {err:.2e}"


# --- end to end through Policy.from_checkpoint ---------------------------------------------


@functools.lru_cache(maxsize=None)
def _policy(family: str, engine: str = "auto"):
    from vla_ros.policy import Policy, PolicyOptions

    # No convention is forced: a LeRobot directory must select LeRobot's resize, prompt and
    # normalization itself.
    return Policy.from_checkpoint(
        fixture(family)["dir"], PolicyOptions(device="cpu", precision="fp32", engine=engine)
    )


def _observation(policy, family: str, observation: str):
    """The fixture's observation keyed by the policy's slots, mapped from the LeRobot camera names.

    An absent camera is simply not in `images`: the policy must order the slots itself.
    """
    from vla_ros.types import RawObservation

    f = fixture(family, observation)
    spec = policy.spec
    by_source = dict(zip(spec.camera_sources, spec.camera_keys))
    images = {by_source[name]: image for name, image in f["images"].items()}
    return RawObservation(images=images, state=f["state"].copy(), prompt=f["prompt"])


@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_policy_reads_the_lerobot_directory(family):
    f = fixture(family)
    spec = _policy(family).spec
    assert spec.variant == family
    assert spec.provenance.source == "lerobot"
    assert (spec.image_resize, spec.prompt_style) == ("lerobot", "lerobot")
    assert list(spec.camera_sources) == f["config_slots"]
    assert spec.state_dim == spec.action_stats_dim == 14
    assert spec.max_token_len == f["meta"]["tokenizer_max_length"]
    relative = []
    if f["meta"]["use_relative_actions"]:
        relative = [i for i, m in enumerate(f["meta"]["relative_mask"]) if m]
    assert list(spec.relative_action_dims) == relative


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_policy_tokens_match_lerobot(family, observation):
    f = fixture(family, observation)
    policy = _policy(family)
    inputs, _ = policy.preprocess(_observation(policy, family, observation), f["noise"])
    assert inputs.token_masks.tolist() == f["token_mask"].tolist()
    assert inputs.tokens.astype(np.int64).tolist() == f["tokens"].tolist()


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_policy_state_matches_lerobot(family, observation):
    f = fixture(family, observation)
    policy = _policy(family)
    inputs, _ = policy.preprocess(_observation(policy, family, observation), f["noise"])
    err = _max_err(inputs.state, f["norm_state"])
    assert err <= STATE_ATOL, f"normalized, padded state: max error {err:.2e}"


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_policy_model_input_images_match_lerobot(family, observation):
    f = fixture(family, observation)
    policy = _policy(family)
    inputs, _ = policy.preprocess(_observation(policy, family, observation), f["noise"])
    # Slot by slot, in the order LeRobot filled them (present cameras first, then the missing one).
    assert inputs.image_masks.tolist() == f["image_masks"].tolist(), f"LeRobot's slots: {f['slots']}"
    images = np.asarray(inputs.images)
    # The engines take uint8 (scaled x / 255 * 2 - 1 inside) or model-range floats.
    model_range = images / 255.0 * 2.0 - 1.0 if images.dtype == np.uint8 else images
    expected = f["model_images"].transpose(0, 2, 3, 1)
    errors = {name: _max_err(model_range[slot], expected[slot]) for slot, name in enumerate(f["slots"])}
    assert max(errors.values()) <= IMAGE_ATOL, (
        f"images the engine gets ({images.dtype}) differ from LeRobot's, max error per LeRobot slot in"
        f" [-1, 1]: { {name: f'{err:.2e}' for name, err in errors.items()} }"
        + (" (LeRobot's float resize rounded to uint8 levels)" if images.dtype == np.uint8 else "")
    )


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_policy_normalized_actions_match_lerobot(family, observation):
    f = fixture(family, observation)
    policy = _policy(family)
    inputs, _ = policy.preprocess(_observation(policy, family, observation), f["noise"])
    policy.engine.encode_prefix(inputs)
    normalized = policy.engine.denoise(inputs)
    err = _max_err(normalized[:, :14], f["normalized"])
    assert err <= ACTION_ATOL, f"normalized actions: max error {err:.2e}"


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("engine", ["auto", "reference"])
@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_policy_actions_match_lerobot(family, engine, observation):
    f = fixture(family, observation)
    policy = _policy(family, engine)
    actions = policy.infer(_observation(policy, family, observation), noise=f["noise"]).actions
    assert actions.shape == f["actions"].shape
    err = _max_err(actions, f["actions"])
    assert err <= ACTION_ATOL, f"actions (robot units): max error {err:.2e}"
