"""`vla-ros bench`: per-stage latency of the optimised engine against a baseline, same run.

The baseline does what straightforward ports do: eager PyTorch prefix, and a
denoising loop that rebuilds time embeddings and masks every step and
concatenates the prefix K/V cache into every layer of every step (our reference
engine). Figures are medians and tails after warm-up, with device
synchronisation before every clock read; the verdicts are ratios measured in
this run, never wall-clock thresholds.

Decode models (pi0-FAST) are measured the same way, stage by stage: prefix,
decode, and the time per decoded token, against a baseline whose cache grows
by concatenation every token (eager prefix + `ConcatCacheDecoder`). Both sides
decode exactly `--decode-tokens` tokens, greedily, never stopping early
(random weights rarely write a stop token, and equal counts make the per-token
times comparable). The first token comes from the prefix's logits, so a
decode of N tokens is N - 1 steps and "per token" is the decode time / (N - 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
import resource
import sys
import tempfile
import time

import numpy as np

STAGES = ("preprocess", "prefix", "suffix", "postprocess", "total")
RTC_BENCH_DELAY = 5  # actions of the previous chunk still executed (d) in the RTC measurement
# Published by the issue for LeRobot 0.6.1's PyTorch pi0 on this 2-core machine (not measured here).
LEROBOT_ANCHORS_S = {"pi0-tiny": 0.050, "pi0-mid": 0.43, "pi0": 8.7}
FULL_SIZE_TARGET_S = 3.0
NOISE_MARGIN = 0.05  # medians within 5% count as equal
DECODE_STAGES = ("preprocess", "prefix", "decode", "per_token", "total")
DEFAULT_DECODE_TOKENS = 64


def percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
    }


def synthetic_observation(cfg, dims: int, cameras: int | None = None, seed: int = 0):
    from vla_ros.types import CAMERA_KEYS, RawObservation

    rng = np.random.default_rng(seed)
    keys = CAMERA_KEYS[: cfg.num_cameras if cameras is None else cameras]
    images = {key: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for key in keys}
    return RawObservation(
        images, rng.normal(size=dims).astype(np.float32), "pick up the red block and put it in the bin"
    )


def measure(policies: dict, obs, runs: int, warmup: int, noise) -> dict:
    """Per-stage percentiles for each policy.

    Runs are interleaved so that drift in the machine's load (other processes,
    frequency changes) hits every policy alike.
    """
    for _ in range(warmup):
        for policy in policies.values():
            policy.infer(obs, noise=noise)
    samples = {name: {stage: [] for stage in STAGES} for name in policies}
    actions = {}
    for _ in range(runs):
        for name, policy in policies.items():
            chunk = policy.infer(obs, noise=noise)
            actions[name] = chunk.actions
            for stage in STAGES:
                samples[name][stage].append(chunk.timings[stage])
    return {
        name: {stage: percentiles(values) for stage, values in per_stage.items()} | {"actions": actions[name]}
        for name, per_stage in samples.items()
    }


class GuidedPolicy:
    """A policy whose every inference is Real-Time-Chunking guided toward one previous chunk (bench only)."""

    def __init__(self, policy, guidance):
        self.policy = policy
        self.guidance = guidance

    def infer(self, obs, noise=None):
        return self.policy.infer(obs, noise=noise, guidance=self.guidance)


def rtc_guidance(policy, obs, noise, mode: str, delay: int = RTC_BENCH_DELAY):
    """Guidance toward the policy's own chunk shifted by `delay` actions, as the node would give it."""
    from vla_ros.types import ChunkGuidance, RTCSettings

    previous = policy.infer(obs, noise=noise).actions[delay:]
    return ChunkGuidance(previous, delay, RTCSettings(mode=mode))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _support_files(tmp: Path, dims: int):
    """Tokenizer and norm stats for a config benchmarked without a checkpoint directory."""
    from vla_ros.observation.tokenizer import train_tokenizer
    from vla_ros.tools.make_tiny import make_norm_stats

    return train_tokenizer(tmp / "tokenizer.model"), make_norm_stats(dims, 0)


def _smolvla_support(tmp: Path, dims: int):
    """A named SmolVLA config benchmarked without a checkpoint: the conventions of a LeRobot directory.

    A small trained tokenizer.json (SmolVLM's special tokens), MEAN_STD
    statistics with LeRobot's formulas, the "smolvla" image resize.
    """
    from vla_ros.observation.normalize import Normalizer
    from vla_ros.policy import CheckpointMeta, Provenance
    from vla_ros.tools.make_tiny import make_norm_stats, train_smolvla_tokenizer

    tokenizer = train_smolvla_tokenizer(tmp / "smolvlm")
    norm = Normalizer(make_norm_stats(dims, 0), "zscore", "lerobot")
    return tokenizer, norm, CheckpointMeta(provenance=Provenance("lerobot", image_resize="smolvla"))


def optimised_engine(model, steps: int, suffix_mode: str):
    """The optimised engine over `model` (possibly packed): PyTorch prefix, the family's static suffix."""
    from vla_ros.engines.optimized import OptimizedEngine
    from vla_ros.engines.prefix_torch import TorchPrefixRuntime

    if model.cfg.variant == "smolvla":
        from vla_ros.engines.suffix_smolvla import SmolVLASuffixDenoiser

        return OptimizedEngine(TorchPrefixRuntime(model), SmolVLASuffixDenoiser(model, steps), suffix_mode)
    from vla_ros.engines.suffix import StaticSuffixDenoiser

    return OptimizedEngine(TorchPrefixRuntime(model), StaticSuffixDenoiser(model, steps), suffix_mode)


def build_policies(args, tmp: Path):
    """(optimised policy, baseline policy, description) sharing weights where precision allows."""
    import torch

    from vla_ros.engines.factory import pack_for_cpu, resolve_device, resolve_dtype, resolve_suffix
    from vla_ros.engines.reference import ReferenceEngine
    from vla_ros.model.checkpoint import config_from_checkpoint, load_model, random_model
    from vla_ros.model.config import get_runnable_config
    from vla_ros.observation.normalize import Normalizer
    from vla_ros.observation.tokenizer import PromptTokenizer
    from vla_ros.policy import (
        CheckpointMeta,
        find_tokenizer,
        load_conventions,
        Policy,
        PolicyOptions,
        resolve_num_steps,
    )

    device = resolve_device(args.device)
    cfg = config_from_checkpoint(args.checkpoint) if args.checkpoint else get_runnable_config(args.config)
    dtype = resolve_dtype(args.precision, device, cfg=cfg)
    if args.checkpoint:
        model, cfg = load_model(args.checkpoint, dtype=dtype, device=device)
        # The checkpoint's own conventions (openpi or LeRobot statistics, resize, prompt style).
        norm, _, meta = load_conventions(Path(args.checkpoint), cfg, PolicyOptions(seed=0))
        if cfg.variant == "smolvla":  # the tokenizer may be in the VLM's folder beside the checkpoint
            from vla_ros.policy import _tokenizer_folder

            folder = _tokenizer_folder(Path(args.checkpoint), cfg, PolicyOptions(seed=0), meta)
        else:
            folder = Path(args.checkpoint)
        tokenizer_path = find_tokenizer(folder, named=meta.tokenizer_name)
    elif cfg.variant == "smolvla":
        tokenizer_path, norm, meta = _smolvla_support(tmp, args.dims)
        model = random_model(cfg, seed=0, dtype=dtype).to(device)
    else:
        tokenizer_path, stats = _support_files(tmp, args.dims)
        norm, meta = Normalizer(stats, "quantile" if cfg.pi05 else "zscore"), CheckpointMeta()
        model = random_model(cfg, seed=0, dtype=dtype).to(device)
    # --steps, else the checkpoint's (LeRobot's num_inference_steps, else 10), for both sides.
    steps = resolve_num_steps(PolicyOptions(seed=0, num_steps=args.steps), meta).num_steps

    def policy(engine, options=PolicyOptions(seed=0, num_steps=steps)):
        tok = PromptTokenizer(tokenizer_path, cfg.max_token_len, cfg.variant, meta.provenance.prompt_style)
        return Policy(cfg, engine, tok, norm, None, options, meta=meta)

    suffix_mode = resolve_suffix(args.suffix, device)
    if args.artifacts:
        # The deployed form: what `Policy.from_artifacts` builds, ONNX / TensorRT prefix included.
        from vla_ros.tools.infer import policy_options

        options = policy_options(args, pack_weights=args.pack_weights, num_steps=steps)
        optimised = Policy.from_artifacts(args.artifacts, options)
    else:
        # A packed copy shares every unpacked tensor with `model`, which the baseline may reuse.
        fast = pack_for_cpu(model, suffix_mode) if args.pack_weights else model
        optimised = policy(optimised_engine(fast, steps, suffix_mode))
    n_params = sum(p.numel() for p in model.parameters())
    baseline_dtype = dtype
    if args.baseline_precision == "fp32" or (args.baseline_precision == "auto" and n_params < 1e9):
        baseline_dtype = torch.float32
    if baseline_dtype == dtype:
        baseline_model = model  # shares the weights: a full-size fp32 copy would not fit beside bf16
    elif args.checkpoint:
        baseline_model, _ = load_model(args.checkpoint, dtype=baseline_dtype, device=device)
    else:
        baseline_model = random_model(cfg, seed=0, dtype=baseline_dtype).to(device)
    baseline = policy(ReferenceEngine(baseline_model, steps))
    info = {
        "config": cfg.name,
        "steps": steps,
        "params": n_params,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "optimised": optimised.engine.describe(),
        "baseline": baseline.engine.describe(),
    }
    return optimised, baseline, cfg, info


def arithmetic_bound(policy, obs, info: dict) -> dict:
    """Matmul FLOPs of this observation's inference and the latency this machine's matmul peak allows."""
    from vla_ros.tools.roofline import inference_flops, matmul_peak_flops

    inputs, _ = policy.preprocess(obs)
    engine = policy.engine
    dtype = engine.denoiser.dtype if hasattr(engine, "denoiser") else engine.model.compute_dtype
    flops = inference_flops(
        policy.cfg, int(inputs.image_masks.sum()), int(inputs.token_masks.sum()), policy.options.num_steps
    )
    packed = bool(info["optimised"].get("packed_weights"))
    peak = matmul_peak_flops(dtype, engine.device, packed=packed)
    return {
        "flops": flops["total"],
        "prefix_flops": flops["prefix"],
        "suffix_flops": flops["suffix"],
        "dtype": str(dtype).replace("torch.", ""),
        "peak_flops": peak,
        "bound_s": flops["total"] / peak,
    }


def print_report(info: dict, results: dict, checks: list[tuple[str, bool, str]]) -> None:
    print(
        f"\nvla-ros bench: {info['config']} ({info['params'] / 1e6:.1f} M params) on {info['device']}, "
        f"{info['threads']} threads, {info['cameras']} cameras, {info['steps']} Euler steps"
    )
    print(f"  optimised: {info['optimised']}")
    print(f"  baseline:  {info['baseline']}")
    header = f"{'stage':<12}" + "".join(
        f"{name + ' p50':>16}{'p99':>12}" for name in ("optimised", "baseline")
    )
    print(header + f"{'speedup':>10}")
    for stage in STAGES:
        o, b = results["optimised"][stage], results["baseline"][stage]
        ratio = b["p50"] / o["p50"] if o["p50"] > 0 else float("inf")
        print(
            f"{stage:<12}{o['p50'] * 1e3:>13.2f} ms{o['p99'] * 1e3:>9.2f} ms"
            f"{b['p50'] * 1e3:>13.2f} ms{b['p99'] * 1e3:>9.2f} ms{ratio:>9.2f}x"
        )
    print(
        f"peak memory (RSS): {results['peak_rss_gb']:.2f} GB; actions max |optimised - baseline| "
        f"{results['max_abs_diff']:.2e} (relative {results['rel_diff']:.2e})"
    )
    if "optimised_rtc" in results:
        guided, plain = results["optimised_rtc"]["suffix"], results["optimised"]["suffix"]
        rtc = info["rtc"]
        print(
            f"Real-Time Chunking ({rtc['mode']}, d = {rtc['delay']}): suffix p50 "
            f"{guided['p50'] * 1e3:.2f} ms "
            f"against {plain['p50'] * 1e3:.2f} ms unguided in the same run "
            f"({guided['p50'] / plain['p50']:.2f}x the unguided cost)"
        )
    for name, ok, detail in checks:
        print(f"check {'PASS' if ok else 'FAIL'}: {name}: {detail}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="checkpoint directory")
    parser.add_argument(
        "--artifacts",
        type=Path,
        help="also: an exported artifact directory of --checkpoint; the optimised side runs it "
        "(ONNX / TensorRT prefix) and the baseline runs the checkpoint",
    )
    parser.add_argument("--engine", default="auto", help="--artifacts: prefix engine (auto, onnx, tensorrt)")
    source.add_argument(
        "--config",
        help="named config with random weights (pi0-tiny, pi0-mid, pi0, pi05-..., pi0fast-tiny, pi0fast, "
        "smolvla-tiny, smolvla)",
    )
    parser.add_argument("--runs", type=int, default=20, help="timed inferences per engine")
    parser.add_argument("--warmup", type=int, default=3, help="untimed inferences first")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Euler steps (default: the checkpoint's; LeRobot's or 10); decode models have none",
    )
    parser.add_argument(
        "--decode-tokens",
        type=int,
        default=DEFAULT_DECODE_TOKENS,
        help="decode models (pi0-FAST): tokens decoded per inference on both sides, never stopping early "
        f"(default {DEFAULT_DECODE_TOKENS})",
    )
    parser.add_argument("--dims", type=int, default=14, help="robot dims for --config")
    parser.add_argument(
        "--cameras", type=int, help="cameras present (default: all the model takes; others are masked)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision", default="auto", help="optimised engine precision (auto: bf16 where native)"
    )
    parser.add_argument(
        "--baseline-precision",
        default="auto",
        choices=("auto", "fp32", "same"),
        help="auto: fp32 below 1 B parameters, else the optimised precision (memory)",
    )
    parser.add_argument(
        "--suffix", default="auto", help="auto, eager, compiled, cuda_graph (decode models: the decode step)"
    )
    parser.add_argument(
        "--no-pack-weights",
        dest="pack_weights",
        action="store_false",
        help="optimised engine on plain bf16 matmuls (policy.pack_weights: false)",
    )
    parser.add_argument(
        "--rtc",
        default="guided",
        choices=("guided", "trained", "off"),
        help="also time the optimised suffix with Real-Time Chunking (this loop, d = "
        f"{RTC_BENCH_DELAY}, LeRobot's defaults) against the unguided one, interleaved; off: skip",
    )
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--node", action="store_true", help="measure the node's control-timer jitter instead")
    parser.add_argument("--seconds", type=float, default=5.0, help="--node: seconds per phase")
    parser.add_argument("--robot-config", type=Path, help="--node: robot YAML (default: the ALOHA profile)")
    from vla_ros.tools.bench_remote import add_remote_arguments  # --remote URI, --clients N

    add_remote_arguments(parser)


def default_robot_config() -> Path:
    """The ALOHA profile: from the ament index when installed by colcon, else beside the sources."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("vla_ros")) / "config" / "aloha.yaml"
    except Exception:  # not installed through colcon (a venv)
        return Path(__file__).resolve().parents[2] / "config" / "aloha.yaml"


def run_node_bench(args) -> int:
    """Control-timer period deviation idle vs under inference load, in one run (a real node over DDS)."""
    from vla_ros.ros.timer_jitter import format_report, measure_timer_jitter
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    robot = args.robot_config or default_robot_config()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or make_tiny_checkpoint(
            Path(tmp) / "ckpt", args.config or "pi0-tiny", dims=14
        )
        result = measure_timer_jitter(robot, checkpoint, args.seconds)
    print(format_report(result))
    if args.json:
        _write_json(args.json, result)
    return 0


def _write_json(path: Path, payload: dict) -> None:
    from vla_ros.tools.file_modes import make_readable

    path.write_text(json.dumps(payload, indent=2, default=str))
    make_readable(path)


def check_counts(args: argparse.Namespace) -> None:
    """One-line errors for counts that cannot give a measurement (before anything is built)."""
    from vla_ros.errors import ConfigError

    if args.runs < 1:
        raise ConfigError("--runs", f"expected at least 1 timed inference, got {args.runs}")
    if args.warmup < 0:
        raise ConfigError("--warmup", f"expected 0 or more warm-up inferences, got {args.warmup}")
    if args.steps is not None and args.steps < 1:
        raise ConfigError("--steps", f"expected at least 1 Euler step, got {args.steps}")
    if not 0 < args.dims <= 32:
        raise ConfigError("--dims", f"expected 1..32 robot dims, got {args.dims}")
    if args.cameras is not None and args.cameras < 1:
        raise ConfigError("--cameras", f"expected at least 1 camera (a policy needs one), got {args.cameras}")


def run(args: argparse.Namespace) -> int:
    if args.node:
        return run_node_bench(args)
    if args.remote:
        from vla_ros.tools.bench_remote import run_remote

        return run_remote(args)
    check_counts(args)
    if args.artifacts and not args.checkpoint:
        from vla_ros.errors import ConfigError

        raise ConfigError(
            "--artifacts", "needs --checkpoint, the checkpoint it was exported from (the baseline)"
        )
    if not args.checkpoint and not args.config:
        args.config = "pi0-tiny"
    cfg = bench_config(args)
    if cfg.is_fast:
        return run_decode(args, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        optimised, baseline, cfg, info = build_policies(args, Path(tmp))
        info["build_s"] = time.perf_counter() - start
        obs = synthetic_observation(cfg, args.dims, args.cameras)
        info["cameras"] = len(obs.images)
        noise = (
            np.random.default_rng(0).standard_normal((cfg.action_horizon, cfg.action_dim)).astype(np.float32)
        )
        print(
            f"measuring optimised and baseline interleaved ({args.warmup} warm-up + {args.runs} runs each)",
            file=sys.stderr,
            flush=True,
        )
        policies = {"optimised": optimised, "baseline": baseline}
        if args.rtc != "off":
            info["rtc"] = {"mode": args.rtc, "delay": RTC_BENCH_DELAY}
            policies["optimised_rtc"] = GuidedPolicy(optimised, rtc_guidance(optimised, obs, noise, args.rtc))
        results = measure(policies, obs, args.runs, args.warmup, noise)
    results.get("optimised_rtc", {}).pop("actions", None)
    a, b = results["optimised"].pop("actions"), results["baseline"].pop("actions")
    results["max_abs_diff"] = float(np.abs(a - b).max())
    results["rel_diff"] = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
    results["peak_rss_gb"] = peak_rss_gb()
    o, bl = results["optimised"], results["baseline"]

    def not_slower(stage: str) -> tuple[bool, str]:
        ratio = bl[stage]["p50"] / o[stage]["p50"]
        # Where both sides run the same code (the tiny prefix is eager fp32 either way)
        # their medians differ by run-to-run noise of a few percent.
        return ratio >= 1.0 - NOISE_MARGIN, f"{ratio:.2f}x"

    checks = [
        ("suffix not slower than baseline", *not_slower("suffix")),
        (f"prefix not slower than eager {info['baseline'].get('dtype', '')}", *not_slower("prefix")),
    ]
    anchor = LEROBOT_ANCHORS_S.get(cfg.name)
    if anchor:
        checks.append(
            (
                f"vs LeRobot 0.6.1 figure from the issue ({anchor:.3f} s)",
                o["total"]["p50"] <= anchor,
                f"{anchor / o['total']['p50']:.2f}x",
            )
        )
    roofline = arithmetic_bound(optimised, obs, info)
    info["roofline"] = roofline
    if cfg.name in ("pi0", "pi05"):
        checks.append(
            (
                f"full size within the {FULL_SIZE_TARGET_S:.0f} s target",
                o["total"]["p50"] <= FULL_SIZE_TARGET_S,
                f"{o['total']['p50']:.2f} s = {o['total']['p50'] / FULL_SIZE_TARGET_S:.2f} of target",
            )
        )
    print_report(info, results, checks)
    print(
        f"arithmetic: {roofline['flops'] / 1e12:.3f} TFLOP per inference (prefix "
        f"{roofline['prefix_flops'] / 1e12:.3f}, suffix {roofline['suffix_flops'] / 1e12:.3f}); this "
        f"machine's {roofline['dtype']} matmul peak {roofline['peak_flops'] / 1e12:.2f} TFLOP/s (measured "
        f"now) bounds an inference at {roofline['bound_s'] * 1e3:.1f} ms; the optimised total is at "
        f"{roofline['bound_s'] / o['total']['p50']:.0%} of that bound"
    )
    if args.json:
        payload = {
            "info": info,
            "results": results,
            "checks": [dataclasses.asdict(_Check(*c)) for c in checks],
        }
        _write_json(args.json, payload)
    return 0


@dataclasses.dataclass
class _Check:
    name: str
    passed: bool
    detail: str


# -- decode models (pi0-FAST) --------------------------------------------------------------------


def bench_config(args: argparse.Namespace):
    """The model config of --checkpoint or --config, read without loading weights."""
    from vla_ros.model.checkpoint import config_from_checkpoint
    from vla_ros.model.config import get_runnable_config

    return config_from_checkpoint(args.checkpoint) if args.checkpoint else get_runnable_config(args.config)


def check_decode_args(args: argparse.Namespace) -> None:
    """One-line errors for options a decode-model bench cannot honour (before anything is built)."""
    from vla_ros.errors import ConfigError

    if args.decode_tokens < 2:
        raise ConfigError(
            "--decode-tokens",
            f"expected at least 2 (the first token comes with the prefix), got {args.decode_tokens}",
        )
    if args.steps is not None:
        raise ConfigError("--steps", "pi0-FAST decodes tokens and has no Euler steps; use --decode-tokens")
    if args.suffix == "compiled":
        raise ConfigError("--suffix", "'compiled' is not available for the decode stage; use auto or eager")


def build_decode_policies(args, cfg, tmp: Path):
    """(optimised policy, baseline policy, config, description) for a decode model, sharing weights.

    Optimised: what `build_engine` builds for the checkpoint (PyTorch prefix,
    static-cache decoder, a CUDA-graph step on CUDA), with `--decode-tokens`
    rows; with --artifacts, what `Policy.from_artifacts` builds (an ONNX /
    TensorRT prefix). Baseline: the checkpoint's eager prefix and the
    concatenating cache (`ReferenceDecodeEngine`), fp32 below 1 B parameters as
    for pi0.
    """
    import torch

    from vla_ros.engines.decode import DecodeEngine, ReferenceDecodeEngine, StaticDecoder
    from vla_ros.engines.factory import (
        OPENPI_DECODE_POSITION_GAP,
        pack_for_cpu,
        resolve_decode,
        resolve_device,
        resolve_dtype,
    )
    from vla_ros.engines.prefix_torch import TorchPrefixRuntime
    from vla_ros.model.checkpoint import load_model, random_model
    from vla_ros.observation.normalize import Normalizer
    from vla_ros.observation.tokenizer import PromptTokenizer, train_tokenizer
    from vla_ros.policy import CheckpointMeta, find_tokenizer, load_conventions, make_action_parser, Policy
    from vla_ros.policy import PolicyOptions
    from vla_ros.tools.make_tiny import (
        FAST_TEXT,
        FAST_TOKENIZER_DIR,
        make_fast_tokenizer,
        make_norm_stats,
        TOKENIZER_FILE,
    )

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device, cfg=cfg)
    options = PolicyOptions(seed=0)
    if args.checkpoint:
        source = Path(args.checkpoint)
        model, cfg = load_model(source, dtype=dtype, device=device)
        norm, _, meta = load_conventions(source, cfg, options)
        tokenizer_path = find_tokenizer(source, named=meta.tokenizer_name)
    else:
        # The files make-tiny writes beside a pi0fast-tiny checkpoint, for a named config.
        source = tmp
        tokenizer_path = train_tokenizer(tmp / TOKENIZER_FILE, extra_text=FAST_TEXT)
        make_fast_tokenizer(tmp / FAST_TOKENIZER_DIR, cfg.action_horizon, args.dims, seed=0)
        norm, meta = Normalizer(make_norm_stats(args.dims, 0), "quantile"), CheckpointMeta()
        model = random_model(cfg, seed=0, dtype=dtype).to(device)
    tokenizer = PromptTokenizer(tokenizer_path, cfg.max_token_len, cfg.variant, meta.provenance.prompt_style)
    parser = make_action_parser(source, options, cfg, tokenizer, norm)
    gap = OPENPI_DECODE_POSITION_GAP if meta.provenance.source == "openpi" else 0

    def policy(engine):
        return Policy(cfg, engine, tokenizer, norm, None, options, meta=meta, action_parser=parser)

    tokens = args.decode_tokens
    if args.artifacts:
        from vla_ros.tools.infer import policy_options

        optimised = Policy.from_artifacts(
            args.artifacts,
            policy_options(args, pack_weights=args.pack_weights, max_decoding_steps=tokens, temperature=0.0),
        )
    else:
        # A packed copy shares every unpacked tensor with `model`, which the baseline may reuse.
        fast = pack_for_cpu(model, "compiled") if args.pack_weights else model
        decoder = StaticDecoder(fast, tokens, 0.0, device, seed=0, position_gap=gap)
        optimised = policy(
            DecodeEngine(TorchPrefixRuntime(fast), decoder, resolve_decode(args.suffix, device))
        )
    n_params = sum(p.numel() for p in model.parameters())
    baseline_dtype = dtype
    if args.baseline_precision == "fp32" or (args.baseline_precision == "auto" and n_params < 1e9):
        baseline_dtype = torch.float32
    if baseline_dtype == dtype:
        baseline_model = model
    elif args.checkpoint:
        baseline_model, _ = load_model(args.checkpoint, dtype=baseline_dtype, device=device)
    else:
        baseline_model = random_model(cfg, seed=0, dtype=baseline_dtype).to(device)
    baseline = policy(ReferenceDecodeEngine(baseline_model, tokens, position_gap=gap))
    info = {
        "config": cfg.name,
        "decode_tokens": tokens,
        "params": n_params,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "optimised": optimised.engine.describe(),
        "baseline": baseline.engine.describe(),
    }
    return optimised, baseline, cfg, info


def timed_decode(policy, obs, tokens: int) -> tuple[dict[str, float], np.ndarray]:
    """One inference's stage times and its generated ids: exactly `tokens` greedy tokens, no stop."""
    clock = time.perf_counter
    engine = policy.engine
    start = clock()
    inputs, _ = policy.preprocess(obs)
    t_pre = clock()
    engine.encode_prefix(inputs)
    engine.synchronize()
    t_prefix = clock()
    result = engine.decode((), tokens)
    engine.synchronize()
    end = clock()
    if result.num_tokens != tokens:
        from vla_ros.errors import EngineError

        raise EngineError(f"{engine.name} decoded {result.num_tokens} tokens, asked for {tokens}")
    return {
        "preprocess": t_pre - start,
        "prefix": t_prefix - t_pre,
        "decode": end - t_prefix,
        "per_token": (end - t_prefix) / (tokens - 1),
        "total": end - start,
    }, result.ids


def measure_decode(policies: dict, obs, runs: int, warmup: int, tokens: int) -> dict:
    """Per-stage percentiles and the last ids for each policy, runs interleaved as in `measure`."""
    for _ in range(warmup):
        for policy in policies.values():
            timed_decode(policy, obs, tokens)
    samples = {name: {stage: [] for stage in DECODE_STAGES} for name in policies}
    ids = {}
    for _ in range(runs):
        for name, policy in policies.items():
            times, ids[name] = timed_decode(policy, obs, tokens)
            for stage in DECODE_STAGES:
                samples[name][stage].append(times[stage])
    results = {name: {stage: percentiles(v) for stage, v in per.items()} for name, per in samples.items()}
    return results, ids


def decode_arithmetic_bound(policy, obs, tokens: int, packed: bool) -> dict:
    """Prefix FLOPs and their matmul bound; per decode step max(FLOPs / peak, bytes / bandwidth)."""
    from vla_ros.tools.roofline import decode_bound, inference_flops, matmul_peak_flops, memory_bandwidth

    inputs, _ = policy.preprocess(obs)
    engine = policy.engine
    dtype = engine.decoder.dtype
    cameras, prompt = int(inputs.image_masks.sum()), int(inputs.token_masks.sum())
    flops = inference_flops(policy.cfg, cameras, prompt, decode_tokens=tokens)
    peak = matmul_peak_flops(dtype, engine.device, packed=packed)
    bandwidth = memory_bandwidth(engine.device)
    element = engine.decoder.keys.element_size()
    prefix_tokens = cameras * policy.cfg.vision.num_tokens + prompt
    step = decode_bound(policy.cfg, prefix_tokens, tokens, element, peak, bandwidth)
    return {
        "prefix_flops": flops["prefix"],
        "decode_flops": flops["decode"],
        "dtype": str(dtype).replace("torch.", ""),
        "peak_flops": peak,
        "prefix_bound_s": flops["prefix"] / peak,
        "per_token": step,
        "bound_s": flops["prefix"] / peak + (tokens - 1) * step["bound_s"],
    }


def _seconds(value: float) -> str:
    if value >= 1.0:
        return f"{value:.2f} s"
    return f"{value * 1e3:.2f} ms" if value >= 1e-3 else f"{value * 1e6:.1f} us"


def _agreeing(a: np.ndarray, b: np.ndarray) -> int:
    """Leading tokens two id sequences share."""
    differ = np.nonzero(a[: len(b)] != b[: len(a)])[0]
    return int(differ[0]) if differ.size else min(len(a), len(b))


def print_decode_report(info: dict, results: dict, checks: list[tuple[str, bool, str]]) -> None:
    tokens = info["decode_tokens"]
    print(
        f"\nvla-ros bench: {info['config']} ({info['params'] / 1e6:.1f} M params) on {info['device']}, "
        f"{info['threads']} threads, {info['cameras']} cameras, {tokens} tokens decoded per inference "
        "(greedy, no early stop)"
    )
    print(f"  optimised: {info['optimised']}")
    print(f"  baseline:  {info['baseline']}")
    sides = ("optimised", "baseline")
    header = f"{'stage':<12}" + "".join(f"{name + ' p50':>16}{'p99':>12}" for name in sides)
    print(header + f"{'speedup':>10}")
    for stage in DECODE_STAGES:
        o, b = results["optimised"][stage], results["baseline"][stage]
        ratio = b["p50"] / o["p50"] if o["p50"] > 0 else float("inf")
        label = "per token" if stage == "per_token" else stage
        print(
            f"{label:<12}{_seconds(o['p50']):>16}{_seconds(o['p99']):>12}"
            f"{_seconds(b['p50']):>16}{_seconds(b['p99']):>12}{ratio:>9.2f}x"
        )
    print(
        f"tokens per inference: optimised {results['tokens']['optimised']}, baseline "
        f"{results['tokens']['baseline']} ({tokens - 1} decode steps; per token = decode / steps); "
        f"greedy ids agree on {results['ids_agree']} of {tokens}; "
        f"peak memory (RSS) {results['peak_rss_gb']:.2f} GB"
    )
    for name, ok, detail in checks:
        print(f"check {'PASS' if ok else 'FAIL'}: {name}: {detail}")
    r, step = info["roofline"], info["roofline"]["per_token"]
    o, b = results["optimised"], results["baseline"]
    print(
        f"arithmetic: prefix {r['prefix_flops'] / 1e9:.3f} GFLOP, bounded at {_seconds(r['prefix_bound_s'])} "
        "by "
        f"this machine's {r['dtype']} matmul peak {r['peak_flops'] / 1e12:.2f} TFLOP/s (measured now); the "
        f"optimised prefix is at {r['prefix_bound_s'] / o['prefix']['p50']:.0%} of that bound"
    )
    print(
        f"per token: {step['step_flops'] / 1e9:.4f} GFLOP and {step['step_bytes'] / 1e6:.1f} MB read "
        "(weights + "
        f"cache, {r['dtype']}); bound max(compute {_seconds(step['compute_bound_s'])}, memory "
        f"{_seconds(step['memory_bound_s'])} at {step['bandwidth'] / 1e9:.1f} GB/s measured now) = "
        f"{_seconds(step['bound_s'])}; per token the optimised decode is at "
        f"{step['bound_s'] / o['per_token']['p50']:.0%} of that bound, the baseline at "
        f"{step['bound_s'] / b['per_token']['p50']:.0%}; optimised vs baseline per token "
        f"{results['per_token_speedup']:.2f}x"
    )


def run_decode(args: argparse.Namespace, cfg) -> int:
    """`vla-ros bench` for a decode model: prefix, decode and per-token times vs the concatenating cache."""
    check_decode_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        optimised, baseline, cfg, info = build_decode_policies(args, cfg, Path(tmp))
        info["build_s"] = time.perf_counter() - start
        obs = synthetic_observation(cfg, args.dims, args.cameras)
        info["cameras"] = len(obs.images)
        print(
            f"measuring optimised and baseline interleaved ({args.warmup} warm-up + {args.runs} runs each, "
            f"{args.decode_tokens} tokens per inference)",
            file=sys.stderr,
            flush=True,
        )
        policies = {"optimised": optimised, "baseline": baseline}
        results, ids = measure_decode(policies, obs, args.runs, args.warmup, args.decode_tokens)
    o, bl = results["optimised"], results["baseline"]
    results["tokens"] = {name: len(v) for name, v in ids.items()}
    results["ids_agree"] = _agreeing(ids["optimised"], ids["baseline"])
    results["per_token_speedup"] = bl["per_token"]["p50"] / o["per_token"]["p50"]
    results["peak_rss_gb"] = peak_rss_gb()

    def not_slower(stage: str) -> tuple[bool, str]:
        ratio = bl[stage]["p50"] / o[stage]["p50"]
        return ratio >= 1.0 - NOISE_MARGIN, f"{ratio:.2f}x"

    baseline_dtype = str(info["baseline"].get("dtype", "")).replace("torch.", "")
    checks = [
        ("decode per token not slower than the concatenating cache", *not_slower("per_token")),
        (f"prefix not slower than eager {baseline_dtype}", *not_slower("prefix")),
    ]
    info["roofline"] = decode_arithmetic_bound(
        optimised, obs, args.decode_tokens, bool(info["optimised"].get("packed_weights"))
    )
    print_decode_report(info, results, checks)
    if args.json:
        payload = {
            "info": info,
            "results": results,
            "checks": [dataclasses.asdict(_Check(*c)) for c in checks],
        }
        _write_json(args.json, payload)
    return 0
