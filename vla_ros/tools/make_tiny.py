"""`vla-ros make-tiny`: a random, untrained checkpoint in the real on-disk layout.

It exists so that tests, the demo and benchmarks run without downloads: the
directory looks exactly like a converted pi0 checkpoint (safetensors weights,
config.json, assets/<id>/norm_stats.json, a SentencePiece tokenizer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_ASSET_ID = "robot"
TOKENIZER_FILE = "tokenizer.model"


def make_norm_stats(dims: int, seed: int) -> dict:
    from vla_ros.observation.normalize import NormStats

    rng = np.random.default_rng(seed)
    stats = {}
    for key in ("state", "actions"):
        mean = rng.normal(0.0, 0.5, dims)
        std = rng.uniform(0.2, 1.0, dims)
        stats[key] = NormStats(mean=mean, std=std, q01=mean - 2.0 * std, q99=mean + 2.0 * std)
    return stats


def make_tiny_checkpoint(
    out: str | Path, config: str = "pi0-tiny", seed: int = 0, dims: int = 14, asset_id: str = DEFAULT_ASSET_ID
) -> Path:
    """Write a random checkpoint of a named config (tiny or mid) to `out`; returns the directory."""
    import dataclasses

    from vla_ros.model.checkpoint import random_model, save_checkpoint
    from vla_ros.model.config import get_config
    from vla_ros.observation.normalize import save_norm_stats
    from vla_ros.observation.tokenizer import PromptTokenizer, train_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = train_tokenizer(out / TOKENIZER_FILE)
    cfg = get_config(config)
    cfg = dataclasses.replace(
        cfg, vocab_size=PromptTokenizer(tokenizer_path, cfg.max_token_len, cfg.variant).vocab_size
    )
    model = random_model(cfg, seed=seed)
    save_checkpoint(model, out, extra_config={"untrained": True, "seed": seed})
    save_norm_stats(out / "assets" / asset_id / "norm_stats.json", make_norm_stats(dims, seed))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="pi0-tiny", help="named config (pi0-tiny, pi05-tiny, pi0-mid, pi05-mid)"
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and statistics")
    parser.add_argument(
        "--dims", type=int, default=14, help="robot state/action dimensions of the norm stats"
    )


def run(args: argparse.Namespace) -> int:
    out = make_tiny_checkpoint(args.out, args.config, args.seed, args.dims)
    print(f"wrote untrained {args.config} checkpoint (seed {args.seed}, {args.dims} dims) to {out}")
    return 0
