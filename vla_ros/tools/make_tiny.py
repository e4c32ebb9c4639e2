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
    layout: str = "openpi",
    fit_steps: int = 0,
) -> Path:
    """Write a random checkpoint of a named config (tiny or mid) to `out`; returns the directory.

    `out` must not exist or be empty; `force` replaces a previous checkpoint
    there (a directory with config.json or model.safetensors), nothing else.
    The files are 0644, the directories 0755. `layout` "lerobot" writes the
    same weights and statistics as a LeRobot policy directory
    (`vla_ros.model.lerobot_layout.save_lerobot_layout`; untrained is marked
    by a config.json tag, since LeRobot refuses unknown keys).

    `fit_steps` > 0 (pi0-FAST configs only) fits the random model to one chunk
    (at most that many steps, see the module docstring): still untrained, but
    it decodes `config.json["fit_target"]` (normalized actions) for any
    observation. `config.json["fit"]["converged"]` says whether the fit got
    there within the steps.
    """
    import dataclasses

    from vla_ros.model.checkpoint import random_model, save_checkpoint
    from vla_ros.model.config import get_config
    from vla_ros.observation.normalize import save_norm_stats
    from vla_ros.observation.tokenizer import PromptTokenizer, train_tokenizer
    from vla_ros.tools.file_modes import make_readable

    from vla_ros.errors import ConfigError

    if layout not in LAYOUTS:
        raise ConfigError("--layout", f"got {layout!r}; expected one of {list(LAYOUTS)}")
    out = Path(out)
    if isinstance(fit_steps, bool) or not isinstance(fit_steps, int) or fit_steps < 0:
        raise ConfigError("--fit-steps", f"expected an integer >= 0, got {fit_steps!r}")
    if fit_steps and not get_config(config).is_fast:
        raise ConfigError(
            "--fit-steps", f"only pi0-FAST configs (pi0fast-tiny) decode a chunk to fit; {config} does not"
        )
    _prepare_out(out, force)
    cfg = get_config(config)  # an unknown name fails before anything is written
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
        help="named config (pi0-tiny, pi05-tiny, pi0fast-tiny, pi0-mid, pi05-mid)"
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
        default="openpi",
        choices=LAYOUTS,
        help="on-disk layout: openpi (vla_ros / openpi) or lerobot (a LeRobot policy directory)",
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


def run(args: argparse.Namespace) -> int:
    from vla_ros.errors import ConfigError

    if not 0 < args.dims <= 32:
        raise ConfigError("--dims", f"expected 1..32 (the model's width is 32), got {args.dims}")
    layout = getattr(args, "layout", "openpi")
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
        f"wrote {what} {args.config} checkpoint ({layout} layout, seed {args.seed}, "
        f"{args.dims} dims) to {out}"
    )
    return 0 if not fit_steps or fit["converged"] else 1
