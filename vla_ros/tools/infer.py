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

Real-Time Chunking (docs/reference/lerobot-rtc.md) can be checked offline: `--rtc-prev PREV.npy`
is the previous chunk in robot units, [K, D] with D the robot's action dims,
already shifted so that row 0 is the action for this observation's time;
`--rtc-delay D` (default 0) is how many of the new chunk's actions the robot
still takes from it, and `--rtc-horizon`, `--rtc-schedule`,
`--rtc-max-guidance`, `--rtc-mode`, `--rtc-jacobian` default to LeRobot's
(10, linear, 10.0, guided, identity). The chunk is then guided toward PREV
(`Policy.infer(..., guidance=ChunkGuidance(...))`); `--rtc-max-guidance 0`
gives the unguided chunk exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vla_ros.errors import ConfigError, ObservationError
from vla_ros.types import CAMERA_KEYS, RawObservation, RTC_JACOBIANS, RTC_MODES, RTC_SCHEDULES

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
    add_rtc_arguments(parser)


# The RTC flags that only make sense with --rtc-prev, and the RTCSettings field each sets.
RTC_FLAGS: dict[str, str] = {
    "--rtc-delay": "delay",
    "--rtc-horizon": "execution_horizon",
    "--rtc-schedule": "schedule",
    "--rtc-max-guidance": "max_guidance_weight",
    "--rtc-mode": "mode",
    "--rtc-jacobian": "jacobian",
}


def add_rtc_arguments(parser: argparse.ArgumentParser) -> None:
    """--rtc-prev and the guidance settings (flow-matching models; defaults: LeRobot 0.6.1's)."""
    from vla_ros.types import RTCSettings

    defaults = RTCSettings()
    group = parser.add_argument_group(
        "Real-Time Chunking (flow-matching models; every flag below needs --rtc-prev)"
    )
    group.add_argument(
        "--rtc-prev",
        type=Path,
        metavar="PREV.npy",
        help="guide the chunk toward this previous chunk: float [K, D] in robot units (D = the robot's "
        "action dims), shifted so that row 0 is the action for this observation's time",
    )
    group.add_argument(
        "--rtc-delay", type=int, default=None, metavar="D",
        help="inference delay in actions: rows of the new chunk the robot still takes from PREV (default 0)",
    )
    group.add_argument(
        "--rtc-horizon", type=int, default=None, metavar="S",
        help=f"execution horizon: end of the guided rows (default {defaults.execution_horizon})",
    )
    group.add_argument(
        "--rtc-schedule", choices=RTC_SCHEDULES, default=None,
        help=f"soft mask between the delay and the horizon (default {defaults.schedule})",
    )
    group.add_argument(
        "--rtc-max-guidance", type=float, default=None, metavar="W",
        help=f"clip of the guidance weight, >= 0; 0 gives the unguided chunk "
        f"(default {defaults.max_guidance_weight:g})",
    )
    group.add_argument(
        "--rtc-mode", choices=RTC_MODES, default=None,
        help=f"guided: guidance at every Euler step; trained: the first D rows clamped to PREV "
        f"(training-time RTC checkpoints) (default {defaults.mode})",
    )
    group.add_argument(
        "--rtc-jacobian", choices=RTC_JACOBIANS, default=None,
        help=f"identity (LeRobot, no backward pass) or vjp (the paper; reference engine) "
        f"(default {defaults.jacobian})",
    )


def _rtc_given(args: argparse.Namespace) -> list[str]:
    """The RTC setting flags given on the command line (--rtc-prev aside)."""
    return [flag for flag in RTC_FLAGS if getattr(args, flag[2:].replace("-", "_"), None) is not None]


def load_previous_chunk(path: Path, action_dims: int, horizon: int) -> np.ndarray:
    """The --rtc-prev chunk as float32 [K, action_dims], 1 <= K <= horizon, finite (ConfigError naming it)."""

    def bad(problem: str) -> ConfigError:
        return ConfigError("--rtc-prev", f"{path}: {problem}")

    if not path.is_file():
        raise bad("no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        detail = " ".join(str(exc).split())
        raise bad(f"not a numpy .npy array ({detail})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        data.close()
        raise bad("an .npz archive; save the previous chunk alone with np.save(path, array)")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise bad(f"dtype {data.dtype}; expected numbers (float32 [K, {action_dims}])")
    if data.ndim != 2:
        raise bad(f"shape {data.shape}; expected a 2-D chunk [K, {action_dims}] (rows = actions)")
    if data.shape[1] != action_dims:
        raise bad(f"shape {data.shape}: {data.shape[1]} action dims, the robot has {action_dims} "
                  f"(the previous chunk is in robot units, one column per action dim)")
    if not 1 <= data.shape[0] <= horizon:
        raise bad(f"shape {data.shape}: {data.shape[0]} rows; expected 1..{horizon} (the chunk length)")
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        rows = sorted({int(i) for i in np.argwhere(~np.isfinite(data))[:, 0]})
        shown = ", ".join(map(str, rows[:8])) + (" ..." if len(rows) > 8 else "")
        raise bad(f"NaN/inf in row(s) {shown}; every action must be finite")
    return data


def rtc_guidance(args: argparse.Namespace, action_dims: int, horizon: int):
    """The ChunkGuidance the --rtc-* flags ask for, or None without --rtc-prev (ConfigError: bad flags)."""
    from vla_ros.types import ChunkGuidance, RTCSettings

    check_rtc_flags(args)
    if getattr(args, "rtc_prev", None) is None:
        return None
    delay = 0 if args.rtc_delay is None else args.rtc_delay
    if delay < 0:
        raise ConfigError("--rtc-delay", f"expected a whole number of actions >= 0, got {delay}")
    fields = {
        name: getattr(args, flag[2:].replace("-", "_"))
        for flag, name in RTC_FLAGS.items()
        if name != "delay" and getattr(args, flag[2:].replace("-", "_")) is not None
    }
    try:
        settings = RTCSettings(**fields)
    except ConfigError as exc:  # it names rtc.<field>; the user typed a flag
        flag = next((f for f, name in RTC_FLAGS.items() if exc.parameter == f"rtc.{name}"), exc.parameter)
        problem = str(exc).split(": ", 1)[-1]
        raise ConfigError(flag, problem) from None
    previous = load_previous_chunk(args.rtc_prev, action_dims, horizon)
    return ChunkGuidance(previous=previous, delay=delay, settings=settings)


def check_rtc_flags(args: argparse.Namespace) -> None:
    """The RTC settings flags need --rtc-prev (ConfigError naming the first one given without it)."""
    given = _rtc_given(args)
    if given and getattr(args, "rtc_prev", None) is None:
        raise ConfigError(
            given[0], "needs --rtc-prev PREV.npy (the previous chunk to guide toward); without it there is "
            "no guidance"
        )


def describe_guidance(guidance, path: Path) -> str:
    """One line saying which guidance an inference used."""
    s = guidance.settings
    rows, dims = guidance.previous.shape
    return (f"RTC guidance: previous chunk {path} ({rows}x{dims}), delay {guidance.delay}, horizon "
            f"{s.execution_horizon}, schedule {s.schedule}, max guidance {s.max_guidance_weight:g}, "
            f"mode {s.mode}, jacobian {s.jacobian}")


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
        if getattr(args, "rtc_prev", None) is not None:
            raise ConfigError(
                "--rtc-prev", "pi0-FAST decodes its actions as tokens; Real-Time Chunking guides the "
                "Euler loop of a flow-matching model (pi0, pi0.5)"
            )
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

    check_rtc_flags(args)
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
    guidance = rtc_guidance(args, options.action_dims or dims, spec.action_horizon)
    policy = Policy.from_checkpoint(args.checkpoint, options)
    decodes = policy.engine = _LastDecode(policy.engine)
    try:
        if guidance is None:
            chunk = policy.infer(obs, noise=noise, tokens=tokens)
        else:
            chunk = policy.infer(obs, noise=noise, tokens=tokens, guidance=guidance)
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
    if guidance is not None:
        print(describe_guidance(guidance, args.rtc_prev))
    print(f"actions {actions.shape} range [{actions.min():.4f}, {actions.max():.4f}]  ({timing})")
    if chunk.tokens is not None:
        print(f"generated {len(chunk.tokens)} tokens (stop token included)")
    if args.out:
        print(f"wrote {out}")
    if args.tokens_out:
        print(f"wrote {tokens_path}")
    return 0
