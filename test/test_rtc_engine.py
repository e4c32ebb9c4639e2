"""Real-Time Chunking in the engines: LeRobot 0.6.1 parity, the two loops, the must-hold properties.

Golden data: test/fixtures/lerobot_0_6_1/rtc/{pi0,pi05}/ (scripts/make_lerobot_rtc_fixtures.py ran
LeRobot 0.6.1's `RTCProcessor` through `predict_action_chunk` on the committed tiny LeRobot
policies; docs/reference/lerobot-rtc.md). Every chunk there is LeRobot's normalized [50, 14] output.
Tolerances: 1e-4 against LeRobot (fp32 end to end, as the unguided parity tests); the first d rows
follow the previous chunk to 0.05 normalized units with d rows at full weight and max guidance 10
(LeRobot's own residual is 0.011..0.026 on these fixtures).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from test_lerobot_parity import _observation, _policy, fixture, POLICY_FAMILIES
from vla_ros.engines.guidance import guidance_weight, ModelGuidance, prefix_weights
from vla_ros.types import ChunkGuidance, RTCSettings

RTC = Path(__file__).parent / "fixtures" / "lerobot_0_6_1" / "rtc"
ACTION_ATOL = 1e-4
FOLLOW_TOL = 0.05
ENGINES = ["reference", "auto"]  # eager model; static suffix over the PyTorch prefix


@functools.lru_cache(maxsize=None)
def rtc_meta(family: str) -> dict:
    return json.loads((RTC / family / "expected_meta.json").read_text())


def _guidance(family: str, case: dict, **overrides) -> ModelGuidance:
    prev = np.load(RTC / family / case["prev_file"])
    horizon = case["execution_horizon_kwarg"] or case["execution_horizon_config"]
    settings = RTCSettings(execution_horizon=horizon, schedule=case["schedule"].lower(),
                           max_guidance_weight=case["max_guidance_weight"], **overrides)
    return ModelGuidance.build(prev, case["inference_delay"], settings, 50, 32)


@functools.lru_cache(maxsize=None)
def _encoded(family: str, engine: str):
    """The policy with the fixture's observation encoded (the prefix is shared by every case)."""
    policy = _policy(family, engine)
    inputs, _ = policy.preprocess(_observation(policy, family, "full"), np.load(RTC / family / "noise.npy"))
    return policy, inputs


def _denoise(family: str, engine: str, guidance: ModelGuidance | None) -> np.ndarray:
    policy, inputs = _encoded(family, engine)
    policy.engine.encode_prefix(inputs)
    return policy.engine.denoise(inputs, guidance)


@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_prefix_weights_match_lerobot(family):
    for name, case in rtc_meta(family)["cases"].items():
        weights = prefix_weights(case["schedule"].lower(), case["inference_delay"],
                                 case["execution_horizon_effective"], 50)
        expected = np.asarray(case["prefix_weights"], dtype=np.float32)
        assert np.abs(weights - expected).max() <= 1e-6, name
        built = _guidance(family, case)
        assert np.array_equal(built.weights, weights), name


def test_prefix_weight_edge_cases():
    # d = 0: no weight-1 row; d >= E: the first E rows only (= "ones"); E = 0: nothing guided.
    ramp = [5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    assert prefix_weights("linear", 0, 5, 10).tolist() == pytest.approx(ramp + [0] * 5)
    assert np.array_equal(prefix_weights("exp", 30, 25, 50), prefix_weights("ones", 3, 25, 50))
    assert not prefix_weights("linear", 3, 0, 10).any()
    # E past the chunk stretches the ramp to the end (LeRobot), d past the chunk is all ones.
    assert prefix_weights("linear", 2, 15, 10)[:3].tolist() == pytest.approx([1, 1, 8 / 9])
    assert prefix_weights("zeros", 20, 25, 10).tolist() == [1.0] * 10


def test_guidance_weights_match_lerobot_tracker():
    debug = np.load(RTC / "pi0" / "debug_exp_d3_w10.npz")
    weights = [guidance_weight(float(t), 10.0) for t in debug["times"]]
    assert np.abs(np.array(weights) - debug["guidance_weights"]).max() <= 1e-5
    assert guidance_weight(1.0, 0.0) == 0.0 and guidance_weight(0.0, 10.0) == 0.0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_guided_chunks_match_lerobot(family, engine):
    errors = {}
    for name, case in rtc_meta(family)["cases"].items():
        expected = np.load(RTC / family / case["file"])
        chunk = _denoise(family, engine, _guidance(family, case))
        errors[name] = float(np.abs(chunk[:, :14] - expected).max())
    worst = max(errors, key=errors.get)
    assert errors[worst] <= ACTION_ATOL, f"{worst}: max error {errors[worst]:.2e} (all: {errors})"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_guidance_weight_zero_is_the_unguided_loop_exactly(family, engine):
    case = rtc_meta(family)["cases"]["exp_d10_w10"]
    unguided = _denoise(family, engine, None)
    off = _denoise(family, engine, _guidance(family, {**case, "max_guidance_weight": 0.0}))
    assert np.array_equal(off, unguided)
    assert np.abs(unguided[:, :14] - np.load(RTC / family / "unguided.npy")).max() <= ACTION_ATOL


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_first_d_actions_follow_the_previous_chunk(family, engine):
    prev = np.load(RTC / family / "prev_horizon.npy")
    unguided = _denoise(family, engine, None)
    for d in (3, 10):
        settings = RTCSettings(execution_horizon=25, schedule="exp", max_guidance_weight=10.0)
        chunk = _denoise(family, engine, ModelGuidance.build(prev, d, settings, 50, 32))
        err = np.abs(chunk[:d, :14] - prev[:d]).max()
        assert err <= FOLLOW_TOL, f"d={d}: first rows {err:.3f} from the previous chunk"
        assert np.abs(unguided[:d, :14] - prev[:d]).max() > 50 * FOLLOW_TOL  # the test can fail
        assert np.abs(chunk[25:] - unguided[25:]).max() > 1e-3  # unguided rows still move with the rest


@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_paper_vjp_matches_the_fixture_on_the_reference_engine(family):
    case = rtc_meta(family)["cases"]["exp_d3_w10"]
    chunk = _denoise(family, "reference", _guidance(family, case, jacobian="vjp"))
    expected = np.load(RTC / family / "paper_vjp_exp_d3_w10.npy")
    assert np.abs(chunk[:, :14] - expected).max() <= ACTION_ATOL
    lerobot = np.load(RTC / family / case["file"])
    assert np.abs(chunk[:, :14] - lerobot).max() > 0.1  # a different method, not a copy


def test_optimized_engine_refuses_the_vjp_in_one_line():
    from vla_ros.errors import EngineError

    case = rtc_meta("pi0")["cases"]["exp_d3_w10"]
    with pytest.raises(EngineError, match="rtc.jacobian 'vjp'"):
        _denoise("pi0", "auto", _guidance("pi0", case, jacobian="vjp"))


@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_trained_mode_clamps_the_first_d_rows_on_both_engines(family):
    prev = np.load(RTC / family / "prev_horizon.npy")
    settings = RTCSettings(execution_horizon=25, mode="trained")
    guidance = ModelGuidance.build(prev, 6, settings, 50, 32)
    chunks = {engine: _denoise(family, engine, guidance) for engine in ENGINES}
    unguided = _denoise(family, "reference", None)
    for engine, chunk in chunks.items():
        assert np.array_equal(chunk[:6, :14], prev[:6]), engine
        assert not chunk[:6, 14:].any(), engine  # padded dims are targets 0
        assert np.abs(chunk[6:] - unguided[6:]).max() > 1e-3, engine  # the clean rows condition the rest
    # The static suffix's per-token time (bias / AdaRMS rows) against the model's own per-token path.
    assert np.abs(chunks["auto"] - chunks["reference"]).max() <= ACTION_ATOL
    # With no clamped row it is the unguided loop.
    none = ModelGuidance.build(prev, 0, settings, 50, 32)
    for engine in ENGINES:
        assert np.abs(_denoise(family, engine, none) - _denoise(family, engine, None)).max() <= 1e-6


@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_policy_takes_the_previous_chunk_in_robot_units(family):
    """Policy.infer normalizes (and for pi0.5 re-anchors to the new state) the robot-unit leftover."""
    f = fixture(family)
    case = rtc_meta(family)["cases"]["linear_d3_w10"]
    policy = _policy(family)
    obs = _observation(policy, family, "full")
    noise = np.load(RTC / family / "noise.npy")
    _, state = policy.preprocess(obs, noise)[0], np.asarray(obs.state, dtype=np.float32)
    prev_norm = np.load(RTC / family / "prev_horizon.npy")
    prev_robot = policy.postprocess(prev_norm, 14, state)
    guidance = ChunkGuidance(prev_robot, 3, RTCSettings(execution_horizon=25))
    model = policy.model_guidance(guidance, state, 14)
    assert np.abs(model.target[:25, :14] - prev_norm).max() <= 1e-5
    assert not model.target[25:].any() and not model.target[:, 14:].any()
    chunk = policy.infer(obs, noise=noise, guidance=guidance)
    expected = policy.postprocess(np.load(RTC / family / case["file"]), 14, state)
    assert np.abs(chunk.actions - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    assert f["state"].shape == (14,)


def test_guidance_with_the_wrong_width_is_one_line():
    from vla_ros.errors import ObservationError

    policy = _policy("pi0")
    obs = _observation(policy, "pi0", "full")
    with pytest.raises(ObservationError, match="previous chunk has 7 action dims, the policy returns 14"):
        policy.infer(obs, guidance=ChunkGuidance(np.zeros((10, 7)), 2))


def test_settings_and_guidance_validate_in_one_line():
    from vla_ros.errors import ConfigError, ObservationError

    with pytest.raises(ConfigError, match="rtc.schedule"):
        RTCSettings(schedule="EXP")
    with pytest.raises(ConfigError, match="rtc.max_guidance_weight"):
        RTCSettings(max_guidance_weight=-1.0)
    with pytest.raises(ConfigError, match="rtc.execution_horizon"):
        RTCSettings(execution_horizon=2.5)
    with pytest.raises(ConfigError, match="rtc.jacobian"):
        RTCSettings(jacobian="jvp")
    with pytest.raises(ObservationError, match="NaN"):
        ChunkGuidance(np.full((3, 2), np.nan), 1)
    with pytest.raises(ObservationError, match="delay"):
        ChunkGuidance(np.zeros((3, 2)), -1)


def test_smolvla_is_guided_on_its_engine():
    """SmolVLA (LeRobot's flow-time grid, state in the prefix) through the same loops."""
    from test_lerobot_smolvla_parity import _observation as smolvla_observation, _policy as smolvla_policy

    policy = smolvla_policy()
    obs = smolvla_observation("full")
    noise = np.random.default_rng(3).standard_normal((policy.cfg.action_horizon, policy.cfg.action_dim))
    plain = policy.infer(obs, noise=noise).actions
    dims = plain.shape[1]
    previous = plain[4:] + 0.5  # a plan the unguided chunk does not follow
    settings = RTCSettings(execution_horizon=25, schedule="exp", max_guidance_weight=10.0)
    off = ChunkGuidance(previous, 5, RTCSettings(max_guidance_weight=0.0))
    off = policy.infer(obs, noise=noise, guidance=off)
    assert np.array_equal(off.actions, plain)
    guided = policy.infer(obs, noise=noise, guidance=ChunkGuidance(previous, 5, settings)).actions
    # In normalized units, as the tolerance is stated.
    norm = policy.normalizer.normalize_actions
    assert np.abs(norm(guided[:5]) - norm(previous[:5])).max() <= FOLLOW_TOL
    assert np.abs(norm(plain[:5]) - norm(previous[:5])).max() > 10 * FOLLOW_TOL
    trained = policy.infer(obs, noise=noise, guidance=ChunkGuidance(previous, 5, RTCSettings(mode="trained")))
    assert np.abs(trained.actions[:5] - previous[:5]).max() <= 1e-4 * max(1.0, np.abs(previous).max())
    assert dims == previous.shape[1]
