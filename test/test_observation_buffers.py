"""Latest-only buffers and observation assembly: staleness, skew, policies, counters."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vla_ros.errors import ConfigError, ObservationError
from vla_ros.observation.buffers import (
    CameraStatus,
    LatestValue,
    ObservationAssembler,
    Stamped,
    SyncConfig,
)
from vla_ros.types import CAMERA_KEYS

BASE, LEFT, RIGHT = CAMERA_KEYS


def frame(value: int) -> np.ndarray:
    return np.full((2, 3, 3), value, dtype=np.uint8)


def assembler(**overrides) -> ObservationAssembler:
    config = SyncConfig(**{"max_staleness": 0.2, "max_skew": 0.05, "joint_max_staleness": 0.1, **overrides})
    asm = ObservationAssembler(config)
    asm.update_prompt("pick up the cube")
    return asm


def feed(asm: ObservationAssembler, stamps: dict[str, float], joint_stamp: float = 10.0) -> None:
    for i, (key, stamp) in enumerate(stamps.items()):
        asm.update_image(key, frame(i + 1), stamp, stamp + 0.001)
    asm.update_state(np.array([0.5, -1.25]), joint_stamp, joint_stamp + 0.001)


# ----------------------------------------------------------- LatestValue ---


def test_latest_value_stores_and_returns_the_newest() -> None:
    buf: LatestValue[str] = LatestValue()
    assert buf.get() is None
    assert buf.update("a", 1.0, 1.5)
    assert buf.update("b", 2.0, 2.5)
    assert buf.get() == Stamped("b", 2.0, 2.5)
    value, stamp, receipt = buf.get()
    assert (value, stamp, receipt) == ("b", 2.0, 2.5)


def test_latest_value_zero_stamp_falls_back_to_receipt_time() -> None:
    buf: LatestValue[str] = LatestValue()
    assert buf.update("a", 0.0, 7.25)
    assert buf.get() == Stamped("a", 7.25, 7.25)
    assert buf.zero_stamps == 1
    assert buf.out_of_order == 0


def test_latest_value_rejects_out_of_order_and_keeps_the_newer() -> None:
    buf: LatestValue[str] = LatestValue()
    buf.update("new", 5.0, 5.5)
    assert buf.update("late", 4.0, 6.0) is False
    assert buf.get() == Stamped("new", 5.0, 5.5)
    assert buf.out_of_order == 1
    assert buf.update("same stamp", 5.0, 6.5)  # equal stamp replaces
    assert buf.get().value == "same stamp"


def test_latest_value_reset_clears_value_and_counters() -> None:
    buf: LatestValue[str] = LatestValue()
    buf.update("a", 0.0, 3.0)
    buf.update("b", 1.0, 3.5)
    buf.reset()
    assert (buf.get(), buf.zero_stamps, buf.out_of_order) == (None, 0, 0)
    assert buf.update("c", 1.0, 4.0)  # an earlier time is fine after a reset


def test_latest_value_is_consistent_under_concurrent_writers() -> None:
    buf: LatestValue[int] = LatestValue()

    def write(offset: int) -> None:
        for i in range(2000):
            buf.update(i, float(i) + offset * 0.5, 0.0)

    threads = [threading.Thread(target=write, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = buf.get()
    assert held.stamp == 1999.5 and held.value == 1999


# ------------------------------------------------------------ SyncConfig ---


def test_sync_config_defaults_and_scalar_staleness() -> None:
    config = SyncConfig()
    assert config.camera_keys == CAMERA_KEYS
    assert dict(config.max_staleness) == {BASE: 0.2, LEFT: 0.2, RIGHT: 0.2}
    assert (config.max_skew, config.joint_max_staleness, config.missing_camera_policy) == (0.05, 0.1, "mask")


def test_sync_config_per_camera_staleness() -> None:
    config = SyncConfig(camera_keys=[BASE, LEFT], max_staleness={BASE: 0.1, LEFT: 0.25})
    assert config.camera_keys == (BASE, LEFT)
    assert config.staleness_limit(BASE) == 0.1
    assert config.staleness_limit(LEFT) == 0.25
    with pytest.raises(TypeError):
        config.max_staleness[BASE] = 1.0  # read-only


@pytest.mark.parametrize(
    "overrides, parameter, fragment",
    [
        ({"max_skew": 0.0}, "sync.max_skew", "positive"),
        ({"max_skew": -0.1}, "sync.max_skew", "positive"),
        ({"max_skew": float("nan")}, "sync.max_skew", "positive"),
        ({"max_skew": "0.05"}, "sync.max_skew", "'0.05'"),
        ({"max_skew": True}, "sync.max_skew", "True"),
        ({"joint_max_staleness": 0}, "sync.joint_max_staleness", "positive"),
        ({"max_staleness": -1.0}, "sync.max_staleness", "positive"),
        (
            {"max_staleness": {BASE: 0.1, LEFT: 0.1}},
            "sync.max_staleness",
            "no entry for cameras ['right_wrist_0_rgb']",
        ),
        (
            {"camera_keys": (BASE,), "max_staleness": {BASE: 0.1, LEFT: 0.1}},
            "sync.max_staleness",
            "unconfigured cameras ['left_wrist_0_rgb']",
        ),
        ({"camera_keys": (BASE,), "max_staleness": {BASE: 0.0}}, f"sync.max_staleness.{BASE}", "positive"),
        ({"camera_keys": ("top_cam",)}, "sync.camera_keys", "unknown camera keys ['top_cam']"),
        ({"camera_keys": (BASE, BASE)}, "sync.camera_keys", "unique"),
        ({"camera_keys": BASE}, "sync.camera_keys", "list of camera key strings"),
        ({"missing_camera_policy": "drop"}, "sync.missing_camera_policy", "['mask', 'pause'], got 'drop'"),
    ],
)
def test_sync_config_validation_names_the_parameter(overrides: dict, parameter: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        SyncConfig(**overrides)
    assert info.value.parameter == parameter
    assert fragment in str(info.value)


def test_sync_config_infinite_limits_disable_checks() -> None:
    asm = assembler(max_skew=float("inf"), max_staleness=float("inf"))
    feed(asm, {BASE: 0.5, LEFT: 9.0, RIGHT: 10.0})
    assert asm.assemble(10.0).ok


# ------------------------------------------------------------- assembly ---


def test_all_fresh_gives_an_observation_stamped_by_the_newest_camera() -> None:
    asm = assembler()
    feed(asm, {BASE: 10.0, LEFT: 10.03125, RIGHT: 10.015625}, joint_stamp=10.046875)
    result = asm.assemble(10.0625)
    assert result.ok and result.reason == ""
    obs = result.observation
    assert obs.timestamp == 10.03125  # newest camera, not the (newer) joint state
    assert list(obs.images) == [BASE, LEFT, RIGHT]
    assert [int(obs.images[k][0, 0, 0]) for k in CAMERA_KEYS] == [1, 2, 3]
    assert obs.state.dtype == np.float32 and obs.state.tolist() == [0.5, -1.25]
    assert obs.prompt == "pick up the cube"
    assert dict(result.cameras) == {
        BASE: CameraStatus("fresh", 0.0625),
        LEFT: CameraStatus("fresh", 0.03125),
        RIGHT: CameraStatus("fresh", 0.046875),
    }
    assert result.joint_age == 0.015625


def test_buffered_frames_are_read_only_views() -> None:
    asm = assembler(camera_keys=(BASE,), max_staleness=0.2)
    image = frame(9)
    asm.update_image(BASE, image, 10.0, 10.0)
    asm.update_state(np.array([0.0]), 10.0, 10.0)
    obs = asm.assemble(10.0).observation
    assert np.shares_memory(obs.images[BASE], image)
    assert obs.images[BASE].flags.writeable is False
    assert image.flags.writeable is True


def test_mask_policy_leaves_stale_and_missing_cameras_out() -> None:
    asm = assembler(missing_camera_policy="mask")
    feed(asm, {BASE: 9.5, LEFT: 10.0})  # base stale, right never received
    result = asm.assemble(10.0)
    assert result.ok
    assert list(result.observation.images) == [LEFT]
    assert result.observation.timestamp == 10.0
    assert dict(result.cameras) == {
        BASE: CameraStatus("masked", 0.5, "stale (0.50 s > 0.20 s)"),
        LEFT: CameraStatus("fresh", 0.0),
        RIGHT: CameraStatus("masked", None, "missing (never received)"),
    }


def test_mask_policy_with_no_camera_available_gives_none() -> None:
    asm = assembler(missing_camera_policy="mask")
    feed(asm, {BASE: 9.48}, joint_stamp=10.0)
    result = asm.assemble(10.0)
    assert result.observation is None
    assert result.reason == (
        "all cameras unavailable: camera base_0_rgb stale (0.52 s > 0.20 s); "
        "camera left_wrist_0_rgb missing (never received); "
        "camera right_wrist_0_rgb missing (never received)"
    )
    assert [s.state for s in result.cameras.values()] == ["stale", "missing", "missing"]


def test_pause_policy_stops_on_any_stale_camera() -> None:
    asm = assembler(missing_camera_policy="pause")
    feed(asm, {BASE: 9.48, LEFT: 10.0, RIGHT: 10.0})
    result = asm.assemble(10.0)
    assert result.observation is None
    assert result.reason == "camera base_0_rgb stale (0.52 s > 0.20 s)"
    assert [s.state for s in result.cameras.values()] == ["stale", "fresh", "fresh"]


def test_pause_policy_stops_on_a_missing_camera() -> None:
    asm = assembler(missing_camera_policy="pause")
    feed(asm, {BASE: 10.0, RIGHT: 10.0})
    result = asm.assemble(10.0)
    assert result.reason == "camera left_wrist_0_rgb missing (never received)"
    assert result.cameras[LEFT] == CameraStatus("missing", None, "missing (never received)")


def test_per_camera_staleness_limits() -> None:
    asm = assembler(camera_keys=(BASE, LEFT), max_staleness={BASE: 0.5, LEFT: 0.1}, max_skew=1.0)
    feed(asm, {BASE: 9.625, LEFT: 9.875}, joint_stamp=10.0)
    result = asm.assemble(10.0)
    assert list(result.observation.images) == [BASE]
    assert result.cameras[LEFT] == CameraStatus("masked", 0.125, "stale (0.12 s > 0.10 s)")


def test_skew_between_used_cameras_blocks_assembly() -> None:
    asm = assembler()
    feed(asm, {BASE: 9.85, LEFT: 10.0, RIGHT: 9.95})
    result = asm.assemble(10.0)
    assert result.observation is None
    assert result.reason == "camera skew 0.15 s > 0.05 s"


def test_skew_ignores_masked_cameras() -> None:
    asm = assembler(missing_camera_policy="mask")
    feed(asm, {BASE: 9.5, LEFT: 10.0, RIGHT: 9.96875})
    result = asm.assemble(10.0)
    assert result.ok
    assert list(result.observation.images) == [LEFT, RIGHT]
    assert result.observation.timestamp == 10.0


def test_no_joint_state_and_stale_joint_state() -> None:
    asm = assembler()
    for key in CAMERA_KEYS:
        asm.update_image(key, frame(1), 10.0, 10.0)
    assert asm.assemble(10.0).reason == "no joint state yet"
    asm.update_state(np.array([1.0]), 9.75, 9.75)
    result = asm.assemble(10.0)
    assert result.reason == "joint state stale (0.25 s > 0.10 s)"
    assert result.joint_age == 0.25


def test_no_prompt_yet() -> None:
    asm = ObservationAssembler(SyncConfig())
    feed(asm, {BASE: 10.0, LEFT: 10.0, RIGHT: 10.0})
    result = asm.assemble(10.0)
    assert (result.observation, result.reason) == (None, "no prompt yet")
    assert asm.prompt is None


def test_empty_instruction_is_rejected_and_the_previous_kept() -> None:
    asm = assembler()
    assert asm.update_prompt("") is False
    assert asm.update_prompt("  \n\t ") is False
    assert asm.prompt == "pick up the cube"
    assert asm.rejected == {"empty_prompt": 2}
    assert asm.update_prompt("  stack the blocks \n")
    assert asm.prompt == "stack the blocks"


def test_zero_stamps_fall_back_to_receipt_time_and_are_counted() -> None:
    asm = assembler(camera_keys=(BASE,), max_staleness=0.2)
    assert asm.update_image(BASE, frame(1), 0.0, 10.375)
    assert asm.update_state(np.array([0.0]), 0.0, 10.5)
    result = asm.assemble(10.5)
    assert result.observation.timestamp == 10.375
    assert result.cameras[BASE] == CameraStatus("fresh", 0.125)
    assert result.joint_age == 0.0
    assert asm.zero_stamps == {BASE: 1, "joint_state": 1}


def test_out_of_order_inputs_are_rejected_and_counted() -> None:
    asm = assembler(camera_keys=(BASE,), max_staleness=0.2)
    assert asm.update_image(BASE, frame(1), 10.0, 10.0)
    assert asm.update_image(BASE, frame(2), 9.9, 10.01) is False
    assert asm.update_state(np.array([1.0]), 10.0, 10.0)
    assert asm.update_state(np.array([2.0]), 9.5, 10.02) is False
    obs = asm.assemble(10.0).observation
    assert int(obs.images[BASE][0, 0, 0]) == 1 and obs.state.tolist() == [1.0]
    assert asm.rejected == {"out_of_order:base_0_rgb": 1, "out_of_order:joint_state": 1}


def test_without_cameras_the_joint_stamp_is_the_timestamp() -> None:
    asm = assembler(camera_keys=(), max_staleness=0.2)
    asm.update_state(np.array([3.0]), 12.5, 12.5)
    obs = asm.assemble(12.5).observation
    assert (dict(obs.images), obs.timestamp) == ({}, 12.5)


def test_invalid_inputs_raise_and_are_counted() -> None:
    asm = assembler(camera_keys=(BASE,), max_staleness=0.2)
    with pytest.raises(ObservationError, match="camera 'left_wrist_0_rgb' is not configured"):
        asm.update_image(LEFT, frame(1), 1.0, 1.0)
    with pytest.raises(ObservationError, match=r"uint8 \(H, W, 3\)"):
        asm.update_image(BASE, np.zeros((2, 3), np.uint8), 1.0, 1.0)
    with pytest.raises(ObservationError, match="finite"):
        asm.update_state(np.array([0.0, np.nan]), 1.0, 1.0)
    with pytest.raises(ObservationError, match="1-D"):
        asm.update_state(np.zeros((2, 2)), 1.0, 1.0)
    assert asm.rejected == {"invalid_image:base_0_rgb": 1, "invalid_state": 2}


def test_update_state_copies_the_input() -> None:
    asm = assembler(camera_keys=(), max_staleness=0.2)
    positions = np.array([1.0, 2.0])
    asm.update_state(positions, 1.0, 1.0)
    positions[0] = 99.0
    assert asm.assemble(1.0).observation.state.tolist() == [1.0, 2.0]


def test_reset_drops_inputs_and_counters_but_keeps_the_prompt() -> None:
    asm = assembler()
    feed(asm, {BASE: 10.0, LEFT: 10.0, RIGHT: 10.0})
    asm.update_prompt("")
    asm.reset()
    assert asm.rejected == {}
    result = asm.assemble(10.0)
    assert result.reason == "no joint state yet"
    assert [s.state for s in result.cameras.values()] == ["missing", "missing", "missing"]
    assert asm.prompt == "pick up the cube"
    asm.reset(keep_prompt=False)
    assert asm.prompt is None
