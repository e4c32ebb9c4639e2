#!/usr/bin/env python3
r"""Golden parity fixtures from LeRobot 0.6.1's own pi0 / pi0.5 / pi0-FAST pipelines (test/test_lerobot_*).

RUN ONLY INSIDE A LEROBOT 0.6.1 VIRTUAL ENVIRONMENT. LeRobot 0.6.1 needs
Python >= 3.12 and pins transformers < 5.6 and torch < 2.12, so it cannot be
installed into the project venv; make a throwaway one:

    python3.12 -m venv /tmp/lrvenv
    /tmp/lrvenv/bin/pip install "lerobot[pi]==0.6.1" sentencepiece protobuf
    /tmp/lrvenv/bin/python scripts/make_lerobot_fixtures.py          # from the repository root

Anywhere else it stops with one line and exit status 2. It needs no network
(nothing is fetched from the Hugging Face Hub) and writes, for each family
(`--family pi0 pi05 pi0fast`; pi0fast is described at the end), a folder `<out>/<family>/` (default out:
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

pi0-FAST (`--family pi0fast`, for test/test_lerobot_fast_parity.py) differs:

- Sizes of vla_ros' `pi0fast-tiny`: the SigLIP and prefix sizes of
  `pi0-tiny`, LeRobot's own text vocabulary 257152 (kept, so FAST ids map
  into the top of it as with the real model), 200 prompt tokens, chunk 50,
  max action dim 32, `max_decoding_steps=64` (the script requires >= 40
  greedy tokens before any "|"). Patches 1 and 2 apply to
  `modeling_pi0_fast` (gemma_2b -> the tiny prefix; SigLIP sizes).
- No `model.safetensors` in the folder (two 257152 x 64 float32 matrices,
  embed_tokens and LeRobot's untied lm_head, ~130 MB): every parameter is
  filled from the recipe of test/lerobot_fast_weights.py (pure numpy, per
  key in sorted order, seed SEED + 2; `weights_recipe.json` lists keys,
  shapes, scales and offsets), saved by LeRobot, reloaded, and checked equal
  to the recipe; the rebuilt file's sha256 is recorded. The folder holds
  `config.json`, the processor files, `tokenizer/`, `fast_tokenizer/`,
  `weights_recipe.json` and the inputs / outputs (`README.md` lists them).
- Text tokenizer: the same `train_tokenizer` stand-in, trained with "|" and
  "Action: " in its text so that "|" (LeRobot's end-of-action marker) is a
  piece and "Action: " splits as with PaliGemma. LeRobot reads the
  tokenizer's `vocab_size` to map FAST ids, so it is given a copy with
  never-produced pieces appended up to 257152 ids
  (`lerobot_fast_weights.padded_tokenizer_json`; encodings are checked
  unchanged); only the 512-piece files are committed.
- FAST tokenizer: trained by vla_ros (`FastActionTokenizer.train`, BPE
  vocabulary 256, scale 10) on smooth synthetic (50, 14) chunks and saved in
  the published file formats (`fast_tokenizer/`). LeRobot loads
  `lerobot/fast-action-tokenizer` with `AutoProcessor(trust_remote_code=True)`
  in the policy and in the preprocessor; there is no Hub, so a temporary copy
  gets an `auto_map` and a stand-in `processing_action_tokenizer.py`
  (`FAST_STANDIN_SOURCE`, written for the run only, never committed)
  following the published UniversalActionProcessor. At inference LeRobot
  uses only its `bpe_tokenizer`, `min_token` and `scale`.
- Patch 5, while the policy and processors are first built only:
  `AutoTokenizer.from_pretrained("google/paligemma-3b-pt-224")` and
  `AutoProcessor.from_pretrained("lerobot/fast-action-tokenizer")` load the
  local copies, so config.json and the processor JSON keep the Hub names.
  The outputs come from the reloaded policy with LeRobot's config fields
  `text_tokenizer_name` / `action_tokenizer_name` set to the local copies and
  `preprocessor_overrides` for `tokenizer_processor` and
  `action_tokenizer_processor`; no patch but 1-2 is active then.
- Recorded without changing any computation (wrappers that return what they
  receive, and a forward hook on `lm_head`): the model-input images, the ids
  `sample_actions_fast_kv_cache` returns (and `sample_actions_fast` with
  `use_kv_cache=False`), the top-5 logits of every decode step.
  `predict_action_chunk` is run as configured (it raises LeRobot's "Action:"
  prefix AssertionError on random ids; the message is recorded) and with
  `validate_action_token_prefix=False` (LeRobot's actions for those ids).
  `detokenize_actions` is also run on rows built from LeRobot's own
  training target (ActionTokenizerProcessorStep) of a smooth chunk:
  well-formed, and truncated without "|".
- The language model's q/k projections get 3x the usual gain
  (lerobot_fast_weights.ATTENTION_GAIN): with plain 1/sqrt(fan_in) weights
  attention spreads over ~970 prefix tokens and the greedy ids ignore the
  prompt; the script requires that a changed or masked prompt token, a
  missing camera and a Pillow resize each change the ids within 40 steps.
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
FAMILIES = ("pi0", "pi05", "pi0fast")
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


def write_tokenizer(folder: Path, texts: list[str], extra_text: tuple[str, ...] = ()) -> None:
    """vla_ros' stand-in SentencePiece model plus the Hugging Face files LeRobot's tokenizer step loads."""
    import sentencepiece
    from transformers import AutoTokenizer

    from vla_ros.observation.tokenizer import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    train_tokenizer(folder / "tokenizer.model", vocab_size=512, extra_text=extra_text)
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


# --- pi0-FAST -----------------------------------------------------------------------------

FAST_FAMILY = "pi0fast"
HUB_FAST_TOKENIZER = "lerobot/fast-action-tokenizer"  # PI0FastConfig.action_tokenizer_name's default
PALIGEMMA_VOCAB = 257152
FAST_SKIP_TOKENS = 128
FAST_MAX_DECODING_STEPS = 64  # greedy tokens LeRobot is asked for (its default is 256)
FAST_MIN_GENERATED = 40  # the fixture must record at least this many before any "|"
FAST_BPE_VOCAB = 256
FAST_SCALE = 10
FAST_TRAIN_CHUNKS = 512
FAST_TOP_K = 5
FAST_WEIGHTS_SEED = SEED + 2
# Training text added to the stand-in tokenizer so that "|" (LeRobot's end-of-action marker) is a
# piece of its own and "Action: " splits into "Action", ":", "▁" as with PaliGemma's tokenizer.
FAST_TEXT_EXTRA = ("Action: 12 34 |", "|")
# Input changes that must change LeRobot's greedy ids within the recorded tokens.
FAST_REQUIRED_SENSITIVITY = (
    "one prompt token changed",
    "last prompt token masked",
    "masked slots unmasked",
    "the missing camera present (the full observation)",
    "first camera shrunk with Pillow's bilinear (openpi) instead of torch's",
)
FAST_STANDIN_SOURCE = '''"""Stand-in for the FAST tokenizer's processing_action_tokenizer.py (fixtures only).

Written by vla_ros' scripts/make_lerobot_fixtures.py into a temporary folder,
because the Hub repository LeRobot loads with trust_remote_code is out of reach.
It follows the published UniversalActionProcessor: encode = orthonormal DCT-II
along time, times scale, rounded, minus min_token (clipped at 0), one character
per symbol, BPE ids; decode = the reverse, with zeros for a sequence that does
not give time_horizon x action_dim coefficients. LeRobot's pi0-FAST reads only
bpe_tokenizer, min_token and scale at inference, and calls the object itself
to build training targets.
"""

import numpy as np
from scipy.fft import dct, idct
from transformers.processing_utils import ProcessorMixin


class UniversalActionProcessor(ProcessorMixin):
    attributes = ["bpe_tokenizer"]
    bpe_tokenizer_class = "AutoTokenizer"

    def __init__(self, bpe_tokenizer, scale=10, vocab_size=1024, min_token=0, *, action_dim=None,
                 time_horizon=None, **unused):
        self.scale = scale
        self.vocab_size = vocab_size
        self.min_token = min_token
        self.time_horizon = time_horizon
        self.action_dim = action_dim
        super().__init__(bpe_tokenizer)

    def __call__(self, action_chunk):
        chunk = np.asarray(action_chunk)  # float32 from LeRobot: the DCT runs in float32, as published
        if chunk.ndim == 2:
            chunk = chunk[None]
        coefficients = np.around(dct(chunk, axis=1, norm="ortho") * self.scale)
        ids = []
        for row in coefficients:
            symbols = np.maximum(row.reshape(-1) - self.min_token, 0).astype(int)
            ids.append(self.bpe_tokenizer("".join(map(chr, symbols)))["input_ids"])
        return ids

    def decode(self, tokens, *, time_horizon=None, action_dim=None):
        horizon = time_horizon or self.time_horizon
        dims = action_dim or self.action_dim
        chunks = []
        for ids in tokens:
            try:
                text = self.bpe_tokenizer.decode(ids)
                coefficients = (np.array([ord(c) for c in text]) + self.min_token).reshape(-1, dims)
                if coefficients.shape != (horizon, dims):
                    raise ValueError(f"{coefficients.shape} coefficients, expected {(horizon, dims)}")
            except Exception:
                coefficients = np.zeros((horizon, dims))
            chunks.append(idct(coefficients / self.scale, axis=0, norm="ortho"))
        return np.stack(chunks)
'''


def fast_weights_module():
    """test/lerobot_fast_weights.py: the weight recipe shared with the parity test."""
    import importlib.util

    path = REPO / "test" / "lerobot_fast_weights.py"
    spec = importlib.util.spec_from_file_location("lerobot_fast_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fast_sizes():
    """pi0fast-tiny: the vision and prefix sizes of `pi0-tiny`, PaliGemma's vocabulary, 200 prompt tokens."""
    import types

    sys.path.insert(0, str(REPO))
    from vla_ros.model.config import get_config

    pi0 = get_config("pi0-tiny")
    sizes = types.SimpleNamespace(
        vision=pi0.vision, prefix=pi0.prefix, vocab_size=PALIGEMMA_VOCAB, action_horizon=50, action_dim=32,
        max_token_len=200,
    )
    try:
        fast = get_config("pi0fast-tiny")
    except Exception:  # not defined in this checkout: the sizes above are the issue's
        fast = None
    if fast is not None:
        for name in ("vision", "prefix", "vocab_size", "action_horizon", "action_dim", "max_token_len"):
            assert getattr(fast, name) == getattr(sizes, name), f"pi0fast-tiny differs in {name}"
    return sizes


@contextlib.contextmanager
def tiny_lerobot_fast(sizes):
    """Patches 1-2 of the docstring for modeling_pi0_fast (size table, SigLIP sizes); undone on exit."""
    from lerobot.policies.pi0_fast import modeling_pi0_fast as module

    original_table = module.get_gemma_config
    original_vlm = module.PaliGemmaForConditionalGenerationWithPiGemma

    def get_gemma_config(variant):
        if variant != "gemma_2b":
            return original_table(variant)
        size = sizes.prefix
        return module.GemmaConfig(
            width=size.width, depth=size.depth, mlp_dim=size.mlp_dim, num_heads=size.num_heads,
            num_kv_heads=size.num_kv_heads, head_dim=size.head_dim,
        )

    def paligemma(config):
        vision = config.vision_config
        vision.hidden_size = sizes.vision.width
        vision.intermediate_size = sizes.vision.mlp_dim
        vision.num_hidden_layers = sizes.vision.depth
        vision.num_attention_heads = sizes.vision.num_heads
        vision.patch_size = sizes.vision.patch_size
        vision.projection_dim = sizes.prefix.width
        # LeRobot's own vocabulary (257152) is kept: the point of pi0fast-tiny.
        assert config.text_config.vocab_size == sizes.vocab_size, config.text_config.vocab_size
        return original_vlm(config=config)

    module.get_gemma_config = get_gemma_config
    module.PaliGemmaForConditionalGenerationWithPiGemma = paligemma
    try:
        yield
    finally:
        module.get_gemma_config = original_table
        module.PaliGemmaForConditionalGenerationWithPiGemma = original_vlm


@contextlib.contextmanager
def hub_redirect_fast(text_dir: Path, fast_dir: Path):
    """Patch 5: the two Hub names LeRobot's pi0-FAST loads resolve to local folders; undone on exit."""
    import transformers

    auto_tok, auto_proc = transformers.AutoTokenizer, transformers.AutoProcessor
    original_tok, original_proc = auto_tok.from_pretrained, auto_proc.from_pretrained

    def tokenizer(name, *args, **kwargs):
        return original_tok(str(text_dir) if name == HUB_TOKENIZER else name, *args, **kwargs)

    def processor(name, *args, **kwargs):
        return original_proc(str(fast_dir) if name == HUB_FAST_TOKENIZER else name, *args, **kwargs)

    auto_tok.from_pretrained, auto_proc.from_pretrained = tokenizer, processor
    try:
        yield
    finally:
        auto_tok.from_pretrained, auto_proc.from_pretrained = original_tok, original_proc


def smooth_chunks(rng, count: int, horizon: int, dims: int):
    """Normalized-looking smooth action chunks (count, horizon, dims): an offset plus three slow sinusoids."""
    import numpy as np

    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    chunks = rng.uniform(-0.6, 0.6, (count, 1, dims)) + 0.0 * t
    for k in (1, 2, 3):
        amplitude = rng.normal(0.0, 0.35 / k, (count, 1, dims))
        frequency = k * rng.uniform(0.3, 1.0, (count, 1, dims))
        phase = rng.uniform(0.0, 2 * np.pi, (count, 1, dims))
        chunks = chunks + amplitude * np.sin(2 * np.pi * frequency * t + phase)
    return chunks


def stage_text_tokenizer(tokenizer_dir: Path, stage: Path, texts: list[str], weights) -> dict:
    """The padded (257152-id) copy of the stand-in LeRobot loads; checks it encodes as the 512-piece one."""
    import sentencepiece
    from transformers import AutoTokenizer

    stage.mkdir(parents=True, exist_ok=True)
    padded = weights.padded_tokenizer_json((tokenizer_dir / "tokenizer.json").read_text(), PALIGEMMA_VOCAB)
    (stage / "tokenizer.json").write_text(padded)
    shutil.copyfile(tokenizer_dir / "tokenizer_config.json", stage / "tokenizer_config.json")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(str(stage))
    policy_hf = AutoTokenizer.from_pretrained(str(stage), add_eos_token=True, add_bos_token=False)
    assert hf.vocab_size == len(hf) == PALIGEMMA_VOCAB, (hf.vocab_size, len(hf))
    for text in texts:
        assert hf(text)["input_ids"] == sp.encode(text, add_bos=True), f"padded tokenizer differs on {text!r}"
    bar = sp.piece_to_id("|")
    assert sp.id_to_piece(bar) == "|" and hf.convert_tokens_to_ids("|") == bar
    assert policy_hf.encode("|") == [bar, sp.eos_id()], policy_hf.encode("|")
    action = policy_hf.encode("Action: ", add_special_tokens=False)
    pieces = policy_hf.convert_ids_to_tokens(action)
    assert pieces == ["Action", ":", "\u2581"], pieces
    assert hf.bos_token_id == sp.bos_id() == 2 and hf.eos_token_id == sp.eos_id() == 1
    return {"bar_id": bar, "action_prefix_ids": action, "action_prefix_pieces": pieces}


def stage_fast_tokenizer(fast_dir: Path, stage: Path) -> None:
    """vla_ros' FAST files plus what AutoProcessor(trust_remote_code=True) needs: stand-in, auto_map."""
    stage.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fast_dir / "tokenizer.json", stage / "tokenizer.json")
    config = json.loads((fast_dir / "processor_config.json").read_text())
    config["processor_class"] = "UniversalActionProcessor"
    config["auto_map"] = {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"}
    save_json(stage / "processor_config.json", config)
    save_json(stage / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "processor_class": "UniversalActionProcessor",
        "auto_map": {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"},
    })
    (stage / "processing_action_tokenizer.py").write_text(FAST_STANDIN_SOURCE)
    # transformers 5 loads a processor's non-primary tokenizer ("bpe_tokenizer") from a subfolder
    # of that name.
    (stage / "bpe_tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(stage / name, stage / "bpe_tokenizer" / name)


def make_state_meanstd(stats, rng):
    """A raw state whose MEAN_STD-normalized values avoid the 256-bin edges, two of them outside [-1, 1]."""
    import numpy as np

    s = stats["observation.state"]
    edges = np.linspace(-1, 1, 257)
    mean, std = s["mean"].astype(np.float32), s["std"].astype(np.float32)
    while True:
        target = rng.uniform(-0.85, 0.85, STATE_DIM)
        target[0], target[1] = -1.2, 1.15  # bins -1 and 255: LeRobot does not clip
        state = (s["mean"] + target * s["std"]).astype(np.float32)
        normalized = (state - mean) / (std + np.float32(1e-8))
        if np.min(np.abs(normalized[:, None] - edges[None, :])) > 5e-4:
            return state


def build_fast_config(sizes):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.pi0_fast.configuration_pi0_fast import PI0FastConfig

    inputs = {
        f"observation.images.{camera}": PolicyFeature(FeatureType.VISUAL, (3, height, width))
        for camera, (height, width) in CAMERAS.items()
    }
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    return PI0FastConfig(
        device="cpu",
        dtype="float32",
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        chunk_size=sizes.action_horizon,
        n_action_steps=sizes.action_horizon,
        max_action_dim=sizes.action_dim,
        image_resolution=(sizes.vision.image_size, sizes.vision.image_size),
        tokenizer_max_length=sizes.max_token_len,
        max_decoding_steps=FAST_MAX_DECODING_STEPS,
        fast_skip_tokens=FAST_SKIP_TOKENS,
        temperature=0.0,
        use_kv_cache=True,
        use_relative_actions=False,
        action_feature_names=list(JOINTS),
    )


class _FastRecorder:
    """Records what LeRobot's own calls return (images, token ids, lm_head logits); changes nothing."""

    def __init__(self, policy):
        self.policy = policy
        self.images = None
        self.calls = []  # (path, ids) per decode call
        self.logits = []  # last-position lm_head output per call of the head
        model = policy.model
        preprocess_images = policy._preprocess_images  # noqa: SLF001

        def capture_images(batch):
            images, masks = preprocess_images(batch)
            self.images = (images, masks)
            return images, masks

        def wrap(path, original):
            def decode(*args, **kwargs):
                ids = original(*args, **kwargs)
                self.calls.append((path, ids.clone()))
                return ids

            return decode

        policy._preprocess_images = capture_images  # noqa: SLF001
        model.sample_actions_fast_kv_cache = wrap("kv_cache", model.sample_actions_fast_kv_cache)
        model.sample_actions_fast = wrap("no_cache", model.sample_actions_fast)
        head = model.paligemma_with_expert.paligemma.lm_head
        self.hook = head.register_forward_hook(
            lambda module, args, out: self.logits.append(out[:, -1].clone()))

    def reset(self):
        self.calls, self.logits = [], []

    def close(self):
        self.hook.remove()
        del self.policy._preprocess_images  # noqa: SLF001
        del self.policy.model.sample_actions_fast_kv_cache
        del self.policy.model.sample_actions_fast


def generated_count(ids, bar_id: int) -> int:
    """Tokens LeRobot's greedy loop produced: up to and including the first "|", else all."""
    hits = [i for i, token in enumerate(ids.tolist()) if token == bar_id]
    return hits[0] + 1 if hits else len(ids)


def run_fast(policy, preprocessor, postprocessor, observation: dict, bar_id: int) -> dict:
    """predict_action's path three ways: as configured (prefix check on), prefix check off, no KV cache."""
    import torch

    from lerobot.policies.utils import prepare_observation_for_inference

    config = policy.config
    recorder = _FastRecorder(policy)
    result = {}
    try:
        with torch.inference_mode():
            frame = {key: value.copy() for key, value in observation.items() if key != "task"}
            batch = prepare_observation_for_inference(frame, torch.device("cpu"), observation["task"], None)
            batch = preprocessor(batch)
            result["batch"] = batch
            # 1. As configured: validate_action_token_prefix=True, use_kv_cache=True.
            try:
                policy.predict_action_chunk(batch)
                result["raised"] = None
            except AssertionError as exc:  # random weights do not write "Action:" first
                result["raised"] = f"AssertionError: {str(exc)[:120]}"
            (path, ids), = recorder.calls
            assert path == "kv_cache"
            steps = len(recorder.logits)
            result["ids"] = ids[0].numpy()
            top = torch.topk(torch.cat(recorder.logits), FAST_TOP_K, dim=-1)
            result["top_values"], result["top_ids"] = top.values.numpy(), top.indices.numpy()
            result["head_calls"] = steps
            result["images"] = recorder.images
            # 2. The prefix check off: LeRobot's detokenization of these ids, and the postprocessor.
            recorder.reset()
            config.validate_action_token_prefix = False
            normalized = policy.predict_action_chunk(batch)
            (path, again), = recorder.calls
            assert torch.equal(again, ids), "LeRobot's greedy decode is not deterministic"
            result["normalized"] = normalized[0].numpy().astype("float32")
            result["actions"] = postprocessor(normalized)[0].numpy().astype("float32")
            # 3. Without the KV cache (recomputes the sequence each step, never stops early).
            recorder.reset()
            config.use_kv_cache = False
            policy.predict_action_chunk(batch)
            (path, no_cache), = recorder.calls
            assert path == "no_cache"
            result["ids_no_cache"] = no_cache[0].numpy()
            top = torch.topk(torch.cat(recorder.logits), FAST_TOP_K, dim=-1)
            result["top_ids_no_cache"] = top.indices.numpy()
    finally:
        config.validate_action_token_prefix = True
        config.use_kv_cache = True
        recorder.close()
    result["generated"] = generated_count(result["ids"], bar_id)
    return result


def fast_sensitivity(policy, run: dict, frames: dict, slot_keys: list) -> dict:
    """How the greedy ids react to small input changes: the first step whose id changes (-1: none)."""
    import numpy as np
    import torch

    images, masks = run["images"]
    batch = run["batch"]
    tokens = batch["observation.language.tokens"]
    token_mask = batch["observation.language.attention_mask"]
    base = run["ids"]

    def first_change(images=images, masks=masks, tokens=tokens, token_mask=token_mask):
        with torch.inference_mode():
            ids = policy.model.sample_actions_fast_kv_cache(
                images, masks, tokens, token_mask, max_decoding_steps=FAST_MAX_DECODING_STEPS, temperature=0.0
            )[0].numpy()
        differ = np.flatnonzero(ids != base)
        return int(differ[0]) if differ.size else -1

    found = {}
    found["images rounded to uint8 levels after the resize"] = first_change(
        images=[torch.round((img + 1) / 2 * 255) / 255 * 2 - 1 for img in images])
    found["first camera +1 uint8 level"] = first_change(images=[images[0] + 2.0 / 255.0] + list(images[1:]))
    first = frames[slot_keys[0][len("observation.images."):]]
    size = policy.config.image_resolution[0]
    if max(first.shape[:2]) > size:
        found["first camera shrunk with Pillow's bilinear (openpi) instead of torch's"] = first_change(
            images=[pillow_model_image(first, size)] + list(images[1:]))
    swapped = tokens.clone()
    real = int(token_mask.sum())
    swapped[0, real - 3] = tokens[0, real - 4]  # one token of the state text changed
    found["one prompt token changed"] = first_change(tokens=swapped)
    shorter = token_mask.clone()
    shorter[0, real - 1] = False  # the prompt's last token ("\n") masked out
    found["last prompt token masked"] = first_change(token_mask=shorter)
    if not all(bool(m.all()) for m in masks):
        found["masked slots unmasked"] = first_change(masks=[torch.ones_like(m) for m in masks])
    return found


def fast_detok_cases(policy, preprocessor, postprocessor, fast, rng, max_steps: int) -> dict:
    """LeRobot's detokenize_actions on well-formed and truncated token rows built by its own training step."""
    import numpy as np
    import torch

    from lerobot.processor import ActionTokenizerProcessorStep

    step = next(s for s in preprocessor.steps if isinstance(s, ActionTokenizerProcessorStep))
    chunk = smooth_chunks(rng, 1, policy.config.chunk_size, ACTION_DIM)[0].astype(np.float32)
    with torch.inference_mode():
        targets, mask = step._tokenize_action(torch.from_numpy(chunk)[None])  # noqa: SLF001
    targets = targets[0][mask[0]].numpy()
    # LeRobot's training target: [BOS, "Action: " ids, FAST ids mapped into PaliGemma, "|", EOS].
    fast_ids = np.asarray(fast.encode(chunk), dtype=np.int64)
    mapped = PALIGEMMA_VOCAB - 1 - FAST_SKIP_TOKENS - fast_ids
    assert targets[0] == 2 and targets[-1] == 1, targets
    assert np.array_equal(targets[4:-2], mapped), "LeRobot's action tokenizer and vla_ros' FAST encode differ"
    generated = targets[1:-1]  # what a perfect model writes after the appended BOS, up to the "|"
    cases = {
        "well_formed": np.concatenate([generated, np.zeros(max(max_steps - len(generated), 8), np.int64)]),
        # No "|": the first half of the FAST ids, then the zero fill of a loop that stopped at max steps.
        "truncated": np.concatenate([generated[: 3 + len(fast_ids) // 2], np.zeros(8, np.int64)]),
    }
    out = {"chunk": chunk, "fast_ids": fast_ids, "cases": {}}
    for name, row in cases.items():
        with torch.inference_mode():
            normalized = policy.detokenize_actions(
                torch.from_numpy(row)[None], action_horizon=policy.config.n_action_steps,
                action_dim=ACTION_DIM,
            )
            actions = postprocessor(normalized)
        out["cases"][name] = {
            "tokens": row,
            "normalized": normalized[0].numpy().astype(np.float32),
            "actions": actions[0].numpy().astype(np.float32),
        }
    error = np.abs(out["cases"]["well_formed"]["normalized"] - chunk).max()
    assert error < 0.5 / FAST_SCALE * 2, f"FAST round trip through LeRobot is off by {error}"
    out["round_trip_max_abs_error"] = float(error)
    return out


def make_fast_family(out: Path) -> None:
    import numpy as np
    from safetensors import safe_open
    import torch

    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.pi0_fast.modeling_pi0_fast import PI0FastPolicy

    weights = fast_weights_module()
    sizes = fast_sizes()  # also puts this checkout on sys.path
    from vla_ros.model.fast_tokenizer import FastActionTokenizer
    folder = out / FAST_FAMILY
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)

    # Inputs: the same cameras, statistics and task as pi0 / pi0.5; the state fits MEAN_STD.
    images = {camera: make_image(h, w, rng) for camera, (h, w) in CAMERAS.items()}
    stats = make_stats(rng)
    state = make_state_meanstd(stats, rng)

    # Tokenizers: the 512-piece text stand-in (committed) and a FAST tokenizer trained by vla_ros.
    tokenizer_dir = folder / "tokenizer"
    probe = "Task: " + TASK.replace("_", " ") + ", State: -1 0 17 128 255 9;\n"
    texts = [probe, "Action: ", "|", "Action: 12 |"]
    write_tokenizer(tokenizer_dir, texts, extra_text=FAST_TEXT_EXTRA)
    fast_rng = np.random.default_rng(SEED + 5)
    fast = FastActionTokenizer.train(
        smooth_chunks(fast_rng, FAST_TRAIN_CHUNKS, sizes.action_horizon, ACTION_DIM),
        vocab_size=FAST_BPE_VOCAB, scale=FAST_SCALE, directory=str(folder / "fast_tokenizer"),
    )
    fast = FastActionTokenizer.load(str(folder / "fast_tokenizer"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text_stage, fast_stage = tmp / "paligemma_tokenizer", tmp / "fast_tokenizer"
        checkpoint = tmp / "checkpoint"
        special = stage_text_tokenizer(tokenizer_dir, text_stage, texts, weights)
        stage_fast_tokenizer(folder / "fast_tokenizer", fast_stage)
        with tiny_lerobot_fast(sizes):
            # 1. Build (Hub names kept in config.json), fill every parameter from the recipe, save.
            with hub_redirect_fast(text_stage, fast_stage):
                policy = PI0FastPolicy(build_fast_config(sizes))
                pre, post = make_pre_post_processors(policy.config, dataset_stats=stats)
            shapes = {key: tuple(value.shape) for key, value in policy.state_dict().items()}
            recipe = weights.make_recipe(shapes, FAST_WEIGHTS_SEED)
            arrays = weights.generate(recipe)
            policy.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
            paligemma = policy.model.paligemma_with_expert.paligemma
            tied = paligemma.lm_head.weight.data_ptr() == \
                paligemma.model.language_model.embed_tokens.weight.data_ptr()
            assert not tied, "LeRobot's lm_head and embed_tokens share storage: the recipe does not apply"
            policy.save_pretrained(checkpoint)
            pre.save_pretrained(checkpoint)
            post.save_pretrained(checkpoint)
            del policy, pre, post
            # The recipe rebuilds LeRobot's file: same keys, shapes, dtype and values.
            with safe_open(str(checkpoint / "model.safetensors"), "np") as saved:
                assert sorted(saved.keys()) == sorted(arrays), "LeRobot saved other keys than the recipe's"
                for key in saved.keys():
                    same = np.array_equal(saved.get_tensor(key), arrays[key])
                    assert same, f"{key} was not saved as generated"
            rebuilt = weights.write_model_safetensors(tmp / "rebuilt", recipe)
            same_bytes = rebuilt.read_bytes() == (checkpoint / "model.safetensors").read_bytes()
            lerobot_sha256 = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
            lerobot_bytes = (checkpoint / "model.safetensors").stat().st_size

            # 2. Reload from the folder as a user would; LeRobot's config fields name the local tokenizers.
            config = PreTrainedConfig.from_pretrained(checkpoint)
            config.text_tokenizer_name = str(text_stage)
            config.action_tokenizer_name = str(fast_stage)
            policy = PI0FastPolicy.from_pretrained(checkpoint, config=config)
            policy.eval()
            for key, value in policy.state_dict().items():
                assert np.array_equal(value.numpy(), arrays[key]), f"{key} did not reload exactly"
            pre, post = make_pre_post_processors(
                policy.config,
                pretrained_path=str(checkpoint),
                preprocessor_overrides={
                    "tokenizer_processor": {"tokenizer_name": str(text_stage)},
                    "action_tokenizer_processor": {
                        "action_tokenizer_name": str(fast_stage), "paligemma_tokenizer_name": str(text_stage),
                    },
                },
            )
            assert policy._paligemma_tokenizer.vocab_size == PALIGEMMA_VOCAB  # noqa: SLF001
            assert policy.action_tokenizer.min_token == fast.min_token
            assert policy.action_tokenizer.scale == fast.scale

            # 3. Run, once per observation.
            runs = {}
            for name, (_, absent) in OBSERVATIONS.items():
                frames = {c: img for c, img in images.items() if c not in absent}
                observation = {f"observation.images.{c}": img for c, img in frames.items()}
                observation["observation.state"] = state
                observation["task"] = TASK
                run = run_fast(policy, pre, post, observation, special["bar_id"])
                run["frames"], run["absent"] = frames, list(absent)
                run["slot_keys"] = [k for k in policy.config.image_features if k in observation] + [
                    k for k in policy.config.image_features if k not in observation
                ]
                run["found"] = fast_sensitivity(policy, run, frames, run["slot_keys"])
                runs[name] = run
            detok = fast_detok_cases(policy, pre, post, fast, np.random.default_rng(SEED + 6),
                                     FAST_MAX_DECODING_STEPS)
        for name in ("config.json", "policy_preprocessor.json", "policy_postprocessor.json"):
            shutil.copyfile(checkpoint / name, folder / name)
        for path in sorted(checkpoint.glob("policy_*.safetensors")):
            shutil.copyfile(path, folder / path.name)
        config_json = json.loads((folder / "config.json").read_text())
        assert config_json["text_tokenizer_name"] == HUB_TOKENIZER
        assert config_json["action_tokenizer_name"] == HUB_FAST_TOKENIZER

    # 4. Checks that the fixture tests what it claims to.
    for name, run in runs.items():
        batch = run["batch"]
        images_, masks_ = run["images"]
        run["model_images"] = torch.cat(images_).numpy().astype(np.float32)
        run["image_masks"] = torch.cat(masks_).numpy()
        run["tokens"] = batch["observation.language.tokens"][0].numpy()
        run["token_mask"] = batch["observation.language.attention_mask"][0].numpy().astype(bool)
        run["norm_state"] = batch["observation.state"][0].numpy().astype(np.float32)
        assert run["generated"] >= FAST_MIN_GENERATED, f"{name}: stopped after {run['generated']} tokens"
        assert run["head_calls"] == run["generated"], (run["head_calls"], run["generated"])
        assert len(set(run["ids"][: run["generated"]].tolist())) >= 8, f"{name}: degenerate greedy ids"
        assert run["tokens"][0] == 2 and not run["token_mask"][-1], "expected BOS first and right padding"
        bins = np.digitize(run["norm_state"], bins=np.linspace(-1, 1, 257)[:-1]) - 1
        assert bins[0] == -1 and bins[1] == 255, bins
        cleaned = TASK.strip().replace("_", " ").replace("\n", " ")
        expected_text = "Task: {}, State: {};\n".format(cleaned, " ".join(map(str, bins)))
        assert batch["task"][0] == expected_text, batch["task"][0]
    full, missing = runs["full"], runs["missing"]
    assert not np.array_equal(full["ids"], missing["ids"]), "the missing camera does not change the ids"
    full["found"]["the missing camera present (the full observation)"] = int(
        np.flatnonzero(full["ids"] != missing["ids"])[0])
    for name, run in runs.items():
        for what in FAST_REQUIRED_SENSITIVITY:
            if what in run["found"]:
                assert 0 <= run["found"][what] < FAST_MIN_GENERATED, \
                    f"{name}: the greedy ids are blind to '{what}' ({run['found'][what]})"

    # 5. Write.
    weights_recipe = dict(recipe)
    weights_recipe["about"] = (
        "Parameters of the LeRobot 0.6.1 PI0FastPolicy (state_dict keys = model.safetensors keys): for the"
        " i-th "
        "key in this order, (offset + scale * numpy.random.default_rng([seed, i]).standard_normal(shape))"
        ".astype(float32). test/lerobot_fast_weights.py implements it (generate, write_model_safetensors)."
    )
    save_json(folder / weights.RECIPE_FILE, weights_recipe)
    observations = {}
    for name, run in runs.items():
        suffix = OBSERVATIONS[name][0]
        files = {
            "observation": f"observation{suffix}.npz",
            "tokens": f"expected_tokens{suffix}.npy",
            "token_mask": f"expected_token_mask{suffix}.npy",
            "images": f"expected_images{suffix}.npz",
            "state": f"expected_state{suffix}.npy",
            "generated": f"expected_generated{suffix}.npy",
            "generated_no_cache": f"expected_generated_no_cache{suffix}.npy",
            "top_logits": f"expected_top_logits{suffix}.npz",
            "actions_normalized": f"expected_actions_normalized{suffix}.npy",
            "actions": f"expected_actions{suffix}.npy",
        }
        save_npz(folder / files["observation"], {
            **{f"observation.images.{c}": img for c, img in run["frames"].items()},
            "state": state,
            "prompt": np.str_(TASK),
        })
        save_npy(folder / files["tokens"], run["tokens"])
        save_npy(folder / files["token_mask"], run["token_mask"])
        save_npz(folder / files["images"], {"images": run["model_images"], "masks": run["image_masks"]})
        save_npy(folder / files["state"], run["norm_state"])
        save_npy(folder / files["generated"], run["ids"].astype(np.int64))
        save_npy(folder / files["generated_no_cache"], run["ids_no_cache"].astype(np.int64))
        save_npz(folder / files["top_logits"], {
            "ids": run["top_ids"].astype(np.int64), "values": run["top_values"].astype(np.float32)})
        save_npy(folder / files["actions_normalized"], run["normalized"])
        save_npy(folder / files["actions"], run["actions"])
        n = run["generated"]
        observations[name] = {
            "files": files,
            "absent_cameras": [f"observation.images.{c}" for c in run["absent"]],
            "camera_slots": run["slot_keys"],
            "image_masks": run["image_masks"].tolist(),
            "tokenized_text": run["batch"]["task"][0],
            "num_tokens": int(run["token_mask"].sum()),
            "generated_tokens": n,
            "stopped_on_bar": bool(n < len(run["ids"]) or run["ids"][n - 1] == special["bar_id"]),
            "no_cache_equals_kv_cache": bool(np.array_equal(run["ids_no_cache"][:n], run["ids"][:n])),
            "no_cache_first_difference": int(np.flatnonzero(run["ids_no_cache"][:n] != run["ids"][:n])[0])
            if not np.array_equal(run["ids_no_cache"][:n], run["ids"][:n]) else -1,
            "min_top1_top2_logit_gap": float((run["top_values"][:, 0] - run["top_values"][:, 1]).min()),
            "predict_action_chunk_with_prefix_check": run["raised"] or "returned actions",
            "greedy_ids_first_change_under": run["found"],
        }
    detok_files = {"chunk": "detok_chunk.npy", "fast_ids": "expected_detok_fast_ids.npy"}
    save_npy(folder / detok_files["chunk"], detok["chunk"])
    save_npy(folder / detok_files["fast_ids"], detok["fast_ids"])
    for case, data in detok["cases"].items():
        for what in ("tokens", "normalized", "actions"):
            detok_files[f"{case}_{what}"] = f"expected_detok_{case}_{what}.npy"
            save_npy(folder / detok_files[f"{case}_{what}"], data[what])
    meta = {
        "family": FAST_FAMILY,
        "lerobot_version": _EXPECTED_LEROBOT,
        "policy_class": "PI0FastPolicy",
        "vla_ros_config": "pi0fast-tiny",
        "parameters": int(sum(int(np.prod(e["shape"])) for e in recipe["keys"])),
        "weights": {
            "recipe_file": weights.RECIPE_FILE,
            "seed": recipe["seed"],
            "lm_head_tied_to_embed_tokens": False,
            "recipe_file_bytes_equal_lerobot_file": bool(same_bytes),
            "lerobot_model_safetensors_sha256": lerobot_sha256,
            "lerobot_model_safetensors_bytes": lerobot_bytes,
        },
        "camera_slots": list(policy.config.image_features),
        "camera_sizes_hw": {f"observation.images.{c}": list(hw) for c, hw in CAMERAS.items()},
        "task": TASK,
        "state_dim": STATE_DIM,
        "action_dim": ACTION_DIM,
        "action_names": JOINTS,
        "normalization_mapping": {k: v.value for k, v in policy.config.normalization_mapping.items()},
        "chunk_size": policy.config.chunk_size,
        "n_action_steps": policy.config.n_action_steps,
        "max_action_dim": policy.config.max_action_dim,
        "tokenizer_max_length": policy.config.tokenizer_max_length,
        "max_decoding_steps": policy.config.max_decoding_steps,
        "temperature": policy.config.temperature,
        "fast_skip_tokens": policy.config.fast_skip_tokens,
        "text_vocab_size": PALIGEMMA_VOCAB,
        "special_ids": {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "bar": special["bar_id"]},
        "action_prefix_ids": [int(i) for i in special["action_prefix_ids"]],
        "action_prefix_pieces": special["action_prefix_pieces"],
        "fast_tokenizer": {
            "dir": "fast_tokenizer", "bpe_vocab_size": FAST_BPE_VOCAB, "num_ids": fast.num_ids,
            "scale": fast.scale, "min_token": fast.min_token,
            "paligemma_id_range": [PALIGEMMA_VOCAB - FAST_SKIP_TOKENS - fast.num_ids,
                                   PALIGEMMA_VOCAB - 1 - FAST_SKIP_TOKENS],
        },
        "prefix_layout": "[image slots x 256 tokens][200 prompt tokens, right-padded][BOS appended]",
        "observations": observations,
        "detokenize": {
            "files": detok_files,
            "round_trip_max_abs_error": detok["round_trip_max_abs_error"],
            "num_fast_ids": int(len(detok["fast_ids"])),
        },
    }
    save_json(folder / "expected_meta.json", meta)
    write_fast_readme(folder, meta, describe_files(folder))
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 3_000_000, f"the pi0fast fixture is {size} bytes"
    _say(f"{FAST_FAMILY}: wrote {folder} ({size} bytes)")


def write_fast_readme(folder: Path, meta: dict, files: list[dict]) -> None:
    full, missing = meta["observations"]["full"], meta["observations"]["missing"]
    fast = meta["fast_tokenizer"]
    lines = [
        f"# LeRobot {_EXPECTED_LEROBOT} pi0fast golden fixture (tiny)",
        "",
        "Generated by `scripts/make_lerobot_fixtures.py --family pi0fast`; do not edit by hand. It is"
        " LeRobot's",
        "own `PI0FastPolicy` pipeline (greedy decoding, KV cache) on two observations, in float32 on the"
        " CPU with",
        "one thread, for vla_ros' pi0-FAST parity tests (which cannot import LeRobot). Regenerate with:",
        "",
        "```sh",
        "python3.12 -m venv /tmp/lrvenv",
        f"/tmp/lrvenv/bin/pip install 'lerobot[pi]=={_EXPECTED_LEROBOT}' sentencepiece protobuf",
        "/tmp/lrvenv/bin/python scripts/make_lerobot_fixtures.py --family pi0fast   # from the repository"
        " root",
        "```",
        "",
        "Versions used: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "## The weights are not here",
        "",
        f"The tiny policy has {meta['parameters']} parameters, almost all in `embed_tokens` and `lm_head`",
        f"({meta['text_vocab_size']} x 64 float32 each; LeRobot keeps them as two separate, untied"
        " parameters).",
        "`model.safetensors` is therefore not committed: `weights_recipe.json` lists every key of LeRobot's"
        " file",
        "(sorted) with its shape, scale and offset, and `test/lerobot_fast_weights.py` rebuilds it:",
        "",
        "```python",
        "import sys; sys.path.insert(0, 'test')   # from the repository root",
        "import lerobot_fast_weights as w",
        "w.write_model_safetensors(dst_dir, w.load_recipe('test/fixtures/lerobot_0_6_1/pi0fast'))",
        "```",
        "",
        "Key i (sorted order) is `(offset + scale * numpy.random.default_rng([seed,"
        " i]).standard_normal(shape))`",
        "cast to float32: matrices std 1/sqrt(fan_in) (3x for the language model's q_proj / k_proj, so that",
        "attention is peaked and the greedy ids depend on single prompt tokens), biases std 0.1, SigLIP",
        "LayerNorm weights 1 + 0.1 n,",
        "Gemma RMSNorm weights 0.1 n. The script checks that LeRobot saved and reloaded exactly these"
        " tensors",
        "(the rebuilt file is byte-identical to LeRobot's:"
        f" {meta['weights']['recipe_file_bytes_equal_lerobot_file']}).",
        "Copy `config.json`, `policy_*.json` and `policy_*.safetensors` beside the rebuilt"
        " `model.safetensors`",
        "to get the LeRobot checkpoint folder back.",
        "",
        "## What it is",
        "",
        "- Sizes of vla_ros' `pi0fast-tiny`: the SigLIP and Gemma sizes of `pi0-tiny`, PaliGemma's"
        " vocabulary",
        f"  {meta['text_vocab_size']}, {meta['tokenizer_max_length']} prompt tokens, chunk"
        f" {meta['chunk_size']},",
        f"  max action dim {meta['max_action_dim']}; `max_decoding_steps={meta['max_decoding_steps']}`,"
        f" temperature {meta['temperature']}, `fast_skip_tokens={meta['fast_skip_tokens']}`.",
        "  `config.json` says `gemma_2b` (LeRobot accepts no other name); the sizes are in the weights'"
        " shapes.",
        f"- Cameras {list(CAMERAS)} and the 14-dim ALOHA state / actions of the pi0 fixture; normalization",
        f"  {meta['normalization_mapping']}; no empty cameras, absolute actions.",
        f"- Task {TASK!r}; LeRobot's prompt {full['tokenized_text']!r} ({full['num_tokens']} tokens with"
        " BOS, right",
        "  padded to 200). The state's first two normalized values are outside [-1, 1]: bins -1 and 255.",
        "- `tokenizer/`: the text tokenizer (vla_ros `train_tokenizer`, 512 pieces, PaliGemma's special"
        " ids, with",
        f"  `|` a piece of its own, id {meta['special_ids']['bar']}; `Action: ` ="
        f" {meta['action_prefix_pieces']}"
        f" = ids {meta['action_prefix_ids']}).",
        "  LeRobot was given the same tokenizer with never-used pieces appended up to"
        f" {meta['text_vocab_size']} ids",
        "  (`lerobot_fast_weights.padded_tokenizer_json`; names `<fillNNNNNN>`, then `<locNNNN>` x 1024 and",
        "  `<segNNN>` x 128 as in PaliGemma), because LeRobot maps FAST ids with the tokenizer's"
        " `vocab_size`:",
        f"  PaliGemma id = {meta['text_vocab_size']} - 1 - {meta['fast_skip_tokens']} - FAST id. Encoding"
        " is unchanged.",
        "- `fast_tokenizer/`: a FAST tokenizer trained by vla_ros (`FastActionTokenizer.train`, BPE"
        " vocabulary"
        f" {fast['bpe_vocab_size']},",
        f"  {fast['num_ids']} ids, scale {fast['scale']}, min_token {fast['min_token']}) on smooth (50, 14)"
        " chunks;"
        f" its ids map to PaliGemma ids {fast['paligemma_id_range']}.",
        "  LeRobot loaded it through `AutoProcessor(trust_remote_code=True)` from a temporary copy that"
        " adds a",
        "  stand-in `processing_action_tokenizer.py` (the script's `FAST_STANDIN_SOURCE`).",
        "",
        "## Outputs (per observation; `missing` files end in `_missing`)",
        "",
        f"- `full`: every camera, slots {full['camera_slots']}, masks {full['image_masks']}.",
        f"- `missing`: {missing['absent_cameras']} absent: slots {missing['camera_slots']}, masks"
        f" {missing['image_masks']} (present cameras first; a missing slot is all -1 and masked).",
        "",
        "| file | contents |",
        "|---|---|",
        "| `observation.npz` | uint8 (H, W, 3) frames, raw float32 state (14,), prompt |",
        "| `expected_tokens.npy`, `expected_token_mask.npy` | int64 / bool (200,): the preprocessor's"
        " prompt ids"
        " (BOS 2 first, pad 0 at the right); the model appends one more BOS after all 200 |",
        "| `expected_images.npz` | `images` float32 (slots, 3, 224, 224) in [-1, 1], `masks` bool: what"
        " `_preprocess_images` gave the model |",
        "| `expected_state.npy` | float32 (14,): the MEAN_STD-normalized state LeRobot discretized |",
        "| `expected_generated.npy` | int64 (max_decoding_steps,): `sample_actions_fast_kv_cache`'s return,"
        " greedy"
        " PaliGemma ids (zeros after a `|` stop) |",
        "| `expected_generated_no_cache.npy` | the same from `sample_actions_fast` (use_kv_cache=False) |",
        "| `expected_top_logits.npz` | `ids` int64 / `values` float32 (steps, 5): top-5 of the lm_head"
        " logits at"
        " each decode step (step 0 = the appended BOS position) |",
        "| `expected_actions_normalized.npy`, `expected_actions.npy` | float32 (50, 14): what LeRobot's"
        " detokenization makes of these random ids with `validate_action_token_prefix=False`, before / after"
        " the postprocessor (with the check on, `predict_action_chunk` raises; see `expected_meta.json`) |",
        "| `detok_chunk.npy` | float32 (50, 14): a smooth normalized chunk |",
        "| `expected_detok_fast_ids.npy` | its FAST ids (LeRobot's action tokenizer step = vla_ros' encode)"
        " |",
        "| `expected_detok_<case>_tokens.npy` | int64: a generated row built from LeRobot's training target:"
        " `well_formed` = `Action: ` ids, mapped FAST ids, `|`, zero fill; `truncated` = `Action: ` and half"
        " the FAST ids, no `|`, zero fill |",
        "| `expected_detok_<case>_normalized.npy`, `..._actions.npy` | float32 (50, 14): LeRobot's"
        " `detokenize_actions` on that row, before / after the postprocessor (a truncated row is padded with"
        " zero coefficients by LeRobot's relaxed decoding: no error) |",
        "| `weights_recipe.json` | the weights (see above) |",
        "| `expected_meta.json` | everything else: special ids, decode counts, cache/no-cache agreement,"
        " logit gaps, sensitivity |",
        "",
        "## Decoding summary",
        "",
    ]
    for name, observation in meta["observations"].items():
        lines.append(
            f"- `{name}`: {observation['generated_tokens']} greedy tokens"
            f" (stopped on `|`: {observation['stopped_on_bar']}); no-cache path equal:"
            f" {observation['no_cache_equals_kv_cache']}; smallest top-1/top-2 logit gap"
            f" {observation['min_top1_top2_logit_gap']:.3g}; with the prefix check:"
            f" {observation['predict_action_chunk_with_prefix_check'][:60]!r}."
        )
        lines.append(f"  First step whose greedy id changes under a perturbation (-1: none):"
                     f" {observation['greedy_ids_first_change_under']}.")
    lines += ["", "## Files", "", "| file | bytes | array |", "|---|---|---|"]
    lines += [f"| `{row['file']}` | {row['bytes']} | {row.get('array', '')} |" for row in files]
    lines += ["", f"Total: {sum(row['bytes'] for row in files)} bytes (without this README)."]
    (folder / "README.md").write_text("\n".join(lines) + "\n")


def make_any_family(family: str, out: Path, sizes) -> None:
    if family == FAST_FAMILY:
        make_fast_family(out)
    else:
        make_family(family, out, sizes)


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
        make_any_family(family, out, sizes)
    if args.check_determinism:
        with tempfile.TemporaryDirectory() as tmp:
            for family in args.family:
                make_any_family(family, Path(tmp), sizes)
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
