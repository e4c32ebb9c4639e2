"""policy.num_samples: K noise samples over one prefix, as one batch, and their aggregate and spread.

Independent reference: K single-sample inferences with the same noises (the prefix encoded K
times), which the batched pass must reproduce: bitwise on the static suffix, 1e-5 on the
reference engine (batched matmuls round differently).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from test_lerobot_parity import _observation, fixture, POLICY_FAMILIES
from vla_ros.policy import aggregate_samples, Policy, PolicyOptions
from vla_ros.types import ChunkGuidance, RTCSettings

K = 3


@functools.lru_cache(maxsize=None)
def _policy(family: str, engine: str, num_samples: int = 1, aggregate: str = "first") -> Policy:
    options = PolicyOptions(device="cpu", precision="fp32", engine=engine, num_samples=num_samples,
                            sample_aggregate=aggregate)
    return Policy.from_checkpoint(fixture(family)["dir"], options)


def _noise(k: int = K, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, 50, 32)).astype(np.float32)


@pytest.mark.parametrize("engine,atol", [("auto", 0.0), ("reference", 1e-5)])
@pytest.mark.parametrize("family", POLICY_FAMILIES)
def test_batched_samples_equal_single_inferences(family, engine, atol):
    single, batched = _policy(family, engine), _policy(family, engine, K)
    obs = _observation(single, family, "full")
    noise = _noise()
    chunk = batched.infer(obs, noise=noise)
    assert chunk.samples.shape == (K, 50, 14) and chunk.actions.shape == (50, 14)
    for k in range(K):
        alone = single.infer(obs, noise=noise[k]).actions
        assert np.abs(chunk.samples[k] - alone).max() <= atol, k
    assert np.array_equal(chunk.actions, chunk.samples[0])  # "first"
    assert chunk.spread > 0.1  # different noises give different chunks on these weights


def test_aggregates_and_spread():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((4, 5)).astype(np.float32)
    offsets = np.array([0.0, 1.0, 1.1, 1.3, 5.0], dtype=np.float32)
    samples = np.stack([base + offset for offset in offsets])
    first, spread = aggregate_samples(samples, "first")
    assert np.array_equal(first, base)
    mean, _ = aggregate_samples(samples, "mean")
    assert np.allclose(mean, base + offsets.mean())
    medoid, _ = aggregate_samples(samples, "medoid")
    assert np.array_equal(medoid, samples[2])  # the median offset has the least summed distance
    assert spread == pytest.approx(np.sqrt(np.mean((offsets - offsets.mean()) ** 2)), rel=1e-5)
    assert aggregate_samples(np.stack([base, base]), "mean")[1] == 0.0


def test_medoid_through_the_policy_is_one_of_the_samples():
    policy = _policy("pi0", "auto", K, "medoid")
    chunk = policy.infer(_observation(policy, "pi0", "full"), noise=_noise(seed=4))
    assert any(np.array_equal(chunk.actions, sample) for sample in chunk.samples)


def test_rtc_guides_every_sample():
    policy = _policy("pi05", "auto", K)
    obs = _observation(policy, "pi05", "full")
    plain = policy.infer(obs, noise=_noise(seed=2))
    previous = plain.samples[0][4:] + 0.3
    guided = policy.infer(obs, noise=_noise(seed=2), guidance=ChunkGuidance(previous, 5, RTCSettings(
        execution_horizon=20, max_guidance_weight=10.0)))
    norm = policy.normalizer.normalize_actions
    for k in range(K):
        assert np.abs(norm(guided.samples[k][:5]) - norm(previous[:5])).max() < 0.05
    assert guided.spread < plain.spread  # pulled toward one plan


def test_num_samples_is_validated_in_one_line():
    from vla_ros.errors import ConfigError, ObservationError

    with pytest.raises(ConfigError, match="policy.num_samples"):
        PolicyOptions(num_samples=0)
    with pytest.raises(ConfigError, match="policy.sample_aggregate"):
        PolicyOptions(sample_aggregate="median")
    policy = _policy("pi0", "auto", K)
    with pytest.raises(ObservationError, match=r"noise must have shape \(3, 50, 32\)"):
        policy.infer(_observation(policy, "pi0", "full"), noise=_noise(k=2))


def test_node_parameters_reach_the_policy_options():
    from vla_ros.config.policy import PolicySection

    options = PolicySection(num_samples=4, sample_aggregate="medoid").to_policy_options()
    assert (options.num_samples, options.sample_aggregate) == (4, "medoid")


def test_the_controller_reports_the_spread():
    from test_rtc_controller import feed, make_config, T0
    from vla_ros.controller import PolicyController
    from vla_ros.types import ActionChunk

    ctl = PolicyController(make_config(mode="latest"))
    ctl.activate(T0)
    for i, spread in enumerate((0.25, 0.5, 0.125)):
        t = T0 + 2.0 * i
        feed(ctl, t)
        request = ctl.next_request(t)
        chunk = ActionChunk(np.zeros((50, 4), np.float32), request.observation.timestamp, spread=spread)
        assert ctl.on_chunk(chunk, t + 0.05, request)
    values = dict(ctl.status(T0 + 4.1).values)
    assert values["inference.sample_spread_last"] == 0.125 and values["inference.sample_spread_max"] == 0.5
