"""`vla-ros infer`: one inference on an observation stored in an .npz file.

OBS.npz holds base_0_rgb / left_wrist_0_rgb / right_wrist_0_rgb (uint8 HxWx3;
an absent key is a missing camera), state (float32 [D]) and either prompt (str)
or tokenized_prompt + tokenized_prompt_mask (used as-is; for pi0.5 they already
carry the state).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vla_ros.errors import ObservationError
from vla_ros.types import CAMERA_KEYS, RawObservation


def load_observation(path: Path) -> tuple[RawObservation, tuple[np.ndarray, np.ndarray] | None]:
    if not path.is_file():
        raise ObservationError(f"observation file {path} does not exist")
    with np.load(path, allow_pickle=False) as data:
        if "state" not in data:
            raise ObservationError(f"{path} has no 'state' array (keys: {sorted(data.keys())})")
        images = {key: data[key] for key in CAMERA_KEYS if key in data}
        tokens = None
        if "tokenized_prompt" in data:
            if "tokenized_prompt_mask" not in data:
                raise ObservationError(f"{path} has tokenized_prompt but no tokenized_prompt_mask")
            tokens = (data["tokenized_prompt"], data["tokenized_prompt_mask"].astype(bool))
            prompt = ""
        elif "prompt" in data:
            prompt = str(data["prompt"])
        else:
            raise ObservationError(f"{path} needs 'prompt' or 'tokenized_prompt' + 'tokenized_prompt_mask'")
        return RawObservation(images=images, state=data["state"].astype(np.float32), prompt=prompt), tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--obs", required=True, type=Path, help="observation .npz")
    parser.add_argument("--noise", type=Path, help="initial noise .npy of shape [50, 32]")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps")
    parser.add_argument("--out", type=Path, help="write the actions [50, D] here (.npy)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    parser.add_argument(
        "--engine",
        default="reference",
        help="prefix engine: reference (the fp32 PyTorch model, default), auto, pytorch or onnx",
    )
    parser.add_argument("--suffix", default="auto", help="suffix engine: auto, eager, compiled or cuda_graph")


def policy_options(args: argparse.Namespace, **overrides):
    """PolicyOptions from the engine flags `infer` and `bench` share (--device, --precision, ...)."""
    from vla_ros.policy import PolicyOptions

    return PolicyOptions(
        device=args.device,
        precision=args.precision,
        engine=args.engine,
        suffix=args.suffix,
        num_steps=args.steps,
        seed=0,
        **overrides,
    )


def run(args: argparse.Namespace) -> int:
    from vla_ros.policy import Policy

    obs, tokens = load_observation(args.obs)
    if args.noise and not args.noise.is_file():
        raise ObservationError(f"noise file {args.noise} does not exist")
    noise = np.load(args.noise, allow_pickle=False) if args.noise else None
    policy = Policy.from_checkpoint(args.checkpoint, policy_options(args))
    chunk = policy.infer(obs, noise=noise, tokens=tokens)
    actions = chunk.actions
    if args.out:
        np.save(args.out, actions)
    timing = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in chunk.timings.items())
    print(f"actions {actions.shape} range [{actions.min():.4f}, {actions.max():.4f}]  ({timing})")
    if args.out:
        print(f"wrote {args.out}")
    return 0
