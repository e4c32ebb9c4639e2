#!/usr/bin/env python3
r"""Golden Real-Time Chunking (RTC) fixtures from LeRobot 0.6.1's own RTC path (pi0, pi0.5).

RUN ONLY INSIDE A LEROBOT 0.6.1 VIRTUAL ENVIRONMENT (the one of
scripts/make_lerobot_fixtures.py, whose helpers this script imports):

    /tmp/lrvenv/bin/python scripts/make_lerobot_rtc_fixtures.py          # from the repository root
    /tmp/lrvenv/bin/python scripts/make_lerobot_rtc_fixtures.py --check-determinism

It writes `test/fixtures/lerobot_0_6_1/rtc/<family>/` (`--out`, `--family pi0
pi05`) from the committed tiny fixture `test/fixtures/lerobot_0_6_1/<family>/`:
the policy is reloaded from that folder exactly as make_lerobot_fixtures.py
reloads it (`PI0Policy` / `PI05Policy.from_pretrained` under the same size
patches 1-3, its preprocessor with the fixture's tokenizer), and every
reloaded parameter is checked equal to the folder's `model.safetensors`. The
observation (`observation.npz`, the "full" one) and the noise (`noise.npy`)
are that fixture's; the unguided chunk must match its
`expected_actions_normalized.npy` (to 1e-5: it differs by ~1e-6 of float
rounding from the generating process's value). pi0.5's fixture uses relative
actions: every chunk here is in its normalized relative space (before the
postprocessor adds the state back), as is the leftover LeRobot's rollout
engine passes (`reanchor_relative_rtc_prefix`).

Each case sets `policy.config.rtc_config = RTCConfig(...)`, calls LeRobot's
`policy.init_rtc_processor()` and runs
`policy.predict_action_chunk(batch, noise=..., inference_delay=d,
prev_chunk_left_over=prev[, execution_horizon=...])` under `torch.no_grad()`
(LeRobot's RTC needs autograd; it cannot run under `torch.inference_mode()`),
float32, CPU, one thread. Nothing in LeRobot is patched beyond the sizes.
`max_guidance_weight = 0` is rejected by `RTCConfig.__post_init__`, so those
cases set the field after construction (the computation then gives a guidance
weight of 0 at every step).

The previous chunk's leftover (the guidance target) is built in LeRobot's
normalized model space: the unguided chunk shifted by SHIFT rows (rows
SHIFT..49, as if SHIFT actions had been executed since it was produced) plus
a smooth offset (`prev_offset`), then, as LeRobot's rollout engine does
(`rollout/inference/rtc.py::_normalize_prev_actions_length`, re-implemented
here because that module needs `datasets`), truncated / zero-padded to
`execution_horizon` rows. The file of each case is the exact tensor passed
(`[rows, 14]`); LeRobot pads it inside `RTCProcessor.denoise_step` with zeros
to `[50, 32]` (rows and the padded action dimensions).

Also recorded, for one case (`debug_case`), with LeRobot's own debug tracker
(`RTCConfig.debug=True`, which records and changes nothing; checked): the
first Euler step's prefix weights, x1 estimate, weighted error, the
"vector-Jacobian product" correction, guidance weight and guided velocity,
and every step's time and guidance weight. The script checks (and the README
states) that LeRobot's correction equals its weighted error exactly, i.e. its
VJP is the identity, and reproduces every guided case with an independent
loop written from the memo's formula on LeRobot's own denoiser.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
import shutil
import sys
import tempfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_lerobot_fixtures as base  # noqa: E402  (helpers: patches, writers, sizes)

REPO = base.REPO
FAMILIES = ("pi0", "pi05")
DEFAULT_OUT = base.DEFAULT_OUT / "rtc"
SHIFT = 4  # rows of the previous (here: the unguided) chunk already executed
EXECUTION_HORIZON = 25
DEBUG_CASE = "exp_d3_w10"
# Must-hold: with d actions guided at full weight and a large guidance weight the first d actions
# follow the previous chunk. Tolerance on max |new[:d] - prev[:d]| (normalized units), for the cases
# listed in MUST_HOLD_CASES (prev offsets are O(0.5), the unguided chunk is O(1)).
MUST_HOLD_TOL = 0.05
MUST_HOLD_CASES = ("exp_d3_w10", "exp_d10_w10", "linear_d3_w10", "linear_d10_w10", "zeros_d10_w10")
# Independent loop (memo formula on LeRobot's denoiser) vs LeRobot: float32 rounding only.
REFERENCE_TOL = 1e-5


def _say(message: str) -> None:
    print(f"[make_lerobot_rtc_fixtures] {message}", flush=True)


def cases():
    """name -> parameters. prev: 'horizon' = leftover truncated/zero-padded to execution_horizon rows
    (what the rollout engine passes), 'full' = the whole leftover (46 rows), 'short' = its first 8 rows."""
    out = {}
    for schedule in ("EXP", "LINEAR"):
        for d in (0, 3, 10):
            for w in (10.0, 0.0):
                out[f"{schedule.lower()}_d{d}_w{w:g}"] = dict(
                    schedule=schedule, inference_delay=d, execution_horizon=EXECUTION_HORIZON,
                    max_guidance_weight=w, prev="horizon", pass_execution_horizon=False,
                )
    extra = {
        "ones_d3_w10": dict(schedule="ONES", inference_delay=3),
        "zeros_d3_w10": dict(schedule="ZEROS", inference_delay=3),
        "zeros_d10_w10": dict(schedule="ZEROS", inference_delay=10),
        "exp_d30_w10": dict(schedule="EXP", inference_delay=30),  # d >= execution_horizon
        "exp_d10_w100": dict(schedule="EXP", inference_delay=10, max_guidance_weight=100.0),
        "exp_d10_w1": dict(schedule="EXP", inference_delay=10, max_guidance_weight=1.0),
        # the whole 46-row leftover with execution_horizon passed as a kwarg: equals linear_d10_w10
        "linear_d10_w10_fullprev": dict(schedule="LINEAR", inference_delay=10, prev="full",
                                        pass_execution_horizon=True),
        # an 8-row leftover: LeRobot clips execution_horizon to 8
        "linear_d3_w10_shortprev": dict(schedule="LINEAR", inference_delay=3, prev="short"),
        # RTCConfig() defaults: LINEAR, max_guidance_weight 10, execution_horizon 10
        "default_config_d3": dict(schedule="LINEAR", inference_delay=3, execution_horizon=10),
    }
    for name, params in extra.items():
        full = dict(schedule="EXP", inference_delay=0, execution_horizon=EXECUTION_HORIZON,
                    max_guidance_weight=10.0, prev="horizon", pass_execution_horizon=False)
        full.update(params)
        out[name] = full
    return out


def normalize_prev_actions_length(prev, target_steps: int):
    """LeRobot 0.6.1 rollout/inference/rtc.py::_normalize_prev_actions_length (verbatim logic)."""
    import torch

    steps, action_dim = prev.shape
    if steps == target_steps:
        return prev
    if steps > target_steps:
        return prev[:target_steps]
    padded = torch.zeros((target_steps, action_dim), dtype=prev.dtype, device=prev.device)
    padded[:steps] = prev
    return padded


def prev_offset(rows: int, dims: int):
    """A smooth offset (normalized units) added to the shifted unguided chunk."""
    import numpy as np

    i = np.arange(rows, dtype=np.float64)[:, None]
    j = np.arange(dims, dtype=np.float64)[None, :]
    return (0.3 + 0.3 * np.sin(2 * np.pi * (i / rows + j / dims)) * np.cos(0.5 + 0.2 * j)).astype(np.float32)


def load_policy(family: str, policy_dir: Path, sizes):
    import torch
    from safetensors.torch import load_file

    from lerobot.policies.factory import make_pre_post_processors

    _, Policy, _ = base.family_classes(family)
    with base.tiny_lerobot(sizes):
        policy = Policy.from_pretrained(policy_dir)
    policy.eval()
    stored = load_file(str(policy_dir / "model.safetensors"))
    loaded = policy.state_dict()
    for key, value in stored.items():
        assert key in loaded and torch.equal(loaded[key], value), f"{key} did not reload exactly"
    pre, post = make_pre_post_processors(
        policy.config,
        pretrained_path=str(policy_dir),
        preprocessor_overrides={"tokenizer_processor": {"tokenizer_name": str(policy_dir / "tokenizer")}},
    )
    assert policy.model.config is policy.config, "the model does not share the policy's config"
    return policy, pre, post


def make_batch(policy_dir: Path, preprocessor):
    import numpy as np
    import torch

    from lerobot.policies.utils import prepare_observation_for_inference

    with np.load(policy_dir / "observation.npz") as data:
        frame = {k: data[k].copy() for k in data.files if k.startswith("observation.images.")}
        frame["observation.state"] = data["state"].copy()
        task = str(data["prompt"])
    with torch.no_grad():
        batch = prepare_observation_for_inference(frame, torch.device("cpu"), task, None)
        return preprocessor(batch)


def set_rtc(policy, *, schedule="LINEAR", max_guidance_weight=10.0, execution_horizon=10, debug=False):
    from lerobot.configs import RTCAttentionSchedule
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    config = RTCConfig(
        enabled=True,
        prefix_attention_schedule=RTCAttentionSchedule[schedule],
        max_guidance_weight=max_guidance_weight if max_guidance_weight > 0 else 10.0,
        execution_horizon=execution_horizon,
        debug=debug,
    )
    if max_guidance_weight <= 0:
        config.max_guidance_weight = float(max_guidance_weight)  # __post_init__ rejects <= 0
    policy.config.rtc_config = config
    policy.init_rtc_processor()
    return config


def run_case(policy, batch, noise, prev, params, debug=False):
    import torch

    set_rtc(
        policy,
        schedule=params["schedule"],
        max_guidance_weight=params["max_guidance_weight"],
        execution_horizon=params["execution_horizon"],
        debug=debug,
    )
    kwargs = {"inference_delay": params["inference_delay"], "prev_chunk_left_over": prev[None].clone()}
    if params["pass_execution_horizon"]:
        kwargs["execution_horizon"] = params["execution_horizon"]
    with torch.no_grad():
        out = policy.predict_action_chunk(batch, noise=noise.clone(), **kwargs)
    steps = policy.rtc_processor.get_all_debug_steps() if debug else None
    return out[0].clone(), steps


def model_velocity_fn(family: str, policy, batch):
    """LeRobot's own pi0 / pi0.5 denoiser with its prefix cached, as sample_actions sets it up (for
    the independent reference loop; the same calls as sample_actions makes before euler_integrate)."""
    import torch

    from lerobot.policies.pi0.modeling_pi0 import make_att_2d_masks, prepare_attention_masks_4d

    model = policy.model
    with torch.no_grad():
        images, img_masks = policy._preprocess_images(batch)  # noqa: SLF001
        tokens = batch["observation.language.tokens"]
        masks = batch["observation.language.attention_mask"]
        state = policy.prepare_state(batch) if family == "pi0" else None
        prefix_embs, prefix_pad_masks, prefix_att_masks = model.embed_prefix(images, img_masks, tokens, masks)
        att = prepare_attention_masks_4d(make_att_2d_masks(prefix_pad_masks, prefix_att_masks))
        positions = torch.cumsum(prefix_pad_masks, dim=1) - 1
        language_model = model.paligemma_with_expert.paligemma.model.language_model
        language_model.config._attn_implementation = "eager"  # noqa: SLF001 (as sample_actions sets it)
        _, past = model.paligemma_with_expert.forward(
            attention_mask=att, position_ids=positions, past_key_values=None,
            inputs_embeds=[prefix_embs, None], use_cache=True,
        )

    def velocity(x_t, time: float):
        t = torch.tensor(time, dtype=torch.float32).expand(x_t.shape[0])
        kwargs = {"state": state} if family == "pi0" else {}
        return model.denoise_step(prefix_pad_masks=prefix_pad_masks, past_key_values=past,
                                  x_t=x_t, timestep=t, **kwargs)

    return velocity


def reference_weights(schedule: str, d: int, end: int, total: int):
    """The memo's closed form of LeRobot's get_prefix_weights (end <= total)."""
    import numpy as np

    d = min(d, end)
    w = np.zeros(total, np.float32)
    if schedule == "ZEROS":
        w[:d] = 1
    elif schedule == "ONES":
        w[:end] = 1
    else:
        w[:d] = 1
        i = np.arange(d, end)
        lin = (end - i) / (end - d + 1)
        w[d:end] = lin if schedule == "LINEAR" else lin * np.expm1(lin) / (math.e - 1)
    return w


def reference_guided(velocity, noise, target, weights, wmax: float, num_steps: int, paper_vjp=False):
    """Independent guided Euler loop (time 1 -> 0). LeRobot's variant: correction = weighted error
    (identity Jacobian). paper_vjp=True: the paper's / Kinetix's VJP through the denoiser instead."""
    import torch

    W = torch.as_tensor(weights)[None, :, None]
    dt = -1.0 / num_steps
    x = noise.clone()
    for step in range(num_steps):
        time = 1.0 + step * dt
        tau = 1.0 - time
        if tau == 0.0:
            g = wmax
        else:
            g = min(((1 - tau) ** 2 + tau**2) / (tau * (1 - tau)), wmax)
        if paper_vjp:
            with torch.enable_grad():
                xg = x.clone().requires_grad_(True)
                v = velocity(xg, time)
                x1 = xg - time * v
                err = ((target - x1) * W).detach()
                corr = torch.autograd.grad(x1, xg, err)[0]
            v = v.detach()
        else:
            with torch.no_grad():
                v = velocity(x, time)
                corr = (target - (x - time * v)) * W
        x = x + dt * (v - g * corr)
    return x


def make(family: str, out: Path, sizes) -> dict:
    import numpy as np
    import torch

    policy_dir = base.DEFAULT_OUT / family
    folder = out / family
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    policy, pre, _post = load_policy(family, policy_dir, sizes)
    batch = make_batch(policy_dir, pre)
    noise = torch.from_numpy(np.load(policy_dir / "noise.npy"))[None]
    chunk, action_dim = policy.config.chunk_size, policy.config.output_features["action"].shape[0]
    max_dim = policy.config.max_action_dim
    num_steps = policy.config.num_inference_steps

    # (i) unguided: rtc_config None, then RTC enabled without a previous chunk.
    policy.config.rtc_config = None
    policy.init_rtc_processor()
    with torch.no_grad():
        unguided = policy.predict_action_chunk(batch, noise=noise.clone())[0].clone()
    committed = torch.from_numpy(np.load(policy_dir / "expected_actions_normalized.npy"))
    committed_diff = float((unguided - committed).abs().max())
    # Not bitwise: ~1e-6 (float rounding; the fixture was computed in its generating process).
    assert committed_diff < 1e-5, f"unguided chunk differs from the {family} fixture's: {committed_diff:.2e}"
    set_rtc(policy, schedule="EXP", execution_horizon=EXECUTION_HORIZON)
    with torch.no_grad():
        no_prev = policy.predict_action_chunk(batch, noise=noise.clone(), inference_delay=3,
                                              prev_chunk_left_over=None)[0]
    assert torch.equal(no_prev, unguided), "RTC without a previous chunk is not the unguided loop"

    # The previous chunk's leftover, normalized space.
    leftover = unguided[SHIFT:] + torch.from_numpy(prev_offset(chunk - SHIFT, action_dim))  # [46, 14]
    prevs = {
        "horizon": normalize_prev_actions_length(leftover, EXECUTION_HORIZON),
        "full": leftover.clone(),
        "short": leftover[:8].clone(),
    }

    velocity = model_velocity_fn(family, policy, batch)
    results, meta_cases = {}, {}
    for name, params in cases().items():
        prev = prevs[params["prev"]]
        actions, _ = run_case(policy, batch, noise, prev, params)
        results[name] = actions
        # effective horizon and weights, as denoise_step computes them
        end = min(params["execution_horizon"], prev.shape[0])
        weights = reference_weights(params["schedule"], params["inference_delay"], end, chunk)
        lerobot_w = policy.rtc_processor.get_prefix_weights(params["inference_delay"], end, chunk).numpy()
        assert np.allclose(weights, lerobot_w, atol=1e-6), (name, weights, lerobot_w)
        target = torch.zeros(1, chunk, max_dim)
        target[0, : prev.shape[0], :action_dim] = prev
        ref = reference_guided(velocity, noise, target, lerobot_w, params["max_guidance_weight"], num_steps)
        ref_err = float((ref[0, :, :action_dim] - actions).abs().max())
        assert ref_err < REFERENCE_TOL, f"{name}: independent loop differs from LeRobot by {ref_err:.2e}"
        d = min(params["inference_delay"], end)
        p = prev[: min(d, prev.shape[0])]
        follow = float((actions[: p.shape[0]] - p).abs().max()) if d > 0 else None
        unguided_gap = float((unguided[: p.shape[0]] - p).abs().max()) if d > 0 else None
        meta_cases[name] = {
            "file": f"{name}.npy",
            "prev_file": f"prev_{params['prev']}.npy",
            "schedule": params["schedule"],
            "inference_delay": params["inference_delay"],
            "execution_horizon_config": params["execution_horizon"],
            "execution_horizon_kwarg": (
                params["execution_horizon"] if params["pass_execution_horizon"] else None
            ),
            "execution_horizon_effective": end,
            "max_guidance_weight": params["max_guidance_weight"],
            "prefix_weights": [float(f"{x:.8g}") for x in lerobot_w.tolist()],
            "max_abs_diff_vs_unguided": float((actions - unguided).abs().max()),
            "max_abs_err_first_d_vs_prev": follow,
            "unguided_max_abs_err_first_d_vs_prev": unguided_gap,
            "independent_loop_max_abs_diff": ref_err,
        }
        if params["max_guidance_weight"] == 0.0:
            assert torch.equal(actions, unguided), f"{name}: guidance weight 0 is not the unguided loop"
    # edge equalities
    assert torch.equal(results["linear_d10_w10_fullprev"], results["linear_d10_w10"]), "full prev != padded"
    for name in MUST_HOLD_CASES:
        err = meta_cases[name]["max_abs_err_first_d_vs_prev"]
        assert err is not None and err < MUST_HOLD_TOL, f"must-hold: {name} first d off by {err:.3e}"
    _say(f"{family} first-d errors: " + ", ".join(
        f"{n}={m['max_abs_err_first_d_vs_prev']:.3e} "
        f"(unguided {m['unguided_max_abs_err_first_d_vs_prev']:.3f})"
        for n, m in meta_cases.items() if m["max_abs_err_first_d_vs_prev"] is not None))

    # Paper / Kinetix VJP (not LeRobot): how far LeRobot's identity-Jacobian shortcut is from it.
    p = cases()[DEBUG_CASE]
    target = torch.zeros(1, chunk, max_dim)
    target[0, :EXECUTION_HORIZON, :action_dim] = prevs["horizon"]
    w = reference_weights(p["schedule"], p["inference_delay"], EXECUTION_HORIZON, chunk)
    paper = reference_guided(velocity, noise, target, w, p["max_guidance_weight"], num_steps, paper_vjp=True)
    paper = paper[0, :, :action_dim].clone()
    paper_vs_lerobot = float((paper - results[DEBUG_CASE]).abs().max())

    # Debug tracker for one case: first Euler step's internals.
    actions_dbg, steps = run_case(policy, batch, noise, prevs["horizon"], p, debug=True)
    assert torch.equal(actions_dbg, results[DEBUG_CASE]), "debug tracking changed the result"
    steps = sorted(steps, key=lambda s: -float(s.time))
    first = steps[0]
    assert float(first.time) == 1.0
    for s in steps:
        assert torch.equal(s.correction, s.err), "LeRobot's correction is not its weighted error"
    g0 = float(first.guidance_weight)
    unguided_v0 = first.v_t + g0 * first.correction  # v_guided = v - g * correction
    debug = {
        "weights": first.weights.reshape(-1).numpy().astype(np.float32),
        "x_t": noise[0].numpy(),
        "x1_t": first.x1_t[0].numpy(),
        "err": first.err[0].numpy(),
        "correction": first.correction[0].numpy(),
        "v_guided": first.v_t[0].numpy(),
        "v_unguided_reconstructed": unguided_v0[0].numpy(),
        "x_t_after_step": first.x_t[0].numpy(),
        "times": np.array([float(s.time) for s in steps], np.float64),
        "guidance_weights": np.array([float(s.guidance_weight) for s in steps], np.float32),
    }
    # the unguided velocity at step 0, straight from the denoiser
    with torch.no_grad():
        v0 = velocity(noise.clone(), 1.0)
    assert float((v0 - unguided_v0).abs().max()) < 1e-5

    # Write.
    base.save_npy(folder / "noise.npy", noise[0].numpy())
    base.save_npy(folder / "unguided.npy", unguided.numpy())
    for key, value in prevs.items():
        base.save_npy(folder / f"prev_{key}.npy", value.numpy())
    for name, actions in results.items():
        base.save_npy(folder / f"{name}.npy", actions.numpy())
    base.save_npy(folder / f"paper_vjp_{DEBUG_CASE}.npy", paper.numpy())
    base.save_npz(folder / f"debug_{DEBUG_CASE}.npz", debug)
    meta = {
        "lerobot_version": base._EXPECTED_LEROBOT,  # noqa: SLF001
        "family": family,
        "policy_class": type(policy).__name__,
        "policy": f"test/fixtures/lerobot_0_6_1/{family} ({type(policy).__name__}.from_pretrained, "
                  "tiny size patches)",
        "observation": f"test/fixtures/lerobot_0_6_1/{family}/observation.npz (the 'full' observation)",
        "noise_file": f"noise.npy (= {family}/noise.npy, [50, 32])",
        "unguided_file": f"unguided.npy ({family}/expected_actions_normalized.npy to within float rounding)",
        "use_relative_actions": bool(policy.config.use_relative_actions),
        "unguided_max_abs_diff_vs_source_fixture": committed_diff,
        "space": "LeRobot's normalized model space (before the postprocessor), action dims 0..13"
                 + (" (relative to the state: pi0.5 fixture uses relative actions)"
                    if policy.config.use_relative_actions else ""),
        "chunk_size": chunk,
        "action_dim": action_dim,
        "max_action_dim": max_dim,
        "num_inference_steps": num_steps,
        "time_convention": "t = 1 (noise) -> 0 (actions), dt = -1/num_steps, x <- x + dt * v",
        "prev_construction": {
            "shift": SHIFT,
            "formula": "leftover = unguided[shift:] + prev_offset (46 x 14); prev_horizon = leftover "
                       "truncated/zero-padded to execution_horizon rows (rollout engine); prev_full = "
                       "leftover; prev_short = leftover[:8]",
            "prev_offset": "0.3 + 0.3*sin(2*pi*(i/46 + j/14))*cos(0.5 + 0.2*j), i row, j dim",
            "padding_inside_lerobot": "denoise_step zero-pads to [50, 32]: rows past the leftover and "
                                      "action dims 14..31 are targets 0 (weighted by the row's weight)",
        },
        "predict_call": "policy.predict_action_chunk(batch, noise=noise[None], inference_delay=d, "
                        "prev_chunk_left_over=prev[None]) (+ execution_horizon=E when "
                        "execution_horizon_kwarg is set), torch.no_grad(), fp32 CPU, 1 thread",
        "max_guidance_weight_0_note": "RTCConfig rejects <= 0; set after construction",
        "must_hold": {"cases": list(MUST_HOLD_CASES), "tolerance_max_abs": MUST_HOLD_TOL},
        "independent_loop_tolerance": REFERENCE_TOL,
        "lerobot_correction_equals_weighted_error": True,
        "debug_case": DEBUG_CASE,
        "debug_file": f"debug_{DEBUG_CASE}.npz",
        "debug_first_step_guidance_weight": g0,
        "paper_vjp_file": f"paper_vjp_{DEBUG_CASE}.npy (NOT LeRobot: true VJP through the denoiser)",
        "paper_vjp_max_abs_diff_vs_lerobot": paper_vs_lerobot,
        "cases": meta_cases,
    }
    base.save_json(folder / "expected_meta.json", meta)
    write_readme(folder, family, meta)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    size = sum(q.stat().st_size for q in folder.rglob("*") if q.is_file())
    _say(f"{family}: wrote {folder} ({size} bytes); paper VJP vs LeRobot {paper_vs_lerobot:.3e}")
    return meta


def write_readme(folder: Path, family: str, meta: dict) -> None:
    rows = []
    for name, c in meta["cases"].items():
        follow = c["max_abs_err_first_d_vs_prev"]
        rows.append(
            f"| `{name}.npy` | {c['schedule']} | {c['inference_delay']} | {c['execution_horizon_effective']} "
            f"| {c['max_guidance_weight']:g} | `{c['prev_file']}` | "
            f"{'-' if follow is None else f'{follow:.2e}'} | {c['max_abs_diff_vs_unguided']:.3f} |"
        )
    relative = (
        "\n- This family's fixture uses relative actions: every chunk and `prev_*.npy` is in\n"
        "  the normalized *relative* space (the postprocessor adds the state back);\n"
        "  LeRobot's rollout engine re-anchors the absolute leftover to the new state\n"
        "  (`reanchor_relative_rtc_prefix`) before passing it."
        if meta["use_relative_actions"] else ""
    )
    unguided_diff = meta["unguided_max_abs_diff_vs_source_fixture"]
    text = f"""# LeRobot 0.6.1 Real-Time Chunking fixtures ({family}, tiny)

Written by `scripts/make_lerobot_rtc_fixtures.py` (run from the repository root with
a LeRobot 0.6.1 venv: `/tmp/lrvenv/bin/python scripts/make_lerobot_rtc_fixtures.py
--check-determinism`); do not edit by hand. Its docstring says how; in short:

- Policy, observation and noise: the committed tiny {family} fixture (`../../{family}/`),
  reloaded with `{meta['policy_class']}.from_pretrained` under
  make_lerobot_fixtures.py's size patches, its preprocessor with
  `../../{family}/tokenizer`. `unguided.npy` (this process's unguided chunk, which
  every guidance-weight-0 case equals bitwise) matches
  `../../{family}/expected_actions_normalized.npy` to {unguided_diff:.1e}
  (float rounding; checked < 1e-5).{relative}
- Every file is LeRobot's normalized chunk `[50, 14]` float32 (before the
  postprocessor) from `policy.predict_action_chunk(batch, noise=noise[None],
  inference_delay=d, prev_chunk_left_over=prev[None])` with
  `policy.config.rtc_config = RTCConfig(enabled=True, prefix_attention_schedule=...,
  max_guidance_weight=..., execution_horizon=...)` and `policy.init_rtc_processor()`,
  under `torch.no_grad()`, fp32, CPU, one thread.
- `prev_*.npy` are the exact `prev_chunk_left_over` tensors (normalized space, 14
  dims): `prev_horizon.npy` = (unguided rows {meta['prev_construction']['shift']}..49 +
  a smooth offset) truncated to `execution_horizon` = 25 rows, as LeRobot's rollout
  engine passes it; `prev_full.npy` all 46 rows; `prev_short.npy` the first 8.
  LeRobot zero-pads inside `denoise_step` to `[50, 32]`: the padded rows and action
  dims 14..31 are targets 0 wherever the row weight is non-zero.
- `max_guidance_weight = 0` cases set the field after `RTCConfig` construction (its
  `__post_init__` rejects <= 0); they equal `unguided.npy` exactly (checked).
- `debug_{meta['debug_case']}.npz`: LeRobot's debug tracker for the first Euler step
  (time 1.0) of that case: `weights` [50], `x_t` (the noise), `x1_t`, `err`,
  `correction`, `v_guided`, `x_t_after_step`, `v_unguided_reconstructed`
  (= v_guided + g * correction; checked against the denoiser), all [50, 32]; `times`
  and `guidance_weights` of all 10 steps. LeRobot's `correction` equals `err`
  exactly at every step (its "VJP" is the identity: `v_t` is computed before
  `x_t.requires_grad_`).
- `paper_vjp_{meta['debug_case']}.npy` is NOT LeRobot: the same case with the paper's /
  Kinetix's true vector-Jacobian product through the denoiser (max difference from
  LeRobot {meta['paper_vjp_max_abs_diff_vs_lerobot']:.3e}).
- Checked by the script: an independent guided loop (memo formula, identity Jacobian,
  on LeRobot's own {family} denoiser) reproduces every case to < {meta['independent_loop_tolerance']:g};
  `linear_d10_w10_fullprev` equals `linear_d10_w10` exactly; with the cases
  {', '.join(f'`{c}`' for c in meta['must_hold']['cases'])} the first d actions
  follow the previous chunk to < {meta['must_hold']['tolerance_max_abs']:g} (max abs).

`expected_meta.json` lists every case's parameters, effective horizon, prefix
weights and errors.

| file | schedule | d | horizon (effective) | max guidance | prev | err first d vs prev | diff vs unguided |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    (folder / "README.md").write_text(text)


TOP_README = """# LeRobot 0.6.1 Real-Time Chunking fixtures

Written by `scripts/make_lerobot_rtc_fixtures.py` (LeRobot 0.6.1 venv, from the
repository root); one folder per family, each with its own `README.md` and
`expected_meta.json`:

- `pi0/`: from the committed tiny pi0 fixture `../pi0/`.
- `pi05/`: from the committed tiny pi0.5 fixture `../pi05/` (relative actions: the
  chunks are in normalized relative space).

Same cases in both: guided (LeRobot's `RTCProcessor.denoise_step` through
`predict_action_chunk(..., inference_delay=d, prev_chunk_left_over=prev)`),
schedules EXP / LINEAR at d in {0, 3, 10}, execution_horizon 25, max guidance
weight 10 (default) and 0 (= unguided bitwise), plus ONES / ZEROS, d >= horizon,
a long and a short leftover, max guidance 1 and 100, RTCConfig defaults, and the
first Euler step's internals from LeRobot's debug tracker. LeRobot 0.6.1 has no
training-time (clamped-prefix) RTC for pi0 / pi0.5, so there is no fixture for it.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--check-determinism", action="store_true")
    args = parser.parse_args(argv)
    base._require_lerobot()  # noqa: SLF001

    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = base.tiny_sizes()
    out = args.out.resolve()
    for family in args.family:
        make(family, out, sizes)
    (out / "README.md").write_text(TOP_README)
    if args.check_determinism:
        with tempfile.TemporaryDirectory() as tmp:
            for family in args.family:
                make(family, Path(tmp), sizes)
                first, second = base.tree_digest(out / family), base.tree_digest(Path(tmp) / family)
                differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
                if differ:
                    message = f"make_lerobot_rtc_fixtures.py: {family} not reproducible: {differ}"
                    print(message, file=sys.stderr)
                    return 1
                _say(f"{family}: a second run gave byte-identical files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
