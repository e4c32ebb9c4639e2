"""`vla-ros make-tiny`: a random, untrained checkpoint in the real on-disk layout.

It exists so that tests, the demo and benchmarks run without downloads: the
directory looks exactly like a converted pi0 checkpoint (safetensors weights,
config.json, assets/<id>/norm_stats.json, a SentencePiece tokenizer), or with
`--layout lerobot` like a LeRobot policy directory (LeRobot's config.json,
`model.`-prefixed weights, processor files with the statistics; the
tokenizer is still written beside it, which LeRobot's directories lack).

pi0-FAST configurations (`pi0fast-tiny`) keep PaliGemma's full vocabulary
(257,152 rows, so FAST ids land where the real model puts them) and also get a
FAST action tokenizer in `fast_tokenizer/` (processor_config.json and
tokenizer.json, the published format), trained with a BPE vocabulary of 256 on
synthetic smooth trajectories of the robot's dimensions.

An untrained pi0fast-tiny decodes garbage, which the policy reports as an
ActionDecodeError on every inference (the node holds). With `--fit-steps N`
(`fit_steps=N`) its language model is then teacher-forced for at most N steps
(`vla_ros.tools.fit_tiny`) so that greedy decoding writes the FAST tokens of
one fixed smooth chunk for any observation: such a checkpoint is "fitted to
one chunk", a fixture for tests and demos of the decode path, not a trained
policy. It stays marked untrained; config.json records the chunk
(`"fit_target"`, normalized, (horizon, dims)) and how the fit went (`"fit"`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import shutil

import numpy as np

DEFAULT_ASSET_ID = "robot"
TOKENIZER_FILE = "tokenizer.model"
LAYOUTS = ("openpi", "lerobot")
FAST_TOKENIZER_DIR = "fast_tokenizer"
TINY_FAST_VOCAB = 256
# Text the stand-in tokenizer must spell with pieces of its own: what pi0-FAST writes around its actions.
FAST_TEXT = ("Action: |", "Action: ", "|", "Task: pick up the cube, State: 12 200 7;\n")


def smooth_trajectories(count: int, horizon: int, dims: int, seed: int) -> np.ndarray:
    """`count` normalized chunks (horizon, dims): a few low-frequency sines per joint, within +-0.8."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    chunks = np.zeros((count, horizon, dims))
    for _ in range(3):
        amp = rng.uniform(0.0, 0.25, (count, 1, dims))
        freq = rng.uniform(0.2, 2.0, (count, 1, dims))
        phase = rng.uniform(0.0, 2 * np.pi, (count, 1, dims))
        chunks += amp * np.sin(2 * np.pi * freq * t + phase)
    return np.clip(chunks + rng.uniform(-0.05, 0.05, (count, 1, dims)), -0.8, 0.8)


def make_fast_tokenizer(out: Path, horizon: int, dims: int, seed: int, vocab_size: int = TINY_FAST_VOCAB):
    """Train and write the tiny FAST tokenizer (the real file formats) to `out`."""
    from vla_ros.model.fast_tokenizer import FastActionTokenizer

    chunks = smooth_trajectories(256, horizon, dims, seed)
    return FastActionTokenizer.train(chunks, vocab_size=vocab_size, directory=str(out))


# SmolVLM2's tokenizer: a byte-level BPE (tokenizer.json) with these special tokens (the stand-in LeRobot's
# fixture script writes: test/fixtures/lerobot_0_6_1/smolvla/smolvlm).
SMOLVLA_TOKENIZER_VOCAB = 512
SMOLVLA_BASE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SMOLVLA_IMAGE_SPECIALS = ("<global-img>", "<fake_token_around_image>", "<image>", "<end_of_utterance>")
SMOLVLA_TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<|im_start|>",
    "eos_token": "<end_of_utterance>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
    "model_max_length": 8192,
    "truncation_side": "left",
    "clean_up_tokenization_spaces": False,
}


def train_smolvla_tokenizer(folder: Path, vocab_size: int = SMOLVLA_TOKENIZER_VOCAB) -> Path:
    """A small byte-level BPE tokenizer.json (SmolLM2's form, SmolVLM's special tokens) in `folder`.

    Trained on the stand-in corpus of the pi0 tokenizer (robot instructions,
    digits); `<|endoftext|>` 0, `<|im_start|>` 1, `<|im_end|>` 2 (the pad), the
    image tokens last; no post-processor, so no BOS (as SmolVLM2's). Writes
    tokenizer.json and tokenizer_config.json (truncation on the left, as
    SmolVLM2's); returns the tokenizer.json path.
    """
    import json

    from tokenizers import AddedToken, decoders, models, pre_tokenizers, Tokenizer, trainers

    from vla_ros.observation.tokenizer import _training_sentences

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SMOLVLA_IMAGE_SPECIALS),
        special_tokens=list(SMOLVLA_BASE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_training_sentences(("\n",))), trainer)
    images = [AddedToken(t, special=True, normalized=False) for t in SMOLVLA_IMAGE_SPECIALS]
    tokenizer.add_special_tokens(images)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    path.write_text(tokenizer.to_str(pretty=True) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(SMOLVLA_TOKENIZER_CONFIG, indent=2) + "\n")
    return path


# LeRobot 0.6.1's SmolVLAConfig fields as `save_pretrained` writes them (after the features), in its order.
_SMOLVLA_CONFIG = {
    "device": "cpu", "use_amp": False, "use_peft": False, "push_to_hub": True, "repo_id": None,
    "private": None, "tags": None, "license": None, "pretrained_path": None, "pretrained_revision": None,
    "chunk_size": 50, "n_action_steps": 50,
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "max_state_dim": 32, "max_action_dim": 32, "resize_imgs_with_padding": [512, 512], "empty_cameras": 0,
    "adapt_to_pi_aloha": False, "use_delta_joint_actions_aloha": False, "tokenizer_max_length": 48,
    "num_steps": 10, "use_cache": True, "freeze_vision_encoder": True, "train_expert_only": True,
    "train_state_proj": True, "optimizer_lr": 0.0001, "optimizer_betas": [0.9, 0.95], "optimizer_eps": 1e-08,
    "optimizer_weight_decay": 1e-10, "optimizer_grad_clip_norm": 10, "scheduler_warmup_steps": 1000,
    "scheduler_decay_steps": 30000, "scheduler_decay_lr": 2.5e-06,
    "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct", "load_vlm_weights": False,
    "add_image_special_tokens": False, "attention_mode": "cross_attn", "prefix_length": -1,
    "pad_language_to": "longest", "num_expert_layers": -1, "num_vlm_layers": 16,
    "self_attn_every_n_layers": 2,
    "expert_width_multiplier": 0.75, "min_period": 0.004, "max_period": 4.0, "rtc_config": None,
    "compile_model": False, "compile_mode": "max-autotune",
}
SMOLVLM_FOLDER = "smolvlm"


def _smolvlm_config(cfg, tokenizer_vocab: int) -> dict:
    """The VLM's config.json (SmolVLMConfig's layout): the head counts LeRobot's config.json lacks."""
    t, v = cfg.text, cfg.vision
    return {
        "image_token_id": tokenizer_vocab - 2,
        "model_type": "smolvlm",
        "pad_token_id": 2,
        "scale_factor": cfg.scale_factor,
        "text_config": {
            "attention_bias": False, "head_dim": t.head_dim, "hidden_act": "silu", "hidden_size": t.width,
            "intermediate_size": t.mlp_dim, "mlp_bias": False, "model_type": "llama",
            "num_attention_heads": t.num_heads, "num_hidden_layers": t.depth,
            "num_key_value_heads": t.num_kv_heads, "pad_token_id": 2, "rms_norm_eps": t.rms_eps,
            "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
            "tie_word_embeddings": False, "vocab_size": cfg.vocab_size,
        },
        "tie_word_embeddings": False,
        "vision_config": {
            "hidden_act": "gelu_pytorch_tanh", "hidden_size": v.width, "image_size": v.image_size,
            "intermediate_size": v.mlp_dim, "layer_norm_eps": 1e-06, "model_type": "smolvlm_vision",
            "num_attention_heads": v.num_heads, "num_channels": 3, "num_hidden_layers": v.depth,
            "patch_size": v.patch_size,
        },
    }


def save_smolvla_layout(model, out: Path, stats: dict, tags=()) -> Path:
    """A SmolVLA model as a LeRobot 0.6.1 policy directory, with the VLM's files in `smolvlm/`.

    config.json (SmolVLAConfig), model.safetensors (`model.` + the keys,
    the VLM's unused lm_head as LeRobot stores it), the processor files with
    MEAN_STD statistics, and `smolvlm/` (config.json, a small trained
    tokenizer.json, tokenizer_config.json), which stands in for the Hub repo
    that LeRobot names and vla_ros looks for beside the checkpoint.
    """
    import json

    from safetensors.torch import save_file
    import torch

    from vla_ros.model.lerobot_layout import _lerobot_stats
    from vla_ros.types import CAMERA_KEYS

    cfg = model.cfg
    out = Path(out)
    tokenizer = train_smolvla_tokenizer(out / SMOLVLM_FOLDER)
    (out / SMOLVLM_FOLDER / "config.json").write_text(
        json.dumps(_smolvlm_config(cfg, SMOLVLA_TOKENIZER_VOCAB), indent=2) + "\n"
    )
    weights = {"model." + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    embed = "model.vlm_with_expert.vlm.model.text_model.embed_tokens.weight"
    weights["model.vlm_with_expert.vlm.lm_head.weight"] = weights[embed].clone()
    save_file(weights, str(out / "model.safetensors"))
    dims = stats["state"].dim
    size = cfg.vision.image_size
    features = {f"observation.images.{name}": {"type": "VISUAL", "shape": [3, size, size]}
                for name in CAMERA_KEYS[: cfg.num_cameras]}
    features["observation.state"] = {"type": "STATE", "shape": [dims]}
    outputs = {"action": {"type": "ACTION", "shape": [stats["actions"].dim]}}
    config = {"type": "smolvla", "n_obs_steps": 1, "input_features": features, "output_features": outputs,
              **_SMOLVLA_CONFIG}
    config.update(tags=list(tags) or None, chunk_size=cfg.action_horizon, n_action_steps=cfg.action_horizon,
                  max_state_dim=cfg.action_dim, max_action_dim=cfg.action_dim,
                  resize_imgs_with_padding=[size, size],
                  tokenizer_max_length=cfg.max_token_len, num_vlm_layers=cfg.text.depth,
                  self_attn_every_n_layers=cfg.self_attn_every_n_layers, min_period=cfg.min_period,
                  max_period=cfg.max_period)
    (out / "config.json").write_text(json.dumps(config, indent=4))
    norm_map = config["normalization_mapping"]
    tensors = {}
    for feature, key in (("observation.state", "state"), ("action", "actions")):
        for stat, value in _lerobot_stats(stats[key]).items():
            tensors[f"{feature}.{stat}"] = torch.from_numpy(np.ascontiguousarray(value))
    device = {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}
    pre = [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "smolvla_new_line_processor", "config": {}},
        {"registry_name": "tokenizer_processor", "config": {
            "max_length": cfg.max_token_len, "task_key": "task", "padding_side": "right",
            "padding": "longest",
            "truncation": True, "tokenizer_name": config["vlm_model_name"]}},
        device,
        {"registry_name": "normalizer_processor",
         "config": {"eps": 1e-08, "features": {**features, **outputs}, "norm_map": norm_map}},
    ]
    post = [
        {"registry_name": "unnormalizer_processor",
         "config": {"eps": 1e-08, "features": outputs, "norm_map": norm_map}},
        dict(device),
    ]
    for name, steps in (("policy_preprocessor", pre), ("policy_postprocessor", post)):
        for index, step in enumerate(steps):
            if step["registry_name"].endswith("normalizer_processor"):
                step["state_file"] = f"{name}_step_{index}_{step['registry_name']}.safetensors"
                save_file(dict(sorted(tensors.items())), str(out / step["state_file"]))
        (out / f"{name}.json").write_text(json.dumps({"name": name, "steps": steps}, indent=2))
    assert tokenizer.is_file()
    return out


def make_norm_stats(dims: int, seed: int) -> dict:
    from vla_ros.observation.normalize import NormStats

    rng = np.random.default_rng(seed)
    stats = {}
    for key in ("state", "actions"):
        mean = rng.normal(0.0, 0.5, dims)
        std = rng.uniform(0.2, 1.0, dims)
        stats[key] = NormStats(mean=mean, std=std, q01=mean - 2.0 * std, q99=mean + 2.0 * std)
    return stats


def _prepare_out(out: Path, force: bool) -> None:
    """Refuse a non-empty `out` (a file, or a directory with files) unless `force` replaces a checkpoint."""
    from vla_ros.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} exists and is not a directory; choose another path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise ConfigError(
            "--out", f"{out} exists and is not empty; choose another path, or pass --force to replace it"
        )
    if not ((out / "config.json").is_file() or (out / "model.safetensors").is_file()):
        raise ConfigError(
            "--out", f"{out} is not empty and holds no checkpoint; refusing to delete it even with --force"
        )
    shutil.rmtree(out)


def make_tiny_checkpoint(
    out: str | Path,
    config: str = "pi0-tiny",
    seed: int = 0,
    dims: int = 14,
    asset_id: str = DEFAULT_ASSET_ID,
    force: bool = False,
    layout: str | None = None,
    fit_steps: int = 0,
) -> Path:
    """Write a random checkpoint of a named config (tiny or mid) to `out`; returns the directory.

    `out` must not exist or be empty; `force` replaces a previous checkpoint
    there (a directory with config.json or model.safetensors), nothing else.
    The files are 0644, the directories 0755. `layout` "lerobot" writes the
    same weights and statistics as a LeRobot policy directory
    (`vla_ros.model.lerobot_layout.save_lerobot_layout`; untrained is marked
    by a config.json tag, since LeRobot refuses unknown keys). None: "openpi",
    or "lerobot" for SmolVLA configs (`smolvla-tiny`), which are written in
    LeRobot's layout only (`save_smolvla_layout`).

    `fit_steps` > 0 (pi0-FAST configs only) fits the random model to one chunk
    (at most that many steps, see the module docstring): still untrained, but
    it decodes `config.json["fit_target"]` (normalized actions) for any
    observation. `config.json["fit"]["converged"]` says whether the fit got
    there within the steps.
    """
    import dataclasses

    from vla_ros.model.checkpoint import random_model, save_checkpoint
    from vla_ros.model.config import get_runnable_config
    from vla_ros.observation.normalize import save_norm_stats
    from vla_ros.observation.tokenizer import PromptTokenizer, train_tokenizer
    from vla_ros.tools.file_modes import make_readable

    from vla_ros.errors import ConfigError

    if layout is not None and layout not in LAYOUTS:
        raise ConfigError("--layout", f"got {layout!r}; expected one of {list(LAYOUTS)}")
    out = Path(out)
    if isinstance(fit_steps, bool) or not isinstance(fit_steps, int) or fit_steps < 0:
        raise ConfigError("--fit-steps", f"expected an integer >= 0, got {fit_steps!r}")
    if fit_steps and not get_runnable_config(config).is_fast:
        raise ConfigError(
            "--fit-steps", f"only pi0-FAST configs (pi0fast-tiny) decode a chunk to fit; {config} does not"
        )
    _prepare_out(out, force)
    cfg = get_runnable_config(config)  # an unknown name fails before anything is written
    if cfg.variant == "smolvla":
        from vla_ros.policy import UNTRAINED_TAG

        if layout == "openpi":
            raise ConfigError("--layout", "SmolVLA checkpoints are written in the LeRobot layout only")
        out.mkdir(parents=True, exist_ok=True)
        stats = make_norm_stats(dims, seed)
        save_smolvla_layout(random_model(cfg, seed=seed), out, stats, tags=[UNTRAINED_TAG])
        return make_readable(out)
    layout = layout or "openpi"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.is_fast:
        if layout == "lerobot":
            raise ConfigError("--layout", "pi0-FAST checkpoints are written in the openpi layout only")
        train_tokenizer(out / TOKENIZER_FILE, extra_text=FAST_TEXT)
        make_fast_tokenizer(out / FAST_TOKENIZER_DIR, cfg.action_horizon, dims, seed)
    else:
        tokenizer_path = train_tokenizer(out / TOKENIZER_FILE)
        cfg = dataclasses.replace(
            cfg, vocab_size=PromptTokenizer(tokenizer_path, cfg.max_token_len, cfg.variant).vocab_size
        )
    model = random_model(cfg, seed=seed)
    if layout == "lerobot":
        from vla_ros.model.lerobot_layout import save_lerobot_layout
        from vla_ros.policy import UNTRAINED_TAG

        save_lerobot_layout(model, out, make_norm_stats(dims, seed), tags=[UNTRAINED_TAG])
        return make_readable(out)
    extra: dict = {"untrained": True, "seed": seed}
    if fit_steps:
        from vla_ros.tools.fit_tiny import fit_checkpoint_model

        target, report = fit_checkpoint_model(model, out, dims, seed, fit_steps)
        extra["fit"] = {"note": "fitted to one chunk, not a trained policy", **report.to_dict()}
        extra["fit_target"] = target.tolist()
    save_checkpoint(model, out, extra_config=extra)
    save_norm_stats(out / "assets" / asset_id / "norm_stats.json", make_norm_stats(dims, seed))
    return make_readable(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="pi0-tiny",
        help="named config (pi0-tiny, pi05-tiny, pi0fast-tiny, pi0-mid, pi05-mid, smolvla-tiny)"
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and statistics")
    parser.add_argument(
        "--dims", type=int, default=14, help="robot state/action dimensions of the norm stats"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace a previous checkpoint in --out (nothing else)"
    )
    parser.add_argument(
        "--layout",
        default=None,
        choices=LAYOUTS,
        help="on-disk layout: openpi (vla_ros / openpi) or lerobot (a LeRobot policy directory); default "
        "openpi, lerobot for SmolVLA (smolvla-tiny: LeRobot's layout only)",
    )
    parser.add_argument(
        "--fit-steps",
        type=int,
        default=0,
        metavar="N",
        help="pi0-FAST only: teacher-force the random model for at most N steps (it stops once it decodes "
        "the chunk, typically after 50 to 100: seconds on a CPU) so that it writes one fixed smooth chunk "
        "(config.json fit_target) for any observation: a fixture fitted to one chunk, still untrained, "
        "not a policy (default 0: random weights, which decode garbage)",
    )


def _written_layout(out: Path) -> str:
    from vla_ros.model.lerobot_layout import read_lerobot_config

    return "lerobot" if read_lerobot_config(out) is not None else "openpi"


def run(args: argparse.Namespace) -> int:
    from vla_ros.errors import ConfigError

    if not 0 < args.dims <= 32:
        raise ConfigError("--dims", f"expected 1..32 (the model's width is 32), got {args.dims}")
    layout = getattr(args, "layout", None)
    fit_steps = getattr(args, "fit_steps", 0)
    out = make_tiny_checkpoint(
        args.out, args.config, args.seed, args.dims, force=args.force, layout=layout, fit_steps=fit_steps
    )
    what = "untrained"
    if fit_steps:
        import json

        fit = json.loads((out / "config.json").read_text())["fit"]
        loss = "nan" if fit["loss"] is None else f"{fit['loss']:.3f}"
        what = (
            f"untrained (fitted to one chunk in {fit['steps']} steps, {fit['seconds']:.1f} s, loss {loss}"
            f"{'' if fit['converged'] else ', NOT converged: raise --fit-steps'})"
        )
    print(
        f"wrote {what} {args.config} checkpoint ({_written_layout(out)} layout, seed {args.seed}, "
        f"{args.dims} dims) to {out}"
    )
    return 0 if not fit_steps or fit["converged"] else 1
