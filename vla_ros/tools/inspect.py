"""`vla-ros inspect CHECKPOINT`: what a checkpoint is and what it expects of a robot.

Reads only the checkpoint's metadata (config.json, the safetensors header,
the normalization statistics, the tokenizer's location), never the weights,
so it answers in a second for a full-size checkpoint:

    vla-ros inspect models/pi05_droid
    vla-ros inspect models/pi05_droid --write-config config/my_robot.yaml

It prints the family and sizes; the camera slots with the source camera
names a LeRobot checkpoint was trained with; the state and action dims and
the normalization; the prompt length and tokenizer; the provenance and the
preprocessing it implies. ``--write-config`` writes a starter robot YAML in
which every value the user must fill in is marked ``FILL``; the node refuses
to configure until they are filled (each with a one-line error).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

FILL = "FILL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory (openpi or LeRobot layout)")
    parser.add_argument("--asset-id", default="", help="norm-stats asset id ('' = the only one)")
    parser.add_argument("--tokenizer", default="", help="tokenizer file or directory (default: beside it)")
    parser.add_argument(
        "--write-config",
        type=Path,
        metavar="ROBOT.yaml",
        help="write a starter robot YAML with every value to fill in marked FILL",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --write-config file")


def _options(args: argparse.Namespace) -> Any:
    from vla_ros.policy import PolicyOptions

    return PolicyOptions(asset_id=args.asset_id or None, tokenizer=args.tokenizer or None)


def _tokenizer(directory: Path, override: str) -> tuple[Path | None, str]:
    """(the tokenizer file, or None), and the line that reports it."""
    from vla_ros.errors import VlaRosError
    from vla_ros.observation.tokenizer import find_tokenizer

    try:
        found = find_tokenizer(directory, override or None)
    except VlaRosError as exc:
        return None, f"MISSING: {exc}"
    return found, str(found)


def describe(directory: Path, options: Any, tokenizer_override: str = "") -> tuple[Any, list[str]]:
    """(spec, report lines, the tokenizer file or None) for a checkpoint directory."""
    from vla_ros.model.checkpoint import config_from_checkpoint
    from vla_ros.policy import read_spec

    spec = read_spec(directory, options)
    cfg = config_from_checkpoint(directory)
    sources, empty, provenance = spec.camera_sources, set(spec.empty_camera_slots), spec.provenance
    tokenizer, tokenizer_line = _tokenizer(directory, tokenizer_override)
    lines = [
        f"checkpoint:  {directory}",
        f"family:      {spec.variant} ({spec.config_name}); provenance: {provenance}",
        f"sizes:       vision {cfg.vision.width} x {cfg.vision.depth} layers at {cfg.vision.image_size} px; "
        f"prefix {cfg.prefix.width} x {cfg.prefix.depth}; "
        + (f"action expert {cfg.expert.width} x {cfg.expert.depth}" if cfg.expert is not None else
           f"no action expert: decodes FAST action tokens, at most {cfg.decode.max_decoding_steps}")
        + f"; vocabulary {cfg.vocab_size}",
        "cameras:     " + ", ".join(
            f"slot {i} {key}"
            + (" (trained empty: never fed)" if key in empty else "")
            + (f" <- {sources[i]}" if i < len(sources) and sources[i] and key not in empty else "")
            for i, key in enumerate(spec.camera_keys)
        ),
        f"state:       {spec.state_dim} dims (norm stats), padded to {spec.model_dim}",
        f"actions:     {spec.action_stats_dim} dims per step, {spec.action_horizon} steps per chunk",
        f"norm stats:  {spec.norm_stats or '?'}" + (f" ({spec.normalization})" if spec.normalization else ""),
        f"prompt:      {spec.max_token_len} tokens; tokenizer: {tokenizer_line}",
    ]
    if cfg.is_fast:
        lines.append("action text: " + _fast_tokenizer_line(directory, options))
    relative = spec.relative_action_dims
    if relative:
        lines.append(f"relative:    actions relative to the state for dims {list(relative)} (made absolute)")
    lines.append(
        f"preprocess:  image resize '{spec.image_resize}', prompt style '{spec.prompt_style}' (the "
        f"conventions of a {provenance} checkpoint; policy.image_resize / prompt_style override them)"
    )
    if spec.untrained:
        lines.append("WARNING:     untrained (`vla-ros make-tiny`): random actions; never on a real robot")
    return spec, lines, tokenizer


def _fast_tokenizer_line(directory: Path, options: Any) -> str:
    from vla_ros.errors import CheckpointError
    from vla_ros.model.fast_tokenizer import FastActionTokenizer, find_fast_tokenizer

    try:
        path = find_fast_tokenizer(directory, getattr(options, "action_tokenizer", None))
        fast = FastActionTokenizer.load(str(path))
    except CheckpointError as exc:
        return f"MISSING: {exc}"
    shape = f"{fast.time_horizon or '?'} x {fast.action_dim or '?'}"
    return (f"'Action: ' + FAST tokens + '|'; FAST tokenizer {path} (BPE vocabulary {fast.num_ids}, "
            f"scale {fast.scale:g}, chunk {shape})")


def starter_yaml(directory: Path, spec: Any, tokenizer: Path | None) -> str:
    """A robot YAML for this checkpoint; every value to fill in is marked FILL."""
    import yaml

    empty = set(spec.empty_camera_slots)
    sources = tuple(s for s, key in zip(spec.camera_sources, spec.camera_keys) if key not in empty)
    slots = [key for key in spec.camera_keys if key not in empty]
    joints = [f"{FILL}_joint_{i}" for i in range(spec.state_dim)]
    cameras: dict[str, Any] = {"keys": slots}
    for i, key in enumerate(slots):
        source = sources[i] if i < len(sources) and sources[i] else key
        cameras[key] = {"topic": f"/{FILL}/{source}/image_raw", "transport": "raw"}
    params = {
        "checkpoint": str(directory.resolve()),
        "auto_activate": False,
        "dry_run": True,
        "control_rate": 50.0,
        "joint_names": joints,
        "policy": {
            "action_rate": f"{FILL}: the rate (Hz) the training data was recorded at",
            "tokenizer": str(tokenizer) if tokenizer else f"{FILL}: a PaliGemma tokenizer.json / .model",
        },
        "prompt": {"topic": "/instruction", "default": ""},
        "joint_states": {"topic": "/joint_states"},
        "cameras": cameras,
        "output": {"trajectory_topic": f"/{FILL}_controller/joint_trajectory"},
        "limits": {"lower": [], "upper": [], "max_velocity": []},
    }
    body = yaml.safe_dump({"vla_policy": {"ros__parameters": params}}, sort_keys=False)
    header = [
        f"# Starter robot configuration for {directory}, written by `vla-ros inspect --write-config`.",
        f"# Fill in every value marked {FILL}; the node refuses to configure until they are real:",
        f"#  - joint_names: the {spec.state_dim} joints in the order the state vector was trained on",
        "#    (the same order as the actions; check the dataset's feature names).",
        "#  - cameras.<slot>.topic: the topic of the camera that slot was trained with"
        + (f" ({', '.join(s for s in sources if s)})" if any(sources) else "") + ";",
        "#    remove slots the robot has no camera for (the model masks them).",
        "#  - policy.action_rate: the rate the training data was recorded at (Hz).",
        "#  - policy.tokenizer: where none was found beside the checkpoint (LeRobot ships none).",
        "#  - limits.lower / upper / max_velocity: one value per joint, from the robot's URDF.",
        "#  - output.trajectory_topic: the joint_trajectory_controller's topic.",
        "# dry_run: true publishes to ~/debug/* only: check the debug topics and a replay first.",
        "",
    ]
    return "\n".join(header) + body


def run(args: argparse.Namespace) -> int:
    from vla_ros.errors import CheckpointError
    from vla_ros.tools.file_modes import make_readable

    directory = args.checkpoint
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    spec, lines, tokenizer = describe(directory, _options(args), args.tokenizer)
    print("\n".join(lines))
    if args.write_config is not None:
        out = args.write_config
        if out.exists() and not args.overwrite:
            raise CheckpointError(f"{out} exists; choose another path or pass --overwrite")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(starter_yaml(directory, spec, tokenizer))
        make_readable(out)
        print(f"wrote {out}: fill in the values marked {FILL}, then `vla-ros replay BAG --config {out}`")
    return 0
