"""The artifact directory `vla-ros export` writes and the onnx engine loads: layout, manifest, suffix weights.

    prefix.onnx (+ prefix.onnx.data)  images + prompt -> per-layer K/V, static shapes, batch 1
                                      (decode models: + last_logits of the last prompt token)
    suffix.safetensors                pi0 / pi0.5: only the weights the suffix denoiser needs (fp32)
    decode.safetensors                pi0-FAST: the language model the decode stage steps (fp32):
                                      layers, final norm, token embedding, lm_head when untied
    config.json, assets/<id>/norm_stats.json, <tokenizer>.model   copied from the checkpoint
    fast_tokenizer/                   pi0-FAST: the FAST action tokenizer, copied from the checkpoint
    prefix.engine                     (--tensorrt) serialized TensorRT engine for the exporting GPU
    manifest.json                     variant, config, graph IO, precision, exporter, tool versions,
                                      sha256 of every file, the validation errors

The manifest is written last, so a directory with one is a complete export.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
import shutil

import torch

from vla_ros.errors import CheckpointError, ConfigError
from vla_ros.model.config import PolicyConfig
from vla_ros.model.pi0 import Pi0Model

MANIFEST_FILE = "manifest.json"
GRAPH_FILE = "prefix.onnx"
GRAPH_DATA_FILE = GRAPH_FILE + ".data"
SUFFIX_FILE = "suffix.safetensors"
DECODE_FILE = "decode.safetensors"
ENGINE_FILE = "prefix.engine"
CONFIG_FILE = "config.json"
NORM_STATS_FILE = "norm_stats.json"
ARTIFACT_FORMAT = "vla_ros.prefix_artifact"
ARTIFACT_FORMAT_VERSION = 1

# Weights the suffix denoiser reads; everything else is the prefix
# (docs/model.md, "Prefix / suffix split and the K/V cache").
SUFFIX_KEY_PREFIXES = (
    "paligemma_with_expert.gemma_expert.",
    "action_in_proj.",
    "action_out_proj.",
    "state_proj.",
    "action_time_mlp_in.",
    "action_time_mlp_out.",
    "time_mlp_in.",
    "time_mlp_out.",
)


# Weights the decode stage of a decode model (pi0-FAST) reads: the language model and its head.
LANGUAGE_MODEL_PREFIX = "paligemma_with_expert.paligemma.model.language_model."
LM_HEAD_KEY = "paligemma_with_expert.paligemma.lm_head.weight"


def is_suffix_key(name: str) -> bool:
    """True for a state-dict key the suffix denoiser needs (action expert, action heads, time MLPs)."""
    return name.startswith(SUFFIX_KEY_PREFIXES)


def is_decode_key(name: str) -> bool:
    """True for a state-dict key the decode stage needs (language model layers, norm, embedding, head)."""
    return name.startswith(LANGUAGE_MODEL_PREFIX) or name == LM_HEAD_KEY


def sha256_file(path: Path, progress=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


# -- reading ------------------------------------------------------------------------------------


def read_manifest(artifact_dir: str | Path) -> dict:
    """The manifest of an artifact written by `vla-ros export`."""
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{artifact_dir} is not an export artifact: no {MANIFEST_FILE} "
            f"(create one with `vla-ros export --checkpoint CHECKPOINT --out {artifact_dir}`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CheckpointError(f"{path} is not a vla_ros export manifest (format {found!r})")
    if manifest.get("format_version", 0) > ARTIFACT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {manifest['format_version']}, this vla_ros reads up to "
            f"{ARTIFACT_FORMAT_VERSION}: update vla_ros or re-export"
        )
    return manifest


def verify_artifact(artifact_dir: str | Path) -> list[str]:
    """Files whose size or sha256 differ from the manifest (empty when the artifact is intact)."""
    artifact_dir = Path(artifact_dir)
    problems = []
    for name, entry in read_manifest(artifact_dir)["files"].items():
        path = artifact_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: contents differ from the manifest")
    return problems


def load_suffix_model(
    artifact_dir: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Pi0Model, PolicyConfig]:
    """A Pi0Model whose suffix parts hold the artifact's weights and whose prefix parts stay on `meta`.

    Only `model.expert`, the action projections and the time MLPs (`state_proj` /
    `action_time_mlp_*` for pi0, `time_mlp_*` for pi0.5) are real, so the prefix
    costs no memory; `denoise_step` works, `embed_prefix` does not. dtype float32
    keeps everything fp32; bfloat16 / float16 give the reference mixed-precision
    split. The tensors are created on `device`: do not call `.to()` on the model
    (meta tensors cannot be copied).
    """
    from safetensors.torch import load_file

    artifact_dir = Path(artifact_dir)
    cfg = PolicyConfig.from_dict(read_manifest(artifact_dir)["config"])
    path = artifact_dir / SUFFIX_FILE
    if not path.is_file():
        raise CheckpointError(
            f"no {SUFFIX_FILE} in {artifact_dir}: re-export the checkpoint with `vla-ros export`"
        )
    with torch.device("meta"):
        model = Pi0Model(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if is_suffix_key(k)}
    state = load_file(str(path))
    _check_state(path, cfg, state, expected)
    device = torch.device(device)
    model.load_state_dict({k: v.to(device=device, dtype=torch.float32) for k, v in state.items()},
                          strict=False, assign=True)
    if dtype != torch.float32:
        model.to_mixed_precision(dtype)  # casts the meta prefix too: compute_dtype stays right
    return model.eval(), cfg


def load_decode_model(
    artifact_dir: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
):
    """A Pi0FastModel whose language model (and head) hold the artifact's weights; vision stays on `meta`.

    The decode stage's counterpart of `load_suffix_model`: `embed_text`,
    `language_model` and `logits` work (all a StaticDecoder uses), the prefix
    does not (the artifact's graph runs it). A decode.safetensors without
    lm_head.weight means the head is tied to the token embedding, as in the
    checkpoint it came from. dtype float32 keeps everything fp32; bfloat16 /
    float16 give the reference mixed-precision split. Tensors are created on
    `device`; do not call `.to()` on the model (meta tensors cannot be copied).
    """
    from safetensors.torch import load_file

    from vla_ros.model.pi0_fast import Pi0FastModel

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    cfg = PolicyConfig.from_dict(manifest["config"])
    if not cfg.is_fast:
        raise CheckpointError(f"{artifact_dir} holds a {cfg.variant} export, which has no decode stage")
    path = artifact_dir / ((manifest.get("decode") or {}).get("file") or DECODE_FILE)
    if not path.is_file():
        raise CheckpointError(
            f"no {path.name} in {artifact_dir} (the language model the decode stage runs): re-export the "
            "checkpoint with `vla-ros export`"
        )
    with torch.device("meta"):
        model = Pi0FastModel(cfg)
    state = load_file(str(path))
    tied = LM_HEAD_KEY not in state
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if is_decode_key(k) and not (tied and k == LM_HEAD_KEY)}
    _check_state(path, cfg, state, expected)
    device = torch.device(device)
    model.load_state_dict({k: v.to(device=device, dtype=torch.float32) for k, v in state.items()},
                          strict=False, assign=True)
    if tied:
        model.tie_head()
    if dtype != torch.float32:
        model.to_mixed_precision(dtype)  # casts the meta vision tower too: compute_dtype stays right
    return model.eval(), cfg


def _check_state(path: Path, cfg: PolicyConfig, state: dict, expected: dict) -> None:
    """CheckpointError naming missing, unexpected and mis-shaped tensors of a weights file."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k}: {tuple(state[k].shape)} vs {expected[k]}" for k in set(expected) & set(state)
                       if tuple(state[k].shape) != expected[k])
    if missing or unexpected or misshaped:
        details = "; ".join(f"{title}: {items[:3]}{' ...' if len(items) > 3 else ''}"
                            for title, items in (("missing", missing), ("unexpected", unexpected),
                                                 ("mis-shaped", misshaped)) if items)
        raise CheckpointError(
            f"{path} does not fit the {cfg.name} config in the manifest ({details}); re-export"
        )


# -- writing ------------------------------------------------------------------------------------


def prepare_out_dir(out_dir: Path, checkpoint_dir: Path, overwrite: bool) -> None:
    """An empty `out_dir`; with `overwrite`, a previous export there is deleted (nothing else is)."""
    if out_dir.resolve() == checkpoint_dir.resolve():
        raise ConfigError("out", "ARTIFACT_DIR must differ from the checkpoint directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError("out", f"{out_dir} is not empty; choose a new directory or pass --overwrite "
                                     "to replace a previous export")
        if not (out_dir / MANIFEST_FILE).is_file() and not (out_dir / GRAPH_FILE).is_file():
            raise ConfigError("out", f"{out_dir} is not empty and holds no previous export; refusing to "
                                     "delete it with --overwrite")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def suffix_state(model: Pi0Model) -> dict[str, torch.Tensor]:
    """Lossless copies of the suffix weights; take them before any cast to keep the checkpoint's values."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if is_suffix_key(k)}


def save_suffix(state: dict[str, torch.Tensor], out_dir: Path) -> dict:
    """Write suffix.safetensors; returns its manifest entry."""
    from safetensors.torch import save_file

    save_file(state, str(out_dir / SUFFIX_FILE), metadata={"format": "pt"})
    return {"file": SUFFIX_FILE, "dtype": "float32", "tensors": len(state),
            "parameters": int(sum(v.numel() for v in state.values()))}


def decode_state(model) -> dict[str, torch.Tensor]:
    """Lossless copies of the decode stage's weights (take them before any cast).

    The language model's layers, final norm and token embedding, and lm_head
    only when it is its own tensor: a tied head is stored once, as the embedding.
    """
    tied = model.head_is_tied
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
            if is_decode_key(k) and not (tied and k == LM_HEAD_KEY)}


def save_decode(state: dict[str, torch.Tensor], out_dir: Path) -> dict:
    """Write decode.safetensors; returns its manifest entry."""
    from safetensors.torch import save_file

    save_file(state, str(out_dir / DECODE_FILE), metadata={"format": "pt"})
    return {"file": DECODE_FILE, "dtype": "float32", "tensors": len(state),
            "parameters": int(sum(v.numel() for v in state.values())),
            "lm_head": "untied" if LM_HEAD_KEY in state else "tied to the token embedding"}


def copy_runtime_files(
    checkpoint_dir: Path, out_dir: Path, cfg: PolicyConfig, tokenizer: str | Path | None = None,
    action_tokenizer: str | Path | None = None,
) -> list[str]:
    """config.json (with the resolved vla_ros config), statistics and tokenizer, same relative paths.

    Statistics: openpi's `assets/<id>/norm_stats.json`, or a LeRobot
    directory's processor files (the two pipelines' JSON and the safetensors
    files their steps name). `tokenizer` (policy.tokenizer) outside the
    checkpoint is copied to `tokenizer/` in the artifact, where the finder
    looks. pi0-FAST also gets its FAST action tokenizer directory, found as
    the policy finds it (`action_tokenizer`: policy.action_tokenizer); one
    outside the checkpoint lands in `fast_tokenizer/`.
    """
    from vla_ros.model.checkpoint import read_config_json
    from vla_ros.model.lerobot_layout import POSTPROCESSOR_FILE, PREPROCESSOR_FILE, processor_files
    from vla_ros.observation.tokenizer import find_tokenizer

    meta = read_config_json(checkpoint_dir)
    # Resolved once here, so that the artifact never needs model.safetensors to know its sizes.
    meta["vla_ros"] = cfg.to_dict()
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    stats = sorted(checkpoint_dir.glob(f"assets/**/{NORM_STATS_FILE}"))
    if (checkpoint_dir / NORM_STATS_FILE).is_file():
        stats.append(checkpoint_dir / NORM_STATS_FILE)
    stats.extend(processor_files(checkpoint_dir))  # LeRobot's, read as loading reads them
    if not stats:
        raise CheckpointError(f"no normalization statistics in {checkpoint_dir}: expected "
                              f"assets/<asset_id>/{NORM_STATS_FILE} (openpi) or {PREPROCESSOR_FILE} and "
                              f"{POSTPROCESSOR_FILE} (LeRobot); the artifact would not be deployable")
    copied = [CONFIG_FILE]
    source = find_tokenizer(checkpoint_dir, tokenizer)
    targets = [(path, path.relative_to(checkpoint_dir)) for path in stats]
    if source.resolve().is_relative_to(checkpoint_dir.resolve()):
        targets.append((source, source.resolve().relative_to(checkpoint_dir.resolve())))
    else:
        targets.append((source, Path("tokenizer") / source.name))
    if cfg.is_fast:
        targets.extend(_fast_tokenizer_files(checkpoint_dir, action_tokenizer))
    for path, relative in targets:
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out_dir / relative)
        copied.append(relative.as_posix())
    return copied


def _fast_tokenizer_files(checkpoint_dir: Path, override: str | Path | None) -> list[tuple[Path, Path]]:
    """(file, path in the artifact) for each file of the FAST tokenizer directory."""
    from vla_ros.model.fast_tokenizer import FAST_TOKENIZER_DIRS, find_fast_tokenizer

    source = Path(find_fast_tokenizer(checkpoint_dir, str(override) if override else None)).resolve()
    if source.is_relative_to(checkpoint_dir.resolve()):
        into = source.relative_to(checkpoint_dir.resolve())
    else:
        into = Path(FAST_TOKENIZER_DIRS[0])
    return [(path, into / path.relative_to(source)) for path in sorted(source.rglob("*")) if path.is_file()]


def hash_files(out_dir: Path, disable: bool | None = False) -> dict[str, dict]:
    """sha256 and size of every file but the manifest, by relative path (tqdm bar unless `disable`)."""
    from tqdm import tqdm

    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    hashes = {}
    with tqdm(total=sum(p.stat().st_size for p in files), desc="sha256", unit="B", unit_scale=True,
              leave=False, disable=disable) as bar:
        for path in files:
            hashes[path.relative_to(out_dir).as_posix()] = {"sha256": sha256_file(path, bar),
                                                            "bytes": path.stat().st_size}
    return hashes


def write_manifest(out_dir: Path, entries: dict) -> dict:
    """Write manifest.json: the format header, then `entries`; returns the manifest."""
    manifest = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **entries,
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
