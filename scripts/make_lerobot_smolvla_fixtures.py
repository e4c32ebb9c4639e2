#!/usr/bin/env python3
r"""Golden parity fixture from LeRobot 0.6.1's own SmolVLA pipeline (test/fixtures/lerobot_0_6_1/smolvla).

RUN ONLY INSIDE A LEROBOT 0.6.1 VIRTUAL ENVIRONMENT WITH THE SMOLVLA EXTRA (the
venv of scripts/make_lerobot_fixtures.py, plus num2words and accelerate):

    python3.12 -m venv /tmp/lrvenv
    /tmp/lrvenv/bin/pip install "lerobot[pi,smolvla]==0.6.1" sentencepiece protobuf
    /tmp/lrvenv/bin/python scripts/make_lerobot_smolvla_fixtures.py   # from the repository root

Anywhere else it stops with one line and exit status 2. It needs no network and
writes `<out>/smolvla/` (default out: test/fixtures/lerobot_0_6_1) holding:

- what LeRobot writes for a trained policy: `config.json`, `model.safetensors`,
  `policy_preprocessor.json`, `policy_postprocessor.json` and their
  normalizer / unnormalizer `.safetensors`;
- `smolvlm/`: the local stand-in for the Hub repository
  HuggingFaceTB/SmolVLM2-500M-Video-Instruct that LeRobot reads at
  construction (`config.json`: a tiny SmolVLMConfig; `tokenizer.json`,
  `tokenizer_config.json`: a byte-level BPE tokenizer trained here;
  `processor_config.json`: the SmolVLMProcessor around them);
- the inputs (`observation*.npz`, `noise.npy`), LeRobot's outputs
  (`expected_*`), `expected_meta.json` and a `README.md`, for two
  observations: `full` (three cameras) and `missing` (cam_left_wrist absent;
  files with the suffix `_missing`).

The cameras, state statistics, task and noise generator are those of the
pi0 / pi0.5 fixtures (imported from make_lerobot_fixtures.py): a real camera's
480x640 frame and two small frames of other aspect ratios, a 14-dim ALOHA
state, MEAN_STD statistics.

The policy has the sizes of vla_ros' future `smolvla-tiny` (TINY_VLM below):
SigLIP-style vision 32 wide, 2 layers, 2 heads, MLP 64, image 512, patch 16;
pixel shuffle 4 (64 tokens per image), connector without bias; Llama text
model 64 wide, MLP 128, 4 heads, 2 K/V heads, head_dim 16, 4 layers,
rope_theta 100000 (LeRobot ignores it: its RoPE is fixed at 10000), RMSNorm eps
1e-5; LeRobot's defaults otherwise (num_vlm_layers set to 4, expert width
0.75 -> 48 and MLP get_intermediate_size(48) = 256, self-attention every 2
layers, cross-attention otherwise, 48 prompt tokens, chunk 50, max state /
action dim 32, 10 steps, empty_cameras 0). Weights: every parameter seeded
(`init_weights`: matrices std 1/sqrt(fan_in), biases std 0.1, LayerNorm and
RMSNorm weights 1 + 0.1 n, LayerNorm biases 0.1 n), saved by LeRobot,
reloaded with `SmolVLAPolicy.from_pretrained` and checked equal.

Patches applied to LeRobot (where files come from; no computation changes):

1. While the policy is built and reloaded: `AutoConfig` and `AutoProcessor`
   as `lerobot.policies.smolvla.smolvlm_with_expert` names them load
   `smolvlm/` when asked for HuggingFaceTB/SmolVLM2-500M-Video-Instruct
   (`SmolVLMWithExpertModel.__init__` calls both on the Hub name even with
   `load_vlm_weights=False`). So config.json keeps the Hub name.
2. While the processor factory first builds the pipelines only:
   `AutoTokenizer.from_pretrained` in `lerobot.processor.tokenizer_processor`
   loads `smolvlm/` for the Hub name, so `policy_preprocessor.json` keeps it.
   The outputs are computed with that patch removed and LeRobot's documented
   override (`preprocessor_overrides={"tokenizer_processor": {"tokenizer_name":
   <smolvlm dir>}}`).

Recorded without changing any computation: the policy instance's
`prepare_images` and `prepare_state` are wrapped to keep what they return.
`expected_velocity_t1.npy` is LeRobot's own prefill (`embed_prefix`,
`vlm_with_expert.forward`) and one `denoise_step` at t = 1 on the noise.
`sensitivity` reruns `sample_actions` on perturbed inputs, and with three
temporary patches of LeRobot (RoPE at the config's theta, pi0's one-block
action mask, centred image padding) to show that the 1e-4 check sees the
quirks a re-implementation could miss; it writes no expected value.

Run twice, it writes byte-identical files (`--check-determinism` generates
into a temporary folder and compares).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
from pathlib import Path
import shutil
import sys
import tempfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_lerobot_fixtures as base  # noqa: E402 (helpers and the shared inputs; stdlib-only at import)

FAMILY = "smolvla"
HUB_VLM = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"  # SmolVLAConfig.vlm_model_name's default
SEED = base.SEED
TASK = base.TASK
CAMERAS = base.CAMERAS
JOINTS = base.JOINTS
STATE_DIM = ACTION_DIM = base.STATE_DIM
NUM_STEPS = 10
CHUNK = 50
MAX_DIM = 32
TOKENIZER_MAX_LENGTH = 48
NUM_VLM_LAYERS = 4
# The Hugging Face SmolVLM config that stands in for SmolVLM2-500M-Video-Instruct's.
TINY_VLM = {
    "scale_factor": 4,
    "vision_config": {
        "model_type": "smolvlm_vision",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 512,
        "patch_size": 16,
    },
    "text_config": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
}
# Tokenizer: byte-level BPE like SmolLM2's, SmolLM2's first three ids, SmolVLM's image tokens last.
TOKENIZER_VOCAB = 512
BASE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
IMAGE_SPECIALS = ("<global-img>", "<fake_token_around_image>", "<image>", "<end_of_utterance>")
TOKENIZER_CONFIG = {
    # Loaded as-is from tokenizer.json (transformers' TokenizersBackend): no post-processor, so
    # no BOS is added, as with SmolLM2's byte-level tokenizer.
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<|im_start|>",
    "eos_token": "<end_of_utterance>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
    "model_max_length": 8192,
    "truncation_side": "left",  # what the published tokenizer_config.json says
    "clean_up_tokenization_spaces": False,
    "extra_special_tokens": {
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "image_token": "<image>",
        "end_of_utterance_token": "<end_of_utterance>",
    },
}
# A prompt longer than 48 tokens, tokenized by LeRobot's preprocessor only (truncation side).
LONG_TASK = (
    "Pick up the red_block from the left side of the table, lift it slowly above the blue bowl, "
    "then lower it gently into the bowl and move the arm back to its starting pose before the "
    "next instruction arrives"
)
# Weight scale: std = WEIGHT_GAIN / sqrt(fan_in) for matrices, so activations stay O(1).
WEIGHT_GAIN = 1.0
BIAS_STD = 0.1
NORM_STD = 0.1
# Perturbations that must move the normalized actions by more than 1e-3 (10x the test tolerance).
REQUIRED_SENSITIVITY = (
    "another noise sample",
    "one prompt token changed",
    "prompt without the trailing newline",
    "first camera +1 uint8 level",
    "images rounded to uint8 levels after the resize",
    "images padded centred (openpi) instead of left/top",
    "normalized state +0.1 on one joint",
    "RoPE theta 100000 (the VLM config's) instead of LeRobot's fixed 10000",
    "action tokens in one block (pi0's mask) instead of causal",
    "the missing camera present (the full observation)",
)


def _say(message: str) -> None:
    print(f"[make_lerobot_smolvla_fixtures] {message}", flush=True)


def _require_lerobot() -> None:
    """Exit with one line unless LeRobot 0.6.1 and the smolvla extra are importable."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        found = version("lerobot")
        try:
            version("num2words")
            extra = True
        except PackageNotFoundError:
            extra = False
    except PackageNotFoundError:
        found, extra = None, False
    except Exception as exc:  # a broken environment: say so in the same one line
        found, extra = f"unreadable ({exc})", False
    wanted = base._EXPECTED_LEROBOT  # noqa: SLF001
    if found != wanted or not extra:
        print(
            f"make_lerobot_smolvla_fixtures.py: run this inside a LeRobot {wanted} venv "
            f"with the smolvla extra (pip install 'lerobot[pi,smolvla]=={wanted}'"
            f" sentencepiece protobuf); this interpreter ({sys.executable}) has lerobot "
            f"{found or 'not installed'}{'' if extra else ', no num2words'}",
            file=sys.stderr,
        )
        raise SystemExit(2)


# --- the Hub stand-in ---------------------------------------------------------------------


def tokenizer_corpus():
    """vla_ros' stand-in tokenizer corpus (robot instructions), the tasks, a few digits."""
    sys.path.insert(0, str(base.REPO))
    from vla_ros.observation.tokenizer import _training_sentences

    return list(_training_sentences((TASK + "\n", LONG_TASK + "\n")))


def write_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer.json (SmolLM2's form) with SmolVLM's special tokens, 512 ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB - len(IMAGE_SPECIALS),
        special_tokens=list(BASE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE_SPECIALS])
    assert tokenizer.get_vocab_size() == TOKENIZER_VOCAB, tokenizer.get_vocab_size()
    for index, token in enumerate(BASE_SPECIALS):
        assert tokenizer.token_to_id(token) == index, token
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n")
    base.save_json(folder / "tokenizer_config.json", TOKENIZER_CONFIG)


def write_vlm_standin(folder: Path) -> dict:
    """Write what LeRobot reads from the Hub repo (config.json, tokenizer, processor); return the config."""
    from transformers import AutoTokenizer, SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    write_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pad = tokenizer.pad_token_id
    text = dict(TINY_VLM["text_config"], vocab_size=len(tokenizer), pad_token_id=pad,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = SmolVLMConfig(
        image_token_id=tokenizer.image_token_id,
        pad_token_id=pad,
        scale_factor=TINY_VLM["scale_factor"],
        text_config=text,
        vision_config=dict(TINY_VLM["vision_config"]),
        tie_word_embeddings=TINY_VLM["tie_word_embeddings"],
    )
    config.save_pretrained(str(folder))
    image_seq_len = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 // (
        config.scale_factor**2)
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=image_seq_len,
    )
    with tempfile.TemporaryDirectory() as tmp:  # keep only the processor's own file
        processor.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "processor_config.json", folder / "processor_config.json")
    return json.loads((folder / "config.json").read_text())


class _Redirect:
    """Stands in for a transformers Auto class: from_pretrained(HUB_VLM) loads `local` instead."""

    def __init__(self, auto, local: Path):
        self._auto, self._local = auto, str(local)

    def from_pretrained(self, name, *args, **kwargs):
        return self._auto.from_pretrained(self._local if name == HUB_VLM else name, *args, **kwargs)

    def __getattr__(self, item):
        return getattr(self._auto, item)


@contextlib.contextmanager
def hub_vlm_redirect(local: Path, tokenizer: bool = False):
    """Patch 1 (and patch 2 with tokenizer=True) of the module docstring; undone on exit."""
    from lerobot.policies.smolvla import smolvlm_with_expert as sw
    from lerobot.processor import tokenizer_processor as tp

    saved = [(sw, "AutoConfig", sw.AutoConfig), (sw, "AutoProcessor", sw.AutoProcessor)]
    if tokenizer:
        saved.append((tp, "AutoTokenizer", tp.AutoTokenizer))
    for module, name, original in saved:
        setattr(module, name, _Redirect(original, local))
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


# --- building and running -----------------------------------------------------------------


def init_weights(policy, seed: int) -> None:
    """Seeded random weights: std gain/sqrt(fan_in) matrices, std 0.1 biases, norm weights 1 + 0.1 n.

    Llama's RMSNorm multiplies by its weight (not 1 + w as Gemma's), so its
    weights, like LayerNorm's, are drawn around 1.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(policy.named_parameters()):
            leaf = name.rpartition(".")[2]
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.ndim >= 2:
                value = noise * (WEIGHT_GAIN / param[0].numel() ** 0.5)
            elif leaf == "bias":
                value = noise * BIAS_STD
            else:  # LayerNorm / RMSNorm weight: x * w
                value = 1.0 + noise * NORM_STD
            param.copy_(value.to(param.dtype))


def build_config():
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    inputs = {
        f"observation.images.{camera}": PolicyFeature(FeatureType.VISUAL, (3, height, width))
        for camera, (height, width) in CAMERAS.items()
    }
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    config = SmolVLAConfig(
        device="cpu",
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        chunk_size=CHUNK,
        n_action_steps=CHUNK,
        num_steps=NUM_STEPS,
        num_vlm_layers=NUM_VLM_LAYERS,
    )
    # The values this fixture documents are LeRobot's defaults; fail loudly if a default moved.
    expected = {
        "max_state_dim": MAX_DIM, "max_action_dim": MAX_DIM, "tokenizer_max_length": TOKENIZER_MAX_LENGTH,
        "resize_imgs_with_padding": (512, 512), "empty_cameras": 0, "attention_mode": "cross_attn",
        "self_attn_every_n_layers": 2, "expert_width_multiplier": 0.75, "num_expert_layers": -1,
        "pad_language_to": "longest", "add_image_special_tokens": False, "prefix_length": -1,
        "use_cache": True, "min_period": 4e-3, "max_period": 4.0, "vlm_model_name": HUB_VLM,
        "load_vlm_weights": False, "adapt_to_pi_aloha": False,
    }
    for key, value in expected.items():
        assert getattr(config, key) == value, (key, getattr(config, key))
    return config


@contextlib.contextmanager
def recording(policy):
    """Wrap the instance's prepare_images / prepare_state to keep what they return (unchanged)."""
    captured = {}
    prepare_images, prepare_state = policy.prepare_images, policy.prepare_state

    def images(batch):
        result = prepare_images(batch)
        captured["images"], captured["image_masks"] = result
        return result

    def state(batch):
        result = prepare_state(batch)
        captured["state"] = result
        return result

    policy.prepare_images, policy.prepare_state = images, state
    try:
        yield captured
    finally:
        del policy.prepare_images, policy.prepare_state


def run_pipeline(policy, preprocessor, postprocessor, observation: dict, noise):
    """predict_action's path with a fixed noise; returns the batch, what the model saw and the outputs."""
    import torch

    from lerobot.policies.utils import prepare_observation_for_inference

    with recording(policy) as captured, torch.inference_mode():
        frame = {key: value.copy() for key, value in observation.items() if key != "task"}
        batch = prepare_observation_for_inference(frame, torch.device("cpu"), observation["task"], None)
        batch = preprocessor(batch)
        normalized = policy.predict_action_chunk(batch, noise=noise)
        actions = postprocessor(normalized)
    return batch, dict(captured), normalized, actions


def first_velocity(policy, captured, batch, noise):
    """LeRobot's prefill and one denoise_step at t = 1 on the noise: v(x_1, 1), (50, 32)."""
    import torch

    from lerobot.policies.common.vla_utils import make_att_2d_masks

    model = policy.model
    with torch.inference_mode():
        embs, pad, att = model.embed_prefix(
            captured["images"], captured["image_masks"], batch["observation.language.tokens"],
            batch["observation.language.attention_mask"], state=captured["state"])
        _, cache = model.vlm_with_expert.forward(
            attention_mask=make_att_2d_masks(pad, att), position_ids=torch.cumsum(pad, dim=1) - 1,
            past_key_values=None, inputs_embeds=[embs, None], use_cache=True)
        velocity = model.denoise_step(prefix_pad_masks=pad, past_key_values=cache, x_t=noise,
                                      timestep=torch.ones(noise.shape[0]))
    return velocity, pad, att


def centred_model_image(frame):
    """The frame letterboxed into 512x512 with the padding centred (openpi's convention), in [-1, 1]."""
    import torch

    from lerobot.policies.common.vla_utils import resize_with_pad_torch

    img = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
    return resize_with_pad_torch(img, 512, 512) * 2.0 - 1.0


def sensitivity(policy, batch, captured, noise, tokenizer_dir: Path, base_out, frames: dict) -> dict:
    """max |change| of the normalized actions under small input and implementation changes."""
    from unittest import mock

    import torch
    from transformers import AutoTokenizer

    from lerobot.policies.smolvla import smolvlm_with_expert as sw

    images, masks = captured["images"], captured["image_masks"]
    tokens = batch["observation.language.tokens"]
    token_mask = batch["observation.language.attention_mask"]
    state = captured["state"]
    model = policy.model

    def run(images=images, masks=masks, tokens=tokens, token_mask=token_mask, state=state, noise=noise):
        with torch.inference_mode():
            out = model.sample_actions(images, masks, tokens, token_mask, state, noise=noise)
        return float((out[..., :ACTION_DIM] - base_out).abs().max())

    found = {}
    other = torch.randn(noise.shape, generator=torch.Generator().manual_seed(SEED + 7))
    found["another noise sample"] = run(noise=other)
    swapped = tokens.clone()
    swapped[0, 2] = tokens[0, 3]
    found["one prompt token changed"] = run(tokens=swapped)
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    plain = hf([TASK], max_length=TOKENIZER_MAX_LENGTH, truncation=True, padding="longest",
               padding_side="right", return_tensors="pt")
    found["prompt without the trailing newline"] = run(
        tokens=plain["input_ids"], token_mask=plain["attention_mask"].bool())
    found["first camera +1 uint8 level"] = run(images=[images[0] + 2.0 / 255.0] + list(images[1:]))
    quantized = [torch.round((img + 1) / 2 * 255) / 255 * 2 - 1 for img in images]
    found["images rounded to uint8 levels after the resize"] = run(images=quantized)
    present = [k for k in policy.config.image_features if k.removeprefix("observation.images.") in frames]
    centred = [centred_model_image(frames[k.removeprefix("observation.images.")]) for k in present]
    found["images padded centred (openpi) instead of left/top"] = run(images=centred)
    one_hot = torch.nn.functional.one_hot(torch.tensor(2), state.shape[-1]).float()
    found["normalized state +0.1 on one joint"] = run(state=state + 0.1 * one_hot)
    found["normalized state +0.01 on one joint"] = run(state=state + 0.01 * one_hot)
    with mock.patch.object(sw, "apply_rope", functools.partial(sw.apply_rope, max_wavelength=100_000)):
        found["RoPE theta 100000 (the VLM config's) instead of LeRobot's fixed 10000"] = run()
    embed_suffix = model.embed_suffix

    def block_suffix(noisy_actions, timestep):
        embs, pad, att = embed_suffix(noisy_actions, timestep)
        att = att.clone()
        att[:, 1:] = 0  # pi0: [1, 0, 0, ...], the action tokens see each other
        return embs, pad, att

    with mock.patch.object(model, "embed_suffix", block_suffix):
        found["action tokens in one block (pi0's mask) instead of causal"] = run()
    return found


def tokenize_with_lerobot(preprocessor, task: str):
    """The preprocessor's ids and mask for `task` alone (a dummy state; images are not needed)."""
    import numpy as np
    import torch

    batch = {"observation.state": torch.zeros(1, STATE_DIM), "task": task}
    with torch.inference_mode():
        out = preprocessor(batch)
    return (out["observation.language.tokens"][0].numpy(),
            out["observation.language.attention_mask"][0].numpy().astype(bool),
            np.str_(out["task"][0] if isinstance(out["task"], list) else out["task"]))


def make_smolvla(out: Path) -> None:
    import numpy as np
    from safetensors import safe_open
    import torch

    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
    from lerobot.policies.smolvla.smolvlm_with_expert import get_intermediate_size

    folder = out / FAMILY
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)

    # Inputs: the cameras and statistics of the pi0 fixture; a state that fits MEAN_STD.
    images = {camera: base.make_image(h, w, rng) for camera, (h, w) in CAMERAS.items()}
    stats = base.make_stats(rng)
    state = base.make_state_meanstd(stats, rng)
    noise = torch.randn((1, CHUNK, MAX_DIM), generator=torch.Generator().manual_seed(SEED + 1))

    vlm_dir = folder / "smolvlm"
    vlm_config = write_vlm_standin(vlm_dir)

    # 1. Build and save, as training would.
    with hub_vlm_redirect(vlm_dir):
        policy = SmolVLAPolicy(build_config())
    init_weights(policy, SEED + 2)
    policy.save_pretrained(folder)
    with hub_vlm_redirect(vlm_dir, tokenizer=True):
        pre, post = make_smolvla_pre_post_processors(policy.config, dataset_stats=stats)
    pre.save_pretrained(folder)
    post.save_pretrained(folder)
    reference = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    del policy, pre, post

    # 2. Reload from the folder, as a user would, and check nothing was lost.
    with hub_vlm_redirect(vlm_dir):
        policy = SmolVLAPolicy.from_pretrained(folder)
    policy.eval()
    loaded = policy.state_dict()
    assert set(loaded) == set(reference), "reloaded policy has other parameters"
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), f"{key} did not reload exactly"
    pre, post = make_pre_post_processors(
        policy.config,
        pretrained_path=str(folder),
        preprocessor_overrides={"tokenizer_processor": {"tokenizer_name": str(vlm_dir)}},
    )
    expert = policy.model.vlm_with_expert
    expert_width = expert.expert_hidden_size
    expert_mlp = expert.lm_expert.config.intermediate_size
    assert expert_width == 48 and expert_mlp == get_intermediate_size(48) == 256, (expert_width, expert_mlp)
    assert len(expert.get_vlm_model().text_model.layers) == NUM_VLM_LAYERS == len(expert.lm_expert.layers)

    # 3. Run, once per observation (the same state, prompt and noise).
    runs = {}
    for name, (_, absent) in base.OBSERVATIONS.items():
        frames = {c: img for c, img in images.items() if c not in absent}
        observation = {f"observation.images.{c}": img for c, img in frames.items()}
        observation["observation.state"] = state
        observation["task"] = TASK
        batch, captured, normalized, actions = run_pipeline(policy, pre, post, observation, noise)
        again = run_pipeline(policy, pre, post, observation, noise)[3]
        assert torch.equal(actions, again), "LeRobot is not deterministic with a fixed noise"
        velocity, prefix_pad, prefix_att = first_velocity(policy, captured, batch, noise)
        found = sensitivity(policy, batch, captured, noise, vlm_dir, normalized, frames)
        runs[name] = {
            "frames": frames,
            "absent": list(absent),
            "slot_keys": [k for k in policy.config.image_features if k in observation],
            "batch": batch,
            "captured": captured,
            "normalized": normalized,
            "actions": actions,
            "velocity": velocity,
            "prefix_pad": prefix_pad[0].numpy(),
            "prefix_att": prefix_att[0].numpy(),
            "found": found,
        }
    long_tokens, long_mask, long_text = tokenize_with_lerobot(pre, LONG_TASK)

    # 4. What the model saw, and checks that the fixture tests what it claims to.
    for name, run in runs.items():
        batch, captured = run["batch"], run["captured"]
        run["model_images"] = torch.cat(captured["images"]).numpy().astype(np.float32)
        run["image_masks"] = torch.cat(captured["image_masks"]).numpy()
        run["tokens"] = batch["observation.language.tokens"][0].numpy()
        run["token_mask"] = batch["observation.language.attention_mask"][0].numpy().astype(bool)
        run["padded_state"] = captured["state"][0].numpy().astype(np.float32)
        run["normalized"] = run["normalized"][0].numpy().astype(np.float32)
        run["actions"] = run["actions"][0].numpy().astype(np.float32)
        run["velocity"] = run["velocity"][0].numpy().astype(np.float32)
        assert run["image_masks"].all() and len(run["slot_keys"]) == len(run["model_images"])
        assert run["token_mask"].all(), "padding='longest' with one prompt: no pad tokens expected"
        expected_state = (state - stats["observation.state"]["mean"].astype(np.float32)) / (
            stats["observation.state"]["std"].astype(np.float32) + np.float32(1e-8))
        assert np.allclose(run["padded_state"][:STATE_DIM], expected_state, atol=1e-6)
        assert not run["padded_state"][STATE_DIM:].any()
        moved = np.abs(run["normalized"] - noise[0, :, :ACTION_DIM].numpy()).mean()
        assert run["normalized"].std() > 0.3 and moved > 0.3, "degenerate actions: the noise barely moves"
        num_image_tokens = 64 * len(run["slot_keys"])
        assert run["prefix_pad"].shape[0] == num_image_tokens + run["tokens"].shape[0] + 1
        assert run["prefix_att"].tolist() == [False] * (run["prefix_pad"].shape[0] - 1) + [True]
    full, missing = runs["full"], runs["missing"]
    assert full["slot_keys"] == list(policy.config.image_features)
    assert len(missing["slot_keys"]) == len(full["slot_keys"]) - 1, "empty_cameras=0 drops a missing camera"
    for slot, key in enumerate(missing["slot_keys"]):
        same = full["model_images"][full["slot_keys"].index(key)]
        assert np.array_equal(missing["model_images"][slot], same), key
    missing["found"]["the missing camera present (the full observation)"] = float(
        np.abs(full["normalized"] - missing["normalized"]).max())
    for name, run in runs.items():
        for what, change in run["found"].items():
            if what in REQUIRED_SENSITIVITY:
                assert change > 1e-3, f"{name}: the fixture is blind to '{what}' (max change {change:.2e})"
    assert long_tokens.shape[0] == TOKENIZER_MAX_LENGTH and long_mask.all()

    # 5. Write.
    base.save_npy(folder / "noise.npy", noise[0].numpy())
    observations = {}
    for name, run in runs.items():
        suffix = base.OBSERVATIONS[name][0]
        files = {
            "observation": f"observation{suffix}.npz",
            "tokens": f"expected_tokens{suffix}.npy",
            "token_mask": f"expected_token_mask{suffix}.npy",
            "images": f"expected_images{suffix}.npz",
            "state": f"expected_state{suffix}.npy",
            "velocity_t1": f"expected_velocity_t1{suffix}.npy",
            "actions_normalized": f"expected_actions_normalized{suffix}.npy",
            "actions": f"expected_actions{suffix}.npy",
        }
        base.save_npz(folder / files["observation"], {
            **{f"observation.images.{c}": img for c, img in run["frames"].items()},
            "state": state,
            "prompt": np.str_(TASK),
        })
        base.save_npy(folder / files["tokens"], run["tokens"])
        base.save_npy(folder / files["token_mask"], run["token_mask"])
        base.save_npz(folder / files["images"], {"images": run["model_images"], "masks": run["image_masks"]})
        base.save_npy(folder / files["state"], run["padded_state"])
        base.save_npy(folder / files["velocity_t1"], run["velocity"])
        base.save_npy(folder / files["actions_normalized"], run["normalized"])
        base.save_npy(folder / files["actions"], run["actions"])
        n_prefix = int(run["prefix_pad"].shape[0])
        observations[name] = {
            "files": files,
            "absent_cameras": [f"observation.images.{c}" for c in run["absent"]],
            "camera_slots": run["slot_keys"],
            "image_masks": run["image_masks"].tolist(),
            "tokenized_text": run["batch"]["task"][0],
            "num_tokens": int(run["token_mask"].sum()),
            "prefix_length": n_prefix,
            "state_token_position": int(run["prefix_pad"].sum()) - 1,
            "action_positions_self_attention_layers": [n_prefix, n_prefix + CHUNK - 1],
            "action_positions_cross_attention_layers": [0, CHUNK - 1],
            "sensitivity_max_abs_change_of_normalized_actions": {
                k: float(f"{v:.3e}") for k, v in run["found"].items()
            },
        }
    base.save_npy(folder / "expected_long_prompt_tokens.npy", long_tokens)
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        shapes = {k: list(weights.get_slice(k).get_shape()) for k in sorted(weights.keys())}
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    text = vlm_config["text_config"]
    meta = {
        "family": FAMILY,
        "lerobot_version": base._EXPECTED_LEROBOT,  # noqa: SLF001
        "policy_class": type(policy).__name__,
        "vla_ros_config": f"{FAMILY}-tiny",
        "parameters": n_params,
        "hub_vlm": HUB_VLM,
        "vlm_config": "smolvlm/config.json",
        "sizes": {
            "vision": {k: vlm_config["vision_config"][k] for k in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "image_size", "patch_size", "layer_norm_eps", "hidden_act")},
            "scale_factor": vlm_config["scale_factor"],
            "image_tokens_per_camera": 64,
            "text": {k: text[k] for k in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "vocab_size")},
            "text_rope_theta_in_config": text["rope_parameters"]["rope_theta"],
            "rope_theta_lerobot_uses": 10000,
            "num_vlm_layers": NUM_VLM_LAYERS,
            "expert": {"hidden_size": expert_width, "intermediate_size": expert_mlp,
                       "num_hidden_layers": len(expert.lm_expert.layers),
                       "self_attention_layers": [i for i in range(NUM_VLM_LAYERS) if i % 2 == 0],
                       "cross_attention_layers": [i for i in range(NUM_VLM_LAYERS) if i % 2 == 1]},
        },
        "weight_shapes": shapes,
        "camera_slots": list(policy.config.image_features),
        "camera_sizes_hw": {f"observation.images.{c}": list(hw) for c, hw in CAMERAS.items()},
        "task": TASK,
        "state_dim": STATE_DIM,
        "action_dim": ACTION_DIM,
        "action_names": JOINTS,
        "normalization_mapping": {k: v.value for k, v in policy.config.normalization_mapping.items()},
        "num_steps": NUM_STEPS,
        "chunk_size": CHUNK,
        "max_state_dim": MAX_DIM,
        "max_action_dim": MAX_DIM,
        "tokenizer_max_length": TOKENIZER_MAX_LENGTH,
        "empty_cameras": policy.config.empty_cameras,
        "long_prompt": {"task": LONG_TASK, "tokenized_text": str(long_text),
                        "file": "expected_long_prompt_tokens.npy",
                        "truncation_side": TOKENIZER_CONFIG["truncation_side"]},
        "observations": observations,
    }
    base.save_json(folder / "expected_meta.json", meta)
    write_readme(folder, meta, base.describe_files(folder))
    for path in folder.rglob("*"):  # safetensors writes 0600; the fixture is plain data
        path.chmod(0o755 if path.is_dir() else 0o644)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    _say(f"wrote {folder} ({size} bytes)")


def write_readme(folder: Path, meta: dict, files: list[dict]) -> None:
    full, missing = meta["observations"]["full"], meta["observations"]["missing"]
    sizes = meta["sizes"]
    lines = [
        f"# LeRobot {base._EXPECTED_LEROBOT} SmolVLA golden fixture (tiny)",  # noqa: SLF001
        "",
        "Generated by `scripts/make_lerobot_smolvla_fixtures.py`; do not edit by hand. It is LeRobot's own",
        "`SmolVLAPolicy` pipeline on two observations with a fixed noise, in float32 on the CPU with one",
        "thread, for vla_ros' SmolVLA parity tests (which cannot import LeRobot). Regenerate with:",
        "",
        "```sh",
        "python3.12 -m venv /tmp/lrvenv",
        f"/tmp/lrvenv/bin/pip install 'lerobot[pi,smolvla]=={base._EXPECTED_LEROBOT}'"  # noqa: SLF001
        " sentencepiece protobuf",
        "/tmp/lrvenv/bin/python scripts/make_lerobot_smolvla_fixtures.py   # from the repository root",
        "```",
        "",
        "Versions used: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "## What it is",
        "",
        f"- A tiny SmolVLA with the sizes of vla_ros' `{meta['vla_ros_config']}` ({meta['parameters']}"
        " parameters, all in `model.safetensors`) and seeded random weights (matrices std 1/sqrt(fan_in),"
        " biases std 0.1, LayerNorm / RMSNorm weights 1 + 0.1 n).",
        f"  Vision: {sizes['vision']}; pixel shuffle {sizes['scale_factor']} ->"
        f" {sizes['image_tokens_per_camera']} tokens per camera, connector without bias.",
        f"  Text (Llama): {sizes['text']}, first {sizes['num_vlm_layers']} layers used.",
        f"  Expert: {sizes['expert']}.",
        f"  The VLM config says rope_theta {sizes['text_rope_theta_in_config']:g}, but LeRobot's RoPE is"
        f" fixed at {sizes['rope_theta_lerobot_uses']} (`apply_rope(..., max_wavelength=10_000)`).",
        "- `config.json` is LeRobot's SmolVLAConfig: it names the VLM by its Hub id"
        f" (`{meta['hub_vlm']}`) and holds none of its sizes. LeRobot builds the VLM from that repo's"
        " `config.json` and reads its processor; `smolvlm/` is the local stand-in the script gave it"
        " (patches in the script's docstring): `config.json` (the tiny SmolVLMConfig above),"
        " `tokenizer.json` + `tokenizer_config.json` (a 512-id byte-level BPE trained by the script"
        " on vla_ros' stand-in corpus: `<|endoftext|>` 0, `<|im_start|>` 1, `<|im_end|>` 2 (pad),"
        " `<global-img>` 508, `<fake_token_around_image>` 509, `<image>` 510, `<end_of_utterance>` 511;"
        " no post-processor, so no BOS), `processor_config.json`. With LeRobot, reload with the"
        " script's `hub_vlm_redirect(<this folder>/smolvlm)` active and"
        " `preprocessor_overrides={'tokenizer_processor': {'tokenizer_name': '<this folder>/smolvlm'}}`.",
        f"- Cameras {list(CAMERAS)} (uint8, H x W {list(CAMERAS.values())}), `empty_cameras=0`"
        " (LeRobot's default). `cam_high` is a real camera's 480x640 frame (shrunk to 384x512, 128 rows of"
        " padding on top); the wrist cameras are enlarged (63x100 -> 322x512, 96x70 -> 512x373).",
        f"- 14-dim state and actions (ALOHA layout); normalization {meta['normalization_mapping']};"
        " absolute actions.",
        f"- Task {meta['task']!r}; LeRobot tokenized {full['tokenized_text']!r}: {full['num_tokens']}"
        " tokens, no padding (`pad_language_to='longest'` with one prompt), 48 is only the truncation"
        " limit.",
        "",
        "## The two observations",
        "",
        f"- `full` (no suffix): slots {full['camera_slots']}; prefix {full['prefix_length']} tokens"
        f" (3 x 64 image tokens, {full['num_tokens']} prompt tokens, 1 state token at position"
        f" {full['state_token_position']}).",
        f"- `missing` (suffix `_missing`): {missing['absent_cameras']} absent. With `empty_cameras=0`"
        f" LeRobot gives it no slot at all: slots {missing['camera_slots']}, prefix"
        f" {missing['prefix_length']} tokens (a masked -1 slot exists only while"
        " `empty_cameras` allows; not exercised here).",
        "",
        "## How the expected values were computed",
        "",
        "The policy and processors were reloaded from this folder (`SmolVLAPolicy.from_pretrained`,",
        "`make_pre_post_processors(pretrained_path=...)`), then run as `predict_action` runs them:",
        "`prepare_observation_for_inference` (uint8 HWC -> float32 [0, 1] CHW) -> preprocessor ->",
        f"`predict_action_chunk(batch, noise=noise[None])` ({NUM_STEPS} Euler steps) -> postprocessor.",
        "",
        "| file | contents |",
        "|---|---|",
        "| `observation.npz` | `observation.images.<camera>` uint8 (H, W, 3) RGB (the cameras present);"
        " `state` float32 (14,) raw; `prompt` str |",
        "| `noise.npy` | float32 (50, 32): the initial noise x at t = 1 (both observations) |",
        "| `expected_tokens.npy`, `expected_token_mask.npy` | int64 / bool (L,): the preprocessor's"
        " ids and mask for the task + '\\n' (no BOS, no padding) |",
        "| `expected_images.npz` | `images` float32 (slots, 3, 512, 512) in [-1, 1]: what"
        " `prepare_images` gave the model (resize_with_pad: bilinear, padding on the left / top, x*2-1);"
        " `masks` bool (slots,) |",
        "| `expected_state.npy` | float32 (32,): the MEAN_STD-normalized state zero-padded to 32"
        " (what `prepare_state` gave the model) |",
        "| `expected_velocity_t1.npy` | float32 (50, 32): LeRobot's prefill + one `denoise_step` on"
        " the noise at t = 1 (the first Euler velocity) |",
        "| `expected_actions_normalized.npy` | float32 (50, 14): `predict_action_chunk` output |",
        "| `expected_actions.npy` | float32 (50, 14): after the postprocessor (unnormalized) |",
        "| `expected_long_prompt_tokens.npy` | int64 (48,): the preprocessor's ids for"
        " `long_prompt.task` in `expected_meta.json` (truncated to 48 on the"
        f" {meta['long_prompt']['truncation_side']}, as the tokenizer config says) |",
        "| `expected_meta.json` | sizes, weight shapes, slots, positions, tokenized text, sensitivity |",
        "",
        "## How sharp a 1e-4 check on the actions is",
        "",
        "Max |change| of the normalized actions when one input, or one detail of the computation,",
        "is changed (the script refuses to write a fixture where a required one is below 1e-3):",
    ]
    for name, observation in meta["observations"].items():
        lines += ["", f"`{name}`:", ""]
        lines += [f"- {what}: {change:.2e}" for what, change in observation[
            "sensitivity_max_abs_change_of_normalized_actions"].items()]
    lines += ["", "## Files", "", "| file | bytes | array |", "|---|---|---|"]
    lines += [f"| `{row['file']}` | {row['bytes']} | {row.get('array', '')} |" for row in files]
    lines += ["", f"Total: {sum(row['bytes'] for row in files)} bytes (without this README)."]
    (folder / "README.md").write_text("\n".join(lines) + "\n")


def versions() -> dict:
    found = base.versions()
    from importlib.metadata import version

    found["num2words"] = version("num2words")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=base.DEFAULT_OUT, help="parent folder (default: %(default)s)"
    )
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
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    make_smolvla(out)
    if args.check_determinism:
        with tempfile.TemporaryDirectory() as tmp:
            make_smolvla(Path(tmp))
            first, second = base.tree_digest(out / FAMILY), base.tree_digest(Path(tmp) / FAMILY)
            differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
            if differ:
                print(f"make_lerobot_smolvla_fixtures.py: not reproducible: {differ}", file=sys.stderr)
                return 1
            _say("a second run gave byte-identical files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
