"""`vla-ros infer`: one inference on an observation stored in an .npz file.

OBS.npz holds base_0_rgb / left_wrist_0_rgb / right_wrist_0_rgb (uint8 HxWx3;
at least one; an absent key is a missing camera), state (float32 [D], finite)
and either prompt (str) or tokenized_prompt + tokenized_prompt_mask (used
as-is; for pi0.5 they already carry the state). Any other key is an error
(OBS_SCHEMA, shown by `vla-ros infer --help`).

Decode models (pi0-FAST) write their chunk as tokens: `--max-decoding-steps`
caps them, `--temperature` samples instead of the greedy default, and
`--tokens-out` saves the generated ids (stop token included). Tokens that do
not decode to an action chunk (ActionDecodeError) print one line and exit 1,
after `--tokens-out` is written, so that what the model wrote can be looked at;
no actions are written then. `--noise` and `--steps` belong to flow-matching
models (pi0, pi0.5) and are refused for a decode model, as the decode-only
flags are for a flow-matching one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vla_ros.errors import ConfigError, ObservationError
from vla_ros.types import CAMERA_KEYS, RawObservation

# The keys of an observation file and what each holds (shown by `vla-ros infer --help`).
OBS_KEYS: dict[str, str] = {
    **{key: "uint8 RGB [H, W, 3], any size; at least one camera (absent = masked)" for key in CAMERA_KEYS},
    "state": "float32 [D], finite joint positions; D = the norm stats' state dims",
    "prompt": "str, the instruction; or the two keys below",
    "tokenized_prompt": "int [max_token_len], used as-is (pi0.5: carries the state)",
    "tokenized_prompt_mask": "bool [max_token_len], True for real tokens",
}
OBS_SCHEMA = "observation file (--obs, numpy .npz; np.savez(path, key=array, ...)):\n" + "\n".join(
    f"  {key:<22} {meaning}" for key, meaning in OBS_KEYS.items()
)


def load_observation(path: Path) -> tuple[RawObservation, tuple[np.ndarray, np.ndarray] | None]:
    """The observation (and given prompt tokens) in an .npz file laid out as OBS_SCHEMA says.

    Raises:
        ObservationError: a missing file or key, an unknown key, no camera, a
            state that is not a finite vector; each names the file.
    """
    from vla_ros.policy import check_state

    if not path.is_file():
        raise ObservationError(f"observation file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ObservationError(f"{path} is not a numpy .npz file: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ObservationError(f"{path} is a single array, not an .npz file of named arrays (np.savez)")
    with data:
        unknown = sorted(set(data.keys()) - set(OBS_KEYS))
        if unknown:
            raise ObservationError(
                f"{path} has unknown key(s) {unknown}; expected keys: {list(OBS_KEYS)} "
                "(see vla-ros infer --help)"
            )
        if "state" not in data:
            raise ObservationError(f"{path} has no 'state' array (keys: {sorted(data.keys())})")
        tokens = None
        if "tokenized_prompt" in data:
            if "tokenized_prompt_mask" not in data:
                raise ObservationError(f"{path} has tokenized_prompt but no tokenized_prompt_mask")
            tokens = (data["tokenized_prompt"], data["tokenized_prompt_mask"].astype(bool))
            prompt = ""
        elif "tokenized_prompt_mask" in data:
            raise ObservationError(f"{path} has tokenized_prompt_mask but no tokenized_prompt")
        elif "prompt" in data:
            prompt = str(data["prompt"])
        else:
            raise ObservationError(f"{path} needs 'prompt' or 'tokenized_prompt' + 'tokenized_prompt_mask'")
        images = {key: data[key] for key in CAMERA_KEYS if key in data}
        if not images:
            raise ObservationError(
                f"{path} has no camera image; expected at least one of {list(CAMERA_KEYS)} (uint8 [H, W, 3])"
            )
        try:
            state = check_state(data["state"])
        except ObservationError as exc:
            raise ObservationError(f"{path}: {exc}") from None
        return RawObservation(images=images, state=state, prompt=prompt), tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = OBS_SCHEMA
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--obs", required=True, type=Path, help="observation .npz (keys below)")
    parser.add_argument(
        "--noise",
        type=Path,
        help="initial noise .npy of shape [action_horizon, 32] ([50, 32] for pi0); flow-matching models "
        "only: pi0-FAST decodes tokens, takes no noise and refuses it",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Euler steps (default: the checkpoint's; LeRobot's or 10); flow-matching models only",
    )
    parser.add_argument(
        "--max-decoding-steps",
        type=int,
        default=None,
        metavar="N",
        help="decode models (pi0-FAST): most tokens generated (default: the checkpoint's, 256)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="decode models: sampling temperature (default 0: greedy); seeded by --seed",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="decode models: seed of the sampler (default 0: reruns repeat)"
    )
    parser.add_argument(
        "--tokens-out",
        type=Path,
        metavar="TOKENS.npy",
        help="decode models: write the generated token ids here (int64, stop token included), also "
        "when they do not decode to actions",
    )
    parser.add_argument("--out", type=Path, help="write the actions [50, D] here (.npy)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    parser.add_argument(
        "--engine",
        default="reference",
        help="prefix engine: reference (the fp32 PyTorch model, default), auto, pytorch or onnx",
    )
    parser.add_argument("--suffix", default="auto", help="suffix engine: auto, eager, compiled or cuda_graph")
    parser.add_argument(
        "--action-dims",
        type=int,
        default=None,
        help="action dims to output (default: one per state entry; for datasets whose actions "
        "have fewer dims than the state)",
    )
    add_convention_arguments(parser)


def add_convention_arguments(parser: argparse.ArgumentParser) -> None:
    """--tokenizer, --image-resize, --normalization, --prompt-style: the conventions in PolicyOptions."""
    from vla_ros.policy import IMAGE_RESIZES, NORMALIZATIONS, PROMPT_STYLE_CHOICES

    parser.add_argument(
        "--tokenizer", default="", help="tokenizer file or directory (default: beside the checkpoint)"
    )
    parser.add_argument(
        "--image-resize",
        default="auto",
        choices=IMAGE_RESIZES,
        help="resize-with-pad convention (auto: the checkpoint's, lerobot for LeRobot directories)",
    )
    parser.add_argument(
        "--normalization",
        default="auto",
        choices=NORMALIZATIONS,
        help="state/action normalization formulas (auto: the checkpoint's)",
    )
    parser.add_argument(
        "--prompt-style",
        default="auto",
        choices=PROMPT_STYLE_CHOICES,
        help="pi0 prompt convention (auto: the checkpoint's)",
    )


def policy_options(args: argparse.Namespace, **overrides):
    """PolicyOptions from the engine flags `infer` and `bench` share (--device, --precision, ...)."""
    from vla_ros.policy import PolicyOptions

    conventions = {
        name: getattr(args, name)
        for name in ("image_resize", "normalization", "prompt_style")
        if getattr(args, name, None) is not None
    }
    if getattr(args, "tokenizer", None):
        conventions["tokenizer"] = args.tokenizer
    values = dict(
        device=args.device,
        precision=args.precision,
        engine=args.engine,
        suffix=args.suffix,
        num_steps=args.steps,  # None: the checkpoint's, resolved by Policy.from_checkpoint
        seed=0,
    )
    return PolicyOptions(**{**values, **conventions, **overrides})


def _npy_path(path: Path) -> Path:
    """Where np.save writes `path` (it appends .npy to other names)."""
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def _save(path: Path, array: np.ndarray) -> Path:
    from vla_ros.tools.file_modes import make_readable

    path = _npy_path(path)
    np.save(path, array)
    make_readable(path)
    return path


def check_model_flags(args: argparse.Namespace, variant: str) -> None:
    """Refuse, in one line, flags the checkpoint's kind of model has no use for (before the slow load)."""
    if variant == "pi0fast":
        if args.noise:
            raise ConfigError(
                "--noise", "pi0-FAST decodes its actions as tokens and takes no noise; drop --noise "
                "(--temperature samples)"
            )
        if args.steps is not None:
            raise ConfigError(
                "--steps", "pi0-FAST decodes its actions as tokens and has no Euler steps; "
                "use --max-decoding-steps"
            )
        return
    for flag, given in (
        ("--max-decoding-steps", args.max_decoding_steps is not None),
        ("--temperature", args.temperature != 0.0),
        ("--tokens-out", args.tokens_out is not None),
    ):
        if given:
            raise ConfigError(
                flag, f"{args.checkpoint} is a flow-matching model ({variant}); it generates no tokens"
            )


class _LastDecode:
    """The policy's engine, keeping its last DecodeResult: the tokens of an inference that failed."""

    def __init__(self, engine):
        self._engine = engine
        self.result = None

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def decode(self, *args, **kwargs):
        self.result = self._engine.decode(*args, **kwargs)
        return self.result


def run(args: argparse.Namespace) -> int:
    import math
    import sys

    from vla_ros.errors import ActionDecodeError, VlaRosError
    from vla_ros.policy import check_fits, Policy, read_spec

    obs, tokens = load_observation(args.obs)
    if args.noise and not args.noise.is_file():
        raise ObservationError(f"noise file {args.noise} does not exist")
    if args.steps is not None and args.steps < 1:
        raise ConfigError("--steps", f"expected at least 1 Euler step, got {args.steps}")
    if args.max_decoding_steps is not None and args.max_decoding_steps < 1:
        raise ConfigError("--max-decoding-steps", f"expected at least 1 token, got {args.max_decoding_steps}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ConfigError("--temperature", f"expected a number >= 0 (0: greedy), got {args.temperature}")
    if args.action_dims is not None and not 0 < args.action_dims <= 32:
        raise ConfigError("--action-dims", f"expected 1..32, got {args.action_dims}")
    options = policy_options(
        args,
        action_dims=args.action_dims,
        max_decoding_steps=args.max_decoding_steps,
        temperature=args.temperature,
        seed=args.seed,
    )
    # Before the (slow) load: the observation must fit the checkpoint.
    spec = read_spec(args.checkpoint, options)
    check_model_flags(args, spec.variant)
    noise = np.load(args.noise, allow_pickle=False) if args.noise else None
    dims = len(obs.state)
    warnings = check_fits(
        spec,
        dims,
        options.action_dims,
        joints_from="--obs",
        joints_label=f"the state in {args.obs} has {dims} entries",
        action_dims_from="--action-dims",
        checkpoint_from="--checkpoint",
        asset_id_from=None,
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    policy = Policy.from_checkpoint(args.checkpoint, options)
    decodes = policy.engine = _LastDecode(policy.engine)
    try:
        chunk = policy.infer(obs, noise=noise, tokens=tokens)
    except VlaRosError as exc:
        # What the model generated is worth a look whatever went wrong after it.
        written = ""
        result = decodes.result
        if args.tokens_out and result is not None:
            ids = result.ids if result.stop is None else np.append(result.ids, result.stop)
            path = _save(args.tokens_out, ids.astype(np.int64))
            written = f"wrote the {len(ids)} generated token ids to {path}"
        if not isinstance(exc, ActionDecodeError):
            if written:
                print(written)
            raise  # vla-ros prints it in one line, exit 2
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        also = f"; {written}" if written else ""
        print(f"vla-ros infer: inference failed: {type(exc).__name__}: {message}{also}", file=sys.stderr)
        return 1
    actions = chunk.actions
    if args.out:
        out = _save(args.out, actions)
    if args.tokens_out:
        tokens_path = _save(args.tokens_out, chunk.tokens.astype(np.int64))
    timing = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in chunk.timings.items())
    print(f"actions {actions.shape} range [{actions.min():.4f}, {actions.max():.4f}]  ({timing})")
    if chunk.tokens is not None:
        print(f"generated {len(chunk.tokens)} tokens (stop token included)")
    if args.out:
        print(f"wrote {out}")
    if args.tokens_out:
        print(f"wrote {tokens_path}")
    return 0
