#!/usr/bin/env python3
r"""Golden parity fixtures from LeRobot 0.6.1's own pi0 / pi0.5 pipeline, for test/test_lerobot_parity.py.

RUN ONLY INSIDE A LEROBOT 0.6.1 VIRTUAL ENVIRONMENT. LeRobot 0.6.1 needs
Python >= 3.12 and pins transformers < 5.6 and torch < 2.12, so it cannot be
installed into the project venv; make a throwaway one:

    python3.12 -m venv /tmp/lrvenv
    /tmp/lrvenv/bin/pip install "lerobot[pi]==0.6.1" sentencepiece protobuf
    /tmp/lrvenv/bin/python scripts/make_lerobot_fixtures.py          # from the repository root

Anywhere else it stops with one line and exit status 2. It needs no network
(nothing is fetched from the Hugging Face Hub) and writes, for each family
(`--family pi0 pi05`), a folder `<out>/<family>/` (default out:
test/fixtures/lerobot_0_6_1) holding:

- exactly what LeRobot writes for a trained policy: `config.json`,
  `model.safetensors` (`PreTrainedPolicy.save_pretrained`),
  `policy_preprocessor.json`, `policy_postprocessor.json` and their
  normalizer / unnormalizer `.safetensors` (`PolicyProcessorPipeline.save_pretrained`);
- `tokenizer/`: the Hugging Face tokenizer the preprocessor used in place of
  google/paligemma-3b-pt-224 (`tokenizer.model`, `tokenizer.json`,
  `tokenizer_config.json`);
- the inputs (`observation.npz`, `noise.npy`) and LeRobot's outputs
  (`expected_*.npy`, `expected_images.npz`, `expected_meta.json`), and a
  `README.md` saying how they were made;
- a second observation, the same but with the middle camera (cam_left_wrist)
  absent, and LeRobot's outputs for it: the same files with the suffix
  `_missing` (`observation_missing.npz`, `expected_tokens_missing.npy`, ...;
  `expected_meta.json` lists both sets under `observations`), so that
  LeRobot's present-cameras-first slot order is recorded, not inferred.

One camera (cam_high) is a real camera's 480x640 frame with fine detail, which
LeRobot shrinks to 168x224 (torch's bilinear without antialiasing, where it
differs most from Pillow's); the other two are small and enlarged.

The policy is a tiny pi0 / pi0.5 with the sizes of vla_ros' `pi0-tiny` /
`pi05-tiny` (read from vla_ros/model/config.py of this checkout) and seeded
random weights, scaled so that every input visibly moves the actions. The
outputs come from LeRobot's own objects, reloaded from the written folder the
way a user loads a checkpoint (`<Policy>.from_pretrained`,
`make_pre_post_processors(pretrained_path=..., preprocessor_overrides=...)`),
run the way `lerobot.common.control_utils.predict_action` runs them
(`prepare_observation_for_inference` -> preprocessor -> policy ->
postprocessor), in float32 on the CPU with one thread, except that
`predict_action_chunk(batch, noise=...)` takes the place of `select_action` so
the noise is fixed.

Patches applied to LeRobot (sizes and the tokenizer's location only; every
computation is LeRobot's own code):

1. `modeling_pi0.get_gemma_config` / `modeling_pi05.get_gemma_config`: the
   size table of the two Gemma variants. LeRobot accepts only "gemma_2b" and
   "gemma_300m" (anything else raises), so the variant names stay in
   config.json and the patched table returns the tiny prefix sizes for
   "gemma_2b" and the tiny expert sizes for "gemma_300m".
2. `PaliGemmaForConditionalGenerationWithPiGemma`, as the two modeling modules
   name it: a wrapper that edits the Hugging Face config LeRobot built before
   calling the real constructor: the SigLIP sizes (LeRobot hard-codes
   So400m's 1152 / 27 layers / 16 heads / 4304, and the projector width 2048
   = gemma_2b's width) and the text vocabulary (LeRobot hard-codes 257152).
3. `PiGemmaForCausalLM`, likewise: the action expert's vocabulary 257152 ->
   the tiny one (only its unused `lm_head` has vocabulary rows).
4. While the processor factory builds the pipelines only:
   `AutoTokenizer.from_pretrained("google/paligemma-3b-pt-224")` (hard-coded
   in the factory, a gated Hub repo) is redirected to the fixture's
   `tokenizer/` folder, so the saved `policy_preprocessor.json` names the real
   tokenizer as every LeRobot checkpoint does. The outputs are computed after
   the patch is removed, with LeRobot's documented override
   (`preprocessor_overrides={"tokenizer_processor": {"tokenizer_name": <dir>}}`).

Patches 1-3 change shapes only: layer counts, widths and the number of
embedding rows that LeRobot reads from fixed tables. Norms, attention, masks,
positions, the time embedding, the Euler loop, image resizing, prompts,
normalization and relative actions run unmodified. The patches stay active
while the policy is reloaded, since config.json cannot express tiny sizes
(which is also why a loader must take the sizes from the weights' shapes).
PaliGemma's `image_token_index` stays 257152: LeRobot never uses it (it
embeds images and text itself and calls the language model on embeddings).

Not patches, but done to LeRobot objects: after construction every parameter
is overwritten with seeded random values (`init_weights`; LeRobot's own
initialisation makes the tiny network nearly input-independent), and while the
pipeline runs, the policy instance's `_preprocess_images` is wrapped to record
what it returns (`expected_images.npz`); the wrapper passes the result on
unchanged. `sensitivity` reruns LeRobot's `sample_actions` on perturbed
inputs to show how sharp the 1e-4 check is (its Pillow resize and fixed-slot
order are perturbations, not LeRobot's code); it writes no expected value.

The tokenizer is vla_ros' `train_tokenizer` stand-in (512 pieces, PaliGemma's
special ids; the SentencePiece model of `vla-ros make-tiny`), converted by
transformers to the Hugging Face `GemmaTokenizer` LeRobot loads; the script
checks that both give the same ids on the prompts it uses.

Run twice, it writes byte-identical files (checked with `--check-determinism`,
which generates into a temporary folder and compares).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
import platform
import shutil
import sys
import tempfile
import zipfile

_EXPECTED_LEROBOT = "0.6.1"


def _require_lerobot() -> None:
    """Exit with one line unless LeRobot 0.6.1 is importable (before any heavy import)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        found = version("lerobot")
    except PackageNotFoundError:
        found = None
    except Exception as exc:  # a broken environment: say so in the same one line
        found = f"unreadable ({exc})"
    if found != _EXPECTED_LEROBOT:
        print(
            f"make_lerobot_fixtures.py: run this inside a LeRobot {_EXPECTED_LEROBOT} venv "
            f"(Python >= 3.12, pip install 'lerobot[pi]=={_EXPECTED_LEROBOT}' sentencepiece protobuf); "
            f"this interpreter ({sys.executable}, Python {sys.version.split()[0]}) has lerobot "
            f"{found or 'not installed'}",
            file=sys.stderr,
        )
        raise SystemExit(2)


REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "test" / "fixtures" / "lerobot_0_6_1"
FAMILIES = ("pi0", "pi05")
HUB_TOKENIZER = "google/paligemma-3b-pt-224"

# --- what the fixture contains ------------------------------------------------------------

SEED = 20240601
# camera -> (height, width): a real camera's 480x640 frame (shrunk to 168x224, where torch's
# bilinear without antialiasing and Pillow's differ most) and two small ones (enlarged: non-square,
# one portrait, odd paddings).
CAMERAS = {
    "cam_high": (480, 640),
    "cam_left_wrist": (63, 100),
    "cam_right_wrist": (96, 70),
}
# The observations, each run through the whole pipeline with the same state, prompt and noise:
# name -> (suffix of its files, cameras left out). "missing" drops the middle camera, so LeRobot's
# present-cameras-first order moves cam_right_wrist forward into the second slot.
OBSERVATIONS = {
    "full": ("", ()),
    "missing": ("_missing", ("cam_left_wrist",)),
}
JOINTS = [
    f"{side}_{joint}"
    for side in ("left", "right")
    for joint in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
]
STATE_DIM = ACTION_DIM = len(JOINTS)  # 14, ALOHA's layout
TASK = "Pick up the red_block and put it in the bowl"
# Per family: what the fixture exercises besides the common path.
FAMILY_OPTIONS = {
    "pi0": {"empty_cameras": 1, "use_relative_actions": False},
    "pi05": {"empty_cameras": 0, "use_relative_actions": True},
}
NUM_STEPS = 10
# Perturbations that must move the normalized actions by more than 1e-3 (10x the test tolerance).
REQUIRED_SENSITIVITY = (
    "images rounded to uint8 levels after the resize",
    "first camera +1 uint8 level",
    "first camera shrunk with Pillow's bilinear (openpi) instead of torch's",
    "prompt cleaned as openpi does",
    "one prompt token changed",
    "masked slots unmasked",
    "the missing camera present (the full observation)",
)
# Not required: "cameras in fixed slots (openpi) instead of present-first". A masked slot takes no
# position (positions are the cumulative sum of the prefix mask) and no attention, so moving it
# changes the actions only by float rounding; the order is checked on the model-input images.
# Weight scale: std = WEIGHT_GAIN / sqrt(fan_in) for matrices, so activations stay O(1).
WEIGHT_GAIN = 1.0
BIAS_STD = 0.1
NORM_STD = 0.1


def _say(message: str) -> None:
    print(f"[make_lerobot_fixtures] {message}", flush=True)


# --- deterministic writers ----------------------------------------------------------------


def _npy_bytes(array) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_npy(path: Path, array) -> None:
    path.write_bytes(_npy_bytes(array))


def save_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed, but with fixed zip timestamps so that reruns are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, _npy_bytes(array))


def save_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# --- inputs -------------------------------------------------------------------------------


def make_image(height: int, width: int, rng):
    """A uint8 RGB frame with structure at every scale: ramps, flat shapes, hard edges, a noise patch.

    Mostly separable or piecewise flat, so that the resized float32 copy in
    expected_images.npz compresses well; the noise patch and the 1-pixel
    checkerboard are where resampling filters differ most. A frame larger than
    the model image (a real camera's 480x640, shrunk) also gets what a shrinking
    filter without antialiasing aliases: 1-pixel and 2-pixel stripes, a chirp
    up to the Nyquist frequency, period-3 stripes in one channel and 1-pixel
    diagonal lines.
    """
    import numpy as np

    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.empty((height, width, 3), np.float64)
    scale = max(1, min(height, width) // 96)  # 1 for the small frames, 5 for 480x640
    img[..., 0] = 30 + 190 * x / max(width - 1, 1)  # horizontal ramp
    img[..., 1] = 220 - 180 * y / max(height - 1, 1)  # vertical ramp
    img[..., 2] = 40 + 50 * ((x // (12 * scale) + y // (9 * scale)) % 4)  # flat diagonal bands
    # A flat rectangle and a disc with hard edges.
    r0, r1 = height // 6, height // 6 + height // 4
    c0, c1 = width // 8, width // 8 + width // 3
    img[r0:r1, c0:c1] = rng.integers(0, 256, 3)
    cy, cx, radius = 0.65 * height, 0.6 * width, 0.18 * min(height, width)
    img[(y - cy) ** 2 + (x - cx) ** 2 < radius**2] = rng.integers(0, 256, 3)
    if height > 224 or width > 224:  # shrunk: fine detail that aliases
        band = slice(int(0.45 * height), int(0.55 * height))
        third = width // 3
        img[band, :third] = 255 * (x[band, :third] % 2)[..., None]  # 1-pixel vertical stripes
        img[band, third : 2 * third] = (40 + 180 * ((x[band, third : 2 * third] // 2) % 2))[..., None]
        u = x[band, 2 * third :] - 2 * third  # chirp: 0 -> 0.5 cycles per pixel
        img[band, 2 * third :] = (128 + 120 * np.sin(np.pi * u**2 / (2 * (width - 2 * third))))[..., None]
        rows, cols = slice(int(0.75 * height), int(0.9 * height)), slice(width // 20, width // 4)
        img[rows, cols, 1] = 255 * (y[rows, cols] % 3 == 0)  # period-3 horizontal stripes, green only
        for offset in (0.1, 0.3):  # 1-pixel lines at about 37 degrees
            line = np.abs((y - offset * height) - 0.75 * (x - 0.55 * width)) < 0.5
            img[line & (x > 0.55 * width)] = 250
    # A 1-pixel checkerboard strip and a random-noise patch: what resampling filters disagree on.
    strip = slice(height - 8, height - 4)
    img[strip, :] = 255 * ((x[strip] + y[strip]) % 2)[..., None]
    ph, pw = min(height // 5, 48), min(width // 5, 64)
    img[height // 2 : height // 2 + ph, 2 : 2 + pw] = rng.integers(0, 256, (ph, pw, 3))
    # Saturated corners: 0 and 255 exactly (the clamp).
    img[:3, :3] = 0
    img[:3, -3:] = 255
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_stats(rng):
    """Dataset statistics as LeRobot's compute_stats writes them (float64, per dim), for state and action."""
    import numpy as np

    def one(mean, std, skew):
        low = 2.0 + 0.6 * skew  # q01 and q99 at different distances: asymmetric ranges
        high = 2.6 - 0.6 * skew
        return {
            "min": mean - 3.5 * std,
            "max": mean + 3.5 * std,
            "mean": mean,
            "std": std,
            "count": np.array([48213]),
            "q01": mean - low * std,
            "q10": mean - 1.28 * std,
            "q50": mean + 0.05 * std,
            "q90": mean + 1.28 * std,
            "q99": mean + high * std,
        }

    gripper = np.array(["gripper" in name for name in JOINTS])
    mean = np.where(gripper, 0.6, rng.uniform(-1.2, 1.2, STATE_DIM))
    std = np.where(gripper, 0.25, rng.uniform(0.15, 0.9, STATE_DIM))
    skew = rng.uniform(0.0, 1.0, STATE_DIM)
    stats = {
        "observation.state": one(mean, std, skew),
        # Actions lead the state: a little offset and spread.
        "action": one(mean + rng.uniform(-0.05, 0.05, ACTION_DIM), std * 1.1, skew[::-1].copy()),
    }
    for camera in CAMERAS:  # image stats exist in real datasets; VISUAL is IDENTITY for pi0 / pi0.5
        stats[f"observation.images.{camera}"] = {
            "mean": rng.uniform(0.3, 0.6, (3, 1, 1)),
            "std": rng.uniform(0.15, 0.3, (3, 1, 1)),
            "min": np.zeros((3, 1, 1)),
            "max": np.ones((3, 1, 1)),
            "count": np.array([48213]),
        }
    return stats


def make_state(stats, rng):
    """A raw state whose quantile-normalized values avoid the pi0.5 bin edges, two of them outside [-1, 1]."""
    import numpy as np

    s = stats["observation.state"]
    edges = np.linspace(-1, 1, 257)
    while True:
        target = rng.uniform(-0.85, 0.85, STATE_DIM)
        target[0], target[1] = -1.2, 1.15  # bins -1 and 255: LeRobot does not clip
        state = (s["q01"] + (target + 1.0) / 2.0 * (s["q99"] - s["q01"])).astype(np.float32)
        q01, q99 = s["q01"].astype(np.float32), s["q99"].astype(np.float32)
        normalized = 2.0 * (state - q01) / (q99 - q01) - 1.0
        if np.min(np.abs(normalized[:, None] - edges[None, :])) > 5e-4:
            return state


# --- LeRobot patches ----------------------------------------------------------------------


def tiny_sizes():
    """The tiny sizes, from vla_ros' own config (so the fixture follows `pi0-tiny` / `pi05-tiny`)."""
    sys.path.insert(0, str(REPO))
    from vla_ros.model.config import get_config

    pi0, pi05 = get_config("pi0-tiny"), get_config("pi05-tiny")
    for name in ("vision", "prefix", "expert", "vocab_size"):
        assert getattr(pi0, name) == getattr(pi05, name), f"pi0-tiny and pi05-tiny differ in {name}"
    assert pi0.max_token_len == 48 and pi05.max_token_len == 200, "tiny token budgets are not LeRobot's"
    assert pi0.action_horizon == pi05.action_horizon == 50 and pi0.action_dim == 32
    return pi0


@contextlib.contextmanager
def tiny_lerobot(sizes):
    """Patches 1-3 of the module docstring, on both modeling modules; undone on exit."""
    from lerobot.policies.pi0 import modeling_pi0
    from lerobot.policies.pi05 import modeling_pi05

    vocab = sizes.vocab_size
    table = {"gemma_2b": sizes.prefix, "gemma_300m": sizes.expert}
    saved = []
    for module in (modeling_pi0, modeling_pi05):
        original_table = module.get_gemma_config
        original_vlm = module.PaliGemmaForConditionalGenerationWithPiGemma
        original_expert = module.PiGemmaForCausalLM

        def get_gemma_config(variant, _module=module, _original=original_table):
            if variant not in table:
                return _original(variant)  # raises LeRobot's own "Unknown variant"
            size = table[variant]
            return _module.GemmaConfig(
                width=size.width,
                depth=size.depth,
                mlp_dim=size.mlp_dim,
                num_heads=size.num_heads,
                num_kv_heads=size.num_kv_heads,
                head_dim=size.head_dim,
            )

        def paligemma(config, _original=original_vlm):
            vision = config.vision_config
            vision.hidden_size = sizes.vision.width
            vision.intermediate_size = sizes.vision.mlp_dim
            vision.num_hidden_layers = sizes.vision.depth
            vision.num_attention_heads = sizes.vision.num_heads
            vision.patch_size = sizes.vision.patch_size
            vision.projection_dim = sizes.prefix.width
            config._vocab_size = vocab  # noqa: SLF001 (LeRobot sets the same private field)
            config.text_config.vocab_size = vocab
            return _original(config=config)

        def expert(config, _original=original_expert):
            config.vocab_size = vocab
            return _original(config=config)

        saved.append((module, original_table, original_vlm, original_expert))
        module.get_gemma_config = get_gemma_config
        module.PaliGemmaForConditionalGenerationWithPiGemma = paligemma
        module.PiGemmaForCausalLM = expert
    try:
        yield
    finally:
        for module, original_table, original_vlm, original_expert in saved:
            module.get_gemma_config = original_table
            module.PaliGemmaForConditionalGenerationWithPiGemma = original_vlm
            module.PiGemmaForCausalLM = original_expert


@contextlib.contextmanager
def hub_tokenizer_redirect(local_dir: Path):
    """Patch 4: the factory's hard-coded Hub tokenizer name loads from `local_dir`; undone on exit."""
    from lerobot.processor import tokenizer_processor

    auto = tokenizer_processor.AutoTokenizer
    original = auto.from_pretrained

    def from_pretrained(name, *args, **kwargs):
        if name == HUB_TOKENIZER:
            name = str(local_dir)
        return original(name, *args, **kwargs)

    auto.from_pretrained = from_pretrained
    try:
        yield
    finally:
        auto.from_pretrained = original


# --- building -----------------------------------------------------------------------------


def write_tokenizer(folder: Path, texts: list[str]) -> None:
    """vla_ros' stand-in SentencePiece model plus the Hugging Face files LeRobot's tokenizer step loads."""
    import sentencepiece
    from transformers import AutoTokenizer

    from vla_ros.observation.tokenizer import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    train_tokenizer(folder / "tokenizer.model", vocab_size=512)
    # The SentencePiece model names its specials <s> / </s>; GemmaTokenizer's
    # defaults (<bos>, <eos>, <mask>) would be added as new ids past the vocabulary.
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
    }
    save_json(folder / "tokenizer_config.json", config)
    converted = AutoTokenizer.from_pretrained(str(folder))
    with tempfile.TemporaryDirectory() as tmp:
        converted.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "tokenizer.json", folder / "tokenizer.json")
    # What LeRobot will load from the folder: the HF tokenizer must equal SentencePiece + BOS.
    hf = AutoTokenizer.from_pretrained(str(folder))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert len(hf) == sp.get_piece_size() == 512, (len(hf), sp.get_piece_size())
    for text in texts:
        same = hf(text)["input_ids"] == sp.encode(text, add_bos=True)
        assert same, f"HF and SentencePiece differ on {text!r}"


def init_weights(policy, seed: int) -> None:
    """Seeded random weights, every parameter: std gain/sqrt(fan_in) matrices, O(0.1) biases and norm offsets.

    LeRobot's own initialisation (zero AdaRMS projections, std 0.02 Gemma
    weights) would give a near-constant velocity: inputs would barely move the
    actions and the parity check would be blind.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    layer_norms = {
        name for name, module in policy.named_modules() if isinstance(module, torch.nn.LayerNorm)
    }
    with torch.no_grad():
        for name, param in sorted(policy.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.ndim >= 2:
                fan_in = param[0].numel()
                value = noise * (WEIGHT_GAIN / fan_in**0.5)
            elif leaf == "bias":
                value = noise * BIAS_STD
            elif owner in layer_norms:  # SigLIP LayerNorm: x * w + b
                value = 1.0 + noise * NORM_STD
            else:  # Gemma RMSNorm: x * (1 + w)
                value = noise * NORM_STD
            param.copy_(value.to(param.dtype))


def build_config(family: str, Config, sizes):
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {
        f"observation.images.{camera}": PolicyFeature(FeatureType.VISUAL, (3, height, width))
        for camera, (height, width) in CAMERAS.items()
    }
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    options = FAMILY_OPTIONS[family]
    return Config(
        device="cpu",
        dtype="float32",
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        chunk_size=sizes.action_horizon,
        n_action_steps=sizes.action_horizon,
        num_inference_steps=NUM_STEPS,
        image_resolution=(sizes.vision.image_size, sizes.vision.image_size),
        empty_cameras=options["empty_cameras"],
        use_relative_actions=options["use_relative_actions"],
        action_feature_names=list(JOINTS),  # make_policy fills this from the dataset's action names
    )


def family_classes(family: str):
    if family == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy
        from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors

        return PI0Config, PI0Policy, make_pi0_pre_post_processors
    from lerobot.policies.pi05.configuration_pi05 import PI05Config
    from lerobot.policies.pi05.modeling_pi05 import PI05Policy
    from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors

    return PI05Config, PI05Policy, make_pi05_pre_post_processors


# --- running ------------------------------------------------------------------------------


def run_pipeline(policy, preprocessor, postprocessor, observation: dict, noise):
    """predict_action's path with a fixed noise; returns the outputs and the tensors the model saw."""
    import torch

    from lerobot.policies.utils import prepare_observation_for_inference

    captured = {}
    preprocess_images = policy._preprocess_images  # noqa: SLF001

    def capture_images(batch):
        images, masks = preprocess_images(batch)
        captured["images"], captured["image_masks"] = images, masks
        return images, masks

    policy._preprocess_images = capture_images  # noqa: SLF001 (records, changes nothing)
    try:
        with torch.inference_mode():
            frame = {key: value.copy() for key, value in observation.items() if key != "task"}
            batch = prepare_observation_for_inference(frame, torch.device("cpu"), observation["task"], None)
            batch = preprocessor(batch)
            normalized = policy.predict_action_chunk(batch, noise=noise)
            actions = postprocessor(normalized)
    finally:
        del policy._preprocess_images  # noqa: SLF001
    return batch, captured, normalized, actions


def pillow_model_image(frame, size: int):
    """openpi's letterbox of a uint8 (H, W, 3) frame: Pillow bilinear (antialiased), black, centred."""
    import numpy as np
    from PIL import Image
    import torch

    height, width = frame.shape[:2]
    ratio = max(width / size, height / size)
    new_h, new_w = int(height / ratio), int(width / ratio)
    resized = np.asarray(Image.fromarray(frame).resize((new_w, new_h), resample=Image.Resampling.BILINEAR))
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0


def sensitivity(
    policy, family: str, batch, captured, noise, tokenizer_dir: Path, base, frames: dict, slot_keys: list
) -> dict:
    """max |change| of the normalized actions under small input changes (how sharp a 1e-4 check is).

    `frames`: camera -> the uint8 frame fed; `slot_keys`: the order LeRobot filled the model's slots.
    """
    import torch
    from transformers import AutoTokenizer

    from lerobot.policies.common.vla_utils import pad_vector

    images, masks = captured["images"], captured["image_masks"]
    tokens = batch["observation.language.tokens"]
    token_mask = batch["observation.language.attention_mask"]
    state = (
        pad_vector(batch["observation.state"], policy.config.max_state_dim) if family == "pi0" else None
    )

    def run(images=images, masks=masks, tokens=tokens, token_mask=token_mask, state=state):
        args = [images, masks, tokens, token_mask] + ([state] if family == "pi0" else [])
        with torch.inference_mode():
            out = policy.model.sample_actions(*args, noise=noise)
        return float((out[..., :ACTION_DIM] - base).abs().max())

    found = {}
    # The same pixels rounded to uint8 levels after the resize (what a uint8 pipeline would feed).
    quantized = [torch.round((img + 1) / 2 * 255) / 255 * 2 - 1 for img in images]
    found["images rounded to uint8 levels after the resize"] = run(images=quantized)
    # One camera off by one uint8 level over the whole frame.
    shifted = [images[0] + 2.0 / 255.0] + list(images[1:])
    found["first camera +1 uint8 level"] = run(images=shifted)
    # The first camera, shrunk as openpi does it (Pillow's bilinear averages its whole footprint).
    first = frames[slot_keys[0][len("observation.images."):]]
    size = policy.config.image_resolution[0]
    if max(first.shape[:2]) > size:
        pillow = [pillow_model_image(first, size)] + list(images[1:])
        found["first camera shrunk with Pillow's bilinear (openpi) instead of torch's"] = run(images=pillow)
    # The prompt as openpi would clean it (pi0: LeRobot does not strip or replace '_').
    if family == "pi0":
        hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        text = TASK.strip().replace("_", " ").replace("\n", " ") + "\n"
        cleaned = hf([text], max_length=tokens.shape[1], truncation=True, padding="max_length",
                     padding_side="right", return_tensors="pt")
        found["prompt cleaned as openpi does"] = run(
            tokens=cleaned["input_ids"], token_mask=cleaned["attention_mask"].bool()
        )
        # Informational (not required to exceed 1e-3): the state is one token among ~1000.
        found["normalized state +0.01 on one joint"] = run(state=state + torch.nn.functional.one_hot(
            torch.tensor(2), state.shape[-1]).float() * 0.01)
    else:
        swapped = tokens.clone()
        real = int(token_mask.sum())
        swapped[0, real - 3] = tokens[0, real - 4]  # one token of the state/suffix text changed
        found["one prompt token changed"] = run(tokens=swapped)
    if not all(bool(m.all()) for m in masks):
        found["masked slots unmasked"] = run(masks=[torch.ones_like(m) for m in masks])
    config_order = list(policy.config.image_features)
    if slot_keys != config_order:  # a missing camera: openpi keeps every camera in its own slot
        order = [slot_keys.index(key) for key in config_order]
        found["cameras in fixed slots (openpi) instead of present-first"] = run(
            images=[images[i] for i in order], masks=[masks[i] for i in order]
        )
    return found


def describe_files(folder: Path) -> list[dict]:
    import numpy as np

    rows = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name == "README.md":
            continue
        row = {"file": str(path.relative_to(folder)), "bytes": path.stat().st_size}
        if path.suffix == ".npy":
            array = np.load(path)
            row["array"] = f"{array.dtype} {list(array.shape)}"
        rows.append(row)
    return rows


def versions() -> dict:
    from importlib.metadata import version

    names = [
        "lerobot", "torch", "transformers", "tokenizers", "sentencepiece", "safetensors", "numpy", "draccus"
    ]
    found = {"python": platform.python_version()}
    for name in names:
        found[name] = version(name)
    return found


def make_family(family: str, out: Path, sizes) -> None:
    import numpy as np
    from safetensors import safe_open
    import torch

    from lerobot.policies.factory import make_pre_post_processors

    Config, Policy, make_processors = family_classes(family)
    folder = out / family
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)

    # Inputs (the same robot and dataset for both families).
    images = {camera: make_image(h, w, rng) for camera, (h, w) in CAMERAS.items()}
    stats = make_stats(rng)
    state = make_state(stats, rng)
    noise = torch.randn(
        (1, sizes.action_horizon, sizes.action_dim), generator=torch.Generator().manual_seed(SEED + 1)
    )

    tokenizer_dir = folder / "tokenizer"
    pi05_prompt_probe = "Task: " + TASK.replace("_", " ") + ", State: -1 0 17 128 255 9;\nAction: "
    write_tokenizer(tokenizer_dir, [TASK + "\n", TASK.replace("_", " ") + "\n", pi05_prompt_probe])

    with tiny_lerobot(sizes):
        # 1. Build and save, as training would.
        config = build_config(family, Config, sizes)
        policy = Policy(config)
        init_weights(policy, SEED + 2)
        policy.save_pretrained(folder)
        with hub_tokenizer_redirect(tokenizer_dir):
            pre, post = make_processors(policy.config, dataset_stats=stats)
        pre.save_pretrained(folder)
        post.save_pretrained(folder)
        reference = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        del policy, pre, post

        # 2. Reload from the folder, as a user would, and check nothing was lost.
        policy = Policy.from_pretrained(folder)
        policy.eval()
        loaded = policy.state_dict()
        assert set(loaded) == set(reference), "reloaded policy has other parameters"
        for key, value in reference.items():
            # LeRobot catches load_state_dict errors and only prints them.
            assert torch.equal(loaded[key], value), f"{key} did not reload exactly"
        pre, post = make_pre_post_processors(
            policy.config,
            pretrained_path=str(folder),
            preprocessor_overrides={"tokenizer_processor": {"tokenizer_name": str(tokenizer_dir)}},
        )

        # 3. Run, once per observation (the same state, prompt and noise).
        runs = {}
        for name, (_, absent) in OBSERVATIONS.items():
            frames = {c: img for c, img in images.items() if c not in absent}
            observation = {f"observation.images.{c}": img for c, img in frames.items()}
            observation["observation.state"] = state
            observation["task"] = TASK
            batch, captured, normalized, actions = run_pipeline(policy, pre, post, observation, noise)
            again = run_pipeline(policy, pre, post, observation, noise)[3]
            assert torch.equal(actions, again), "LeRobot is not deterministic with a fixed noise"
            # The order _preprocess_images filled the slots: present cameras, then the missing ones.
            slot_keys = [k for k in policy.config.image_features if k in observation] + [
                k for k in policy.config.image_features if k not in observation
            ]
            found = sensitivity(
                policy, family, batch, captured, noise, tokenizer_dir, normalized, frames, slot_keys
            )
            runs[name] = {
                "frames": frames,
                "absent": list(absent),
                "slot_keys": slot_keys,
                "batch": batch,
                "captured": captured,
                "normalized": normalized,
                "actions": actions,
                "found": found,
            }

    # 4. What the model saw, and checks that the fixture tests what it claims to.
    config_slots = list(policy.config.image_features)
    relative_mask = [True] * ACTION_DIM
    if policy.config.use_relative_actions:
        excluded = [ex.lower() for ex in policy.config.relative_exclude_joints]
        relative_mask = [not any(ex in name.lower() for ex in excluded) for name in JOINTS]
    for name, run in runs.items():
        batch, captured = run["batch"], run["captured"]
        run["model_images"] = torch.cat(captured["images"]).numpy().astype(np.float32)  # (slots, 3, 224, 224)
        run["image_masks"] = torch.cat(captured["image_masks"]).numpy()
        run["tokens"] = batch["observation.language.tokens"][0].numpy()
        run["token_mask"] = batch["observation.language.attention_mask"][0].numpy().astype(bool)
        norm_state = batch["observation.state"][0].numpy().astype(np.float32)
        run["padded_state"] = np.zeros(policy.config.max_state_dim, np.float32)
        run["padded_state"][: norm_state.shape[0]] = norm_state
        normalized = run["normalized"] = run["normalized"][0].numpy().astype(np.float32)
        actions = run["actions"] = run["actions"][0].numpy().astype(np.float32)
        assert run["image_masks"].tolist() == [not (k.endswith(tuple(run["absent"])) or "empty_camera" in k)
                                               for k in run["slot_keys"]], (name, run["image_masks"])
        if policy.config.use_relative_actions:
            action_stats = {k: v.astype(np.float32) for k, v in stats["action"].items()}
            if policy.config.normalization_mapping["ACTION"].value == "QUANTILES":
                q01, q99 = action_stats["q01"], action_stats["q99"]
                unnorm = (normalized + 1.0) * (q99 - q01) / 2.0 + q01
            else:
                unnorm = normalized * action_stats["std"] + action_stats["mean"]
            offset = actions - unnorm
            expected_offset = state * np.array(relative_mask, np.float32)
            assert np.allclose(offset, expected_offset, atol=1e-5), "relative actions off"
            assert np.abs(offset).max() > 0.1, "relative actions did not move the output"
        moved = np.abs(normalized - noise[0, :, :ACTION_DIM].numpy()).mean()
        assert normalized.std() > 0.3 and moved > 0.3, "degenerate actions: the model barely moves the noise"
        if family == "pi05":
            bins = np.digitize(norm_state, bins=np.linspace(-1, 1, 257)[:-1]) - 1
            assert bins[0] == -1 and bins[1] == 255, bins
    full, missing = runs["full"], runs["missing"]
    assert full["slot_keys"] == config_slots and missing["slot_keys"] != config_slots
    # LeRobot resizes each camera on its own: a present camera's model image is the same in both
    # observations, only its slot moves; the missing camera's slot is all -1.
    for slot, key in enumerate(missing["slot_keys"]):
        if key in full["slot_keys"] and missing["image_masks"][slot]:
            same = full["model_images"][full["slot_keys"].index(key)]
            assert np.array_equal(missing["model_images"][slot], same), key
        else:
            assert np.all(missing["model_images"][slot] == -1.0), key
    missing["found"]["the missing camera present (the full observation)"] = float(
        np.abs(full["normalized"] - missing["normalized"]).max()
    )
    for name, run in runs.items():
        for what, change in run["found"].items():
            if what in REQUIRED_SENSITIVITY:
                assert change > 1e-3, f"{name}: the fixture is blind to '{what}' (max change {change:.2e})"
    assert any(max(hw) > policy.config.image_resolution[0] for hw in CAMERAS.values()), "nothing is shrunk"

    # 5. Write.
    save_npy(folder / "noise.npy", noise[0].numpy())
    observations = {}
    for name, run in runs.items():
        suffix = OBSERVATIONS[name][0]
        files = {
            "observation": f"observation{suffix}.npz",
            "tokens": f"expected_tokens{suffix}.npy",
            "token_mask": f"expected_token_mask{suffix}.npy",
            "images": f"expected_images{suffix}.npz",
            "state": f"expected_state{suffix}.npy",
            "actions_normalized": f"expected_actions_normalized{suffix}.npy",
            "actions": f"expected_actions{suffix}.npy",
        }
        save_npz(
            folder / files["observation"],
            {
                **{f"observation.images.{c}": img for c, img in run["frames"].items()},
                "state": state,
                "prompt": np.str_(TASK),
            },
        )
        save_npy(folder / files["tokens"], run["tokens"])
        save_npy(folder / files["token_mask"], run["token_mask"])
        save_npz(folder / files["images"], {"images": run["model_images"], "masks": run["image_masks"]})
        save_npy(folder / files["state"], run["padded_state"])
        save_npy(folder / files["actions_normalized"], run["normalized"])
        save_npy(folder / files["actions"], run["actions"])
        observations[name] = {
            "files": files,
            "absent_cameras": [f"observation.images.{c}" for c in run["absent"]],
            "camera_slots": run["slot_keys"],
            "image_masks": run["image_masks"].tolist(),
            "tokenized_text": run["batch"]["task"][0],
            "num_tokens": int(run["token_mask"].sum()),
            "sensitivity_max_abs_change_of_normalized_actions": {
                k: float(f"{v:.3e}") for k, v in run["found"].items()
            },
        }
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        n_params = sum(int(np.prod(weights.get_slice(k).get_shape())) for k in weights.keys())
    meta = {
        "family": family,
        "lerobot_version": _EXPECTED_LEROBOT,
        "policy_class": type(policy).__name__,
        "vla_ros_config": f"{family}-tiny",
        "parameters": n_params,
        "camera_slots": config_slots,
        "camera_sizes_hw": {f"observation.images.{c}": list(hw) for c, hw in CAMERAS.items()},
        "task": TASK,
        "state_dim": STATE_DIM,
        "action_dim": ACTION_DIM,
        "action_names": JOINTS,
        "use_relative_actions": bool(policy.config.use_relative_actions),
        "relative_mask": relative_mask,
        "normalization_mapping": {k: v.value for k, v in policy.config.normalization_mapping.items()},
        "num_inference_steps": NUM_STEPS,
        "chunk_size": sizes.action_horizon,
        "max_state_dim": policy.config.max_state_dim,
        "max_action_dim": policy.config.max_action_dim,
        "tokenizer_max_length": policy.config.tokenizer_max_length,
        "observations": observations,
    }
    save_json(folder / "expected_meta.json", meta)
    write_readme(folder, family, meta, describe_files(folder))
    for path in folder.rglob("*"):  # safetensors writes 0600; the fixture is plain data
        path.chmod(0o755 if path.is_dir() else 0o644)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    _say(f"{family}: wrote {folder} ({size} bytes)")


def write_readme(folder: Path, family: str, meta: dict, files: list[dict]) -> None:
    options = FAMILY_OPTIONS[family]
    full, missing = meta["observations"]["full"], meta["observations"]["missing"]
    absent = ", ".join(f"`{key}`" for key in missing["absent_cameras"])
    lines = [
        f"# LeRobot {_EXPECTED_LEROBOT} {family} golden fixture (tiny)",
        "",
        "Generated by `scripts/make_lerobot_fixtures.py`; do not edit by hand. It is LeRobot's own",
        f"`{meta['policy_class']}` pipeline on two observations with a fixed noise, in float32 on the CPU,",
        "for `test/test_lerobot_parity.py` (which cannot import LeRobot). Regenerate with:",
        "",
        "```sh",
        "python3.12 -m venv /tmp/lrvenv",
        f"/tmp/lrvenv/bin/pip install 'lerobot[pi]=={_EXPECTED_LEROBOT}' sentencepiece protobuf",
        "/tmp/lrvenv/bin/python scripts/make_lerobot_fixtures.py   # from the repository root",
        "```",
        "",
        "Versions used: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "## What it is",
        "",
        f"- A tiny {family} with the sizes of vla_ros' `{meta['vla_ros_config']}`"
        f" ({meta['parameters']} parameters,"
        " vocabulary 512) and seeded random weights (std 1/sqrt(fan_in); biases and norm offsets std 0.1).",
        "  `config.json` still says `gemma_2b` / `gemma_300m` (LeRobot accepts no other variant names):",
        "  the sizes are only in the weights' shapes. The script patches LeRobot's size tables and",
        "  vocabulary (see its docstring); nothing else in LeRobot is changed.",
        f"- Cameras {list(CAMERAS)} (uint8, sizes H x W {list(CAMERAS.values())}),"
        f" `empty_cameras={options['empty_cameras']}`; model slots in config order: {meta['camera_slots']}.",
        "  `cam_high` is a real camera's 480x640 frame, shrunk to 168x224 (ramps, flat shapes, hard edges,",
        "  1- and 2-pixel stripes, a chirp up to the Nyquist frequency, period-3 stripes, 1-pixel diagonal",
        "  lines, a noise patch: where torch's bilinear without antialiasing and Pillow's differ most);",
        "  the two wrist cameras are enlarged.",
        f"- 14-dim state and actions named {JOINTS[:3]} ... {JOINTS[-1]!r} (ALOHA layout);"
        f" `use_relative_actions={options['use_relative_actions']}`"
        + (f", relative mask {[int(m) for m in meta['relative_mask']]} (grippers stay absolute)."
           if options["use_relative_actions"] else "."),
        f"- Normalization {meta['normalization_mapping']} with the statistics in the processor files"
        " (min/max/mean/std/count/q01/q10/q50/q90/q99, float32; image stats present but unused).",
        f"- Task {TASK!r}; LeRobot tokenized {full['tokenized_text']!r} ({full['num_tokens']} tokens"
        f" of {meta['tokenizer_max_length']}).",
        "- Tokenizer: `tokenizer/` holds what LeRobot's tokenizer step loaded instead of"
        f" `{HUB_TOKENIZER}` (the name `policy_preprocessor.json` keeps): vla_ros' `train_tokenizer`"
        " SentencePiece model (`tokenizer.model`), its Hugging Face conversion (`tokenizer.json`) and"
        " `tokenizer_config.json`. Load it in LeRobot with"
        " `preprocessor_overrides={'tokenizer_processor': {'tokenizer_name': '<this folder>/tokenizer'}}`.",
        "",
        "## The two observations",
        "",
        "Both have the same state, prompt and noise (`noise.npy`); `expected_meta.json` lists each one's",
        "files under `observations.<name>.files`.",
        "",
        f"- `full` (files without a suffix: `observation.npz`, `expected_*.npy`, `expected_images.npz`):"
        f" every camera; LeRobot filled the slots {full['camera_slots']}, masks {full['image_masks']}.",
        f"- `missing` (files ending `_missing`: `observation_missing.npz`, `expected_*_missing.npy`,"
        f" `expected_images_missing.npz`): {absent} absent from the observation. LeRobot puts the present"
        f" cameras first, then the missing ones: slots {missing['camera_slots']}, masks"
        f" {missing['image_masks']} (a missing slot is all -1). So `cam_right_wrist` moves forward into"
        " the second slot, where an openpi-style loader would keep it in the third.",
        "",
        "## How the expected values were computed",
        "",
        "The policy and processors were reloaded from this folder (`from_pretrained`,",
        "`make_pre_post_processors(pretrained_path=...)`), then run as `predict_action` runs them:",
        "`prepare_observation_for_inference` (uint8 HWC -> float32 [0, 1] CHW) -> preprocessor ->",
        f"`predict_action_chunk(batch, noise=noise[None])` ({NUM_STEPS} Euler steps) -> postprocessor.",
        "The files of the `missing` observation have the same layout as those of `full` (suffix `_missing`).",
        "",
        "| file | contents |",
        "|---|---|",
        "| `observation.npz` | `observation.images.<camera>` uint8 (H, W, 3) RGB (the cameras present);"
        " `state` float32 (14,) raw; `prompt` str |",
        "| `noise.npy` | float32 (50, 32): the initial noise x_1 (t = 1), 32 = max_action_dim"
        " (both observations) |",
        "| `expected_tokens.npy`, `expected_token_mask.npy` | int64 / bool (L,):"
        " `observation.language.tokens`"
        " / `attention_mask` after the preprocessor (BOS 2 first, pad 0) |",
        "| `expected_images.npz` | `images` float32 (slots, 3, 224, 224) in [-1, 1]:"
        " what `_preprocess_images`"
        " handed the model, in the order it filled the slots (resize_with_pad_torch, pad, x*2-1; missing"
        " slots -1); `masks` bool (slots,) |",
        "| `expected_state.npy` | float32 (32,): the normalized state, zero-padded to max_state_dim"
        + (" (what `prepare_state` gave the model) |" if family == "pi0"
           else " (pi0.5's model never reads it; its 256-bin digitization is in the prompt) |"),
        "| `expected_actions_normalized.npy` | float32 (50, 14): `predict_action_chunk` output, before the"
        " postprocessor |",
        "| `expected_actions.npy` | float32 (50, 14): the postprocessor's output (unnormalized"
        + (", plus the raw state on the relative dims)" if options["use_relative_actions"] else ")") + " |",
        "| `expected_meta.json` | config slot order, sizes, relative mask; per observation: files, slot"
        " order, masks, tokenized text, sensitivity |",
        "",
        "## How sharp a 1e-4 check on the actions is",
        "",
        "Max |change| of the normalized actions when one input is perturbed (the script refuses to write",
        "a fixture where any of these but the state's and the slot order's is below 1e-3; pi0's state is",
        "one token among ~1000, so normalization details below ~1e-3 do not show in the actions and are",
        "checked on `expected_state.npy` instead; a masked slot takes no position (positions count the",
        "prefix mask) and no attention, so where it sits changes the actions only by float rounding and",
        "the slot order is checked on `expected_images*.npz`, slot by slot):",
    ]
    for name, observation in meta["observations"].items():
        lines += ["", f"`{name}`:", ""]
        lines += [f"- {what}: {change:.2e}" for what, change in observation[
            "sensitivity_max_abs_change_of_normalized_actions"].items()]
    lines += ["", "## Files", "", "| file | bytes | array |", "|---|---|---|"]
    lines += [f"| `{row['file']}` | {row['bytes']} | {row.get('array', '')} |" for row in files]
    lines += ["", f"Total: {sum(row['bytes'] for row in files)} bytes (without this README)."]
    (folder / "README.md").write_text("\n".join(lines) + "\n")


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="parent folder (default: %(default)s)")
    parser.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument(
        "--check-determinism",
        action="store_true",
        help="also generate into a temporary folder and require byte-identical files",
    )
    args = parser.parse_args(argv)
    _require_lerobot()

    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = tiny_sizes()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The repository ignores *.safetensors (downloaded checkpoints); these small ones are the fixture.
    (out / ".gitignore").write_text(
        "# Written by scripts/make_lerobot_fixtures.py: the fixtures' LeRobot safetensors files are\n"
        "# part of the fixture, unlike the checkpoints the top-level .gitignore keeps out.\n"
        "!*.safetensors\n"
    )
    for family in args.family:
        make_family(family, out, sizes)
    if args.check_determinism:
        with tempfile.TemporaryDirectory() as tmp:
            for family in args.family:
                make_family(family, Path(tmp), sizes)
                first, second = tree_digest(out / family), tree_digest(Path(tmp) / family)
                differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
                if differ:
                    message = f"make_lerobot_fixtures.py: {family} is not reproducible: {differ}"
                    print(message, file=sys.stderr)
                    return 1
                _say(f"{family}: a second run gave byte-identical files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
