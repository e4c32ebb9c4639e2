"""The deployable path end to end: an exported artifact directory against the reference policy."""

import numpy as np
import pytest

from vla_ros.engines.onnx_export import export_artifact, ExportOptions
from vla_ros.engines.optimized import OptimizedEngine
from vla_ros.policy import Policy, PolicyOptions
from vla_ros.types import RawObservation


def _observation(seed=0):
    rng = np.random.default_rng(seed)
    return RawObservation(
        images={
            "base_0_rgb": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
            "left_wrist_0_rgb": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        },
        state=rng.normal(size=14).astype(np.float32),
        prompt="put the cup on the plate",
    )


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_pi05_checkpoint"])
def test_artifact_policy_matches_reference_fp32(fixture, request, tmp_path):
    ckpt = request.getfixturevalue(fixture)
    artifacts = tmp_path / "artifacts"
    export_artifact(ckpt, artifacts, ExportOptions(precision="fp32"))
    noise = np.random.default_rng(5).standard_normal((50, 32)).astype(np.float32)
    reference = Policy.from_checkpoint(
        ckpt, PolicyOptions(device="cpu", engine="reference", precision="fp32")
    )
    deployed = Policy.from_artifacts(artifacts, PolicyOptions(device="cpu", precision="fp32"))
    assert isinstance(deployed.engine, OptimizedEngine)
    assert deployed.engine.describe()["prefix"] == deployed.engine.prefix.name != "pytorch"
    a = reference.infer(_observation(), noise=noise).actions
    b = deployed.infer(_observation(), noise=noise).actions
    assert a.shape == b.shape == (50, 14)
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)
    # bf16 suffix behind the fp32 ONNX prefix (the CPU default on AMX machines): within 2e-2 of the range
    mixed = Policy.from_artifacts(artifacts, PolicyOptions(device="cpu", precision="bf16"))
    c = mixed.infer(_observation(), noise=noise).actions
    assert np.abs(c - a).max() / np.abs(a).max() <= 2e-2
