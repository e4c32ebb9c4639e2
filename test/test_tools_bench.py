"""`vla-ros bench`: the figures it writes, and the deployed (artifact) form against its checkpoint."""

import json

import pytest

from vla_ros.engines.onnx_export import export_artifact, ExportOptions
from vla_ros.tools import cli

STAGES = {"preprocess", "prefix", "suffix", "postprocess", "total"}


def _bench(tmp_path, *args) -> dict:
    out = tmp_path / "bench.json"
    assert cli.main(["bench", *args, "--runs", "2", "--warmup", "1", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_bench_reports_every_stage_and_the_checks(tmp_path, capsys):
    report = _bench(tmp_path, "--config", "pi0-tiny")
    results = report["results"]
    for side in ("optimised", "baseline"):
        assert set(results[side]) == STAGES
        for stage in STAGES:
            p = results[side][stage]
            assert 0 < p["p50"] <= p["p90"] <= p["p99"]
    # pi0-tiny runs fp32 on both sides: the optimised pipeline equals the reference.
    assert results["max_abs_diff"] <= 1e-4
    checks = {c["name"]: c for c in report["checks"]}
    assert "suffix not slower than baseline" in checks
    assert all(c["detail"].endswith("x") for c in checks.values())
    roofline = report["info"]["roofline"]
    assert roofline["bound_s"] == pytest.approx(roofline["flops"] / roofline["peak_flops"])
    printed = capsys.readouterr().out
    assert "speedup" in printed and "check " in printed and "of that bound" in printed


def test_bench_runs_an_artifact_against_its_checkpoint(tiny_checkpoint, tmp_path):
    artifact = tmp_path / "artifact"
    export_artifact(tiny_checkpoint, artifact, ExportOptions(precision="fp32"))
    report = _bench(tmp_path, "--checkpoint", str(tiny_checkpoint), "--artifacts", str(artifact))
    assert report["info"]["optimised"]["prefix"] == "onnxruntime"
    assert report["info"]["baseline"]["engine"] == "reference"
    assert report["results"]["max_abs_diff"] <= 1e-4  # fp32 ONNX prefix vs the PyTorch reference


def test_bench_artifacts_need_their_checkpoint(tmp_path, capsys):
    assert cli.main(["bench", "--artifacts", str(tmp_path)]) == 2
    assert "--artifacts" in capsys.readouterr().err


def test_bench_steps_default_to_the_checkpoints(tmp_path, capsys):
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "pi0-tiny", seed=0, dims=14, layout="lerobot")
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "num_inference_steps": 3}))
    report = _bench(tmp_path, "--checkpoint", str(checkpoint))
    # Both sides run LeRobot's 3 steps: same fp32 actions (10 on one side would differ).
    assert report["info"]["steps"] == 3 and report["results"]["max_abs_diff"] <= 1e-4
    assert "3 Euler steps" in capsys.readouterr().out
    assert _bench(tmp_path, "--checkpoint", str(checkpoint), "--steps", "4")["info"]["steps"] == 4
    assert _bench(tmp_path, "--config", "pi0-tiny")["info"]["steps"] == 10
    assert cli.main(["bench", "--config", "pi0-tiny", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


DECODE_STAGES = {"preprocess", "prefix", "decode", "per_token", "total"}


def test_bench_decode_model_against_the_concatenating_cache(tmp_path, capsys):
    report = _bench(tmp_path, "--config", "pi0fast-tiny", "--decode-tokens", "6")
    info, results = report["info"], report["results"]
    assert info["decode_tokens"] == 6 and info["optimised"]["max_new_tokens"] == 6
    assert info["baseline"]["decode"] == "concatenating cache"
    for side in ("optimised", "baseline"):
        assert set(results[side]) == DECODE_STAGES
        for stage in DECODE_STAGES:
            p = results[side][stage]
            assert 0 < p["p50"] <= p["p90"] <= p["p99"]
        # 6 tokens: the first from the prefix's logits, then 5 steps.
        assert results[side]["per_token"]["p50"] == pytest.approx(results[side]["decode"]["p50"] / 5)
    # Random weights, no early stop: both sides decode all 6, and in fp32 the same greedy ids.
    assert results["tokens"] == {"optimised": 6, "baseline": 6} and results["ids_agree"] == 6
    speedup = results["baseline"]["per_token"]["p50"] / results["optimised"]["per_token"]["p50"]
    assert results["per_token_speedup"] == pytest.approx(speedup)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["decode per token not slower than the concatenating cache"]["detail"] == f"{speedup:.2f}x"
    roofline = info["roofline"]
    step = roofline["per_token"]
    assert step["bound_s"] == max(step["compute_bound_s"], step["memory_bound_s"]) > 0
    assert roofline["bound_s"] == pytest.approx(roofline["prefix_bound_s"] + 5 * step["bound_s"])
    printed = capsys.readouterr().out
    assert "per token" in printed and "optimised vs baseline per token" in printed
    assert printed.count("of that bound") == 2


@pytest.mark.parametrize("args, parameter", [
    (["--decode-tokens", "1"], "--decode-tokens"),
    (["--steps", "3"], "--steps"),
    (["--suffix", "compiled"], "--suffix"),
])
def test_bench_decode_model_refuses_what_it_cannot_measure(args, parameter, capsys):
    assert cli.main(["bench", "--config", "pi0fast-tiny", *args]) == 2
    err = capsys.readouterr().err
    assert parameter in err and len(err.strip().splitlines()) == 1


def test_bench_decode_model_runs_an_artifact_against_its_checkpoint(tmp_path):
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "pi0fast-tiny", seed=0, dims=14)
    artifact = tmp_path / "artifact"
    export_artifact(checkpoint, artifact, ExportOptions(precision="fp32"))
    report = _bench(tmp_path, "--checkpoint", str(checkpoint), "--artifacts", str(artifact),
                    "--decode-tokens", "4")
    info, results = report["info"], report["results"]
    assert info["optimised"]["prefix"] == "onnxruntime" and info["optimised"]["max_new_tokens"] == 4
    assert info["baseline"]["engine"] == "reference"
    # fp32 ONNX prefix (its first logits too) + static cache vs the PyTorch reference: the same greedy ids.
    assert results["tokens"] == {"optimised": 4, "baseline": 4} and results["ids_agree"] == 4


def test_bench_smolvla_against_its_reference_engine(tmp_path, capsys):
    """A named SmolVLA config (random weights): the optimised engine beside the eager reference, same run."""
    from vla_ros.model.config import get_config
    from vla_ros.tools.roofline import inference_flops

    report = _bench(tmp_path, "--config", "smolvla-tiny", "--rtc", "trained")
    info, results = report["info"], report["results"]
    assert info["optimised"]["engine"] == "optimized" and info["baseline"]["engine"] == "reference"
    for side in ("optimised", "baseline", "optimised_rtc"):
        assert set(results[side]) == STAGES
    assert results["max_abs_diff"] <= 1e-4  # fp32 on both sides (a tiny model)
    # The synthetic observation: 3 cameras, its prompt's tokens (the roofline counts what was encoded).
    flops = info["roofline"]
    assert flops["prefix_flops"] + flops["suffix_flops"] == flops["flops"]
    assert flops["suffix_flops"] == inference_flops(get_config("smolvla-tiny"), 3, 1)["suffix"]
    assert "Real-Time Chunking (trained" in capsys.readouterr().out
