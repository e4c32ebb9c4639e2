"""Watchdog transitions between OK, WARN and ERROR."""

import pytest

from vla_ros.actions.watchdog import Watchdog, WatchdogStatus
from vla_ros.errors import ConfigError


def level_hold(status):
    return status.level, status.hold


def test_start_up_waits_for_observation_then_chunk():
    w = Watchdog(obs_timeout=0.5, inference_timeout=1.0)
    s = w.status(0.0)
    assert level_hold(s) == ("WARN", True) and "observation" in s.reason
    w.update_observation(0.0)
    s = w.status(0.1)
    assert level_hold(s) == ("WARN", True) and "chunk" in s.reason
    w.update_chunk(0.2, horizon_end=1.0)
    assert w.status(0.3) == WatchdogStatus("OK", "", False)


def test_stale_observations_hold_until_a_new_one():
    w = Watchdog(obs_timeout=0.5, inference_timeout=1.0)
    w.update_observation(0.0)
    w.update_chunk(0.0)
    assert level_hold(w.status(0.5)) == ("OK", False)  # age == timeout is still fresh
    s = w.status(0.625)
    assert level_hold(s) == ("ERROR", True)
    assert "0.625 s" in s.reason and "stale" in s.reason
    w.update_observation(0.625)
    assert level_hold(w.status(0.75)) == ("OK", False)


def test_inference_failure_latches_until_next_chunk():
    w = Watchdog(obs_timeout=0.5, inference_timeout=1.0)
    w.update_observation(0.0)
    w.update_chunk(0.0)
    w.inference_failed("CUDA out of memory")
    s = w.status(0.1)
    assert level_hold(s) == ("ERROR", True) and "CUDA out of memory" in s.reason
    w.update_observation(0.2)
    assert level_hold(w.status(0.3)) == ("ERROR", True)  # fresh observations do not clear it
    w.update_chunk(0.3)
    assert level_hold(w.status(0.35)) == ("OK", False)


def test_inference_timeout():
    w = Watchdog(obs_timeout=0.5, inference_timeout=1.0)
    w.update_chunk(0.0)
    w.update_observation(1.25)
    s = w.status(1.25)
    assert level_hold(s) == ("ERROR", True) and "1.250 s" in s.reason


def test_chunks_ran_out_holds_with_warning():
    w = Watchdog(obs_timeout=0.5, inference_timeout=1.0)
    w.update_observation(0.5)
    w.update_chunk(0.25, horizon_end=0.4)
    assert level_hold(w.status(0.4)) == ("OK", False)
    s = w.status(0.5)
    assert level_hold(s) == ("WARN", True) and "ran out" in s.reason
    w.update_chunk(0.5, horizon_end=1.5)
    assert level_hold(w.status(0.5)) == ("OK", False)


def test_failure_takes_precedence_and_reset_forgets():
    w = Watchdog(obs_timeout=0.5, inference_timeout=1.0)
    w.inference_failed("")
    s = w.status(0.0)
    assert s.level == "ERROR" and "unknown error" in s.reason
    w.reset()
    assert w.status(0.0).reason == "waiting for the first observation"


def test_config_validation():
    with pytest.raises(ConfigError) as err:
        Watchdog(obs_timeout=0.0, inference_timeout=1.0)
    assert err.value.parameter == "watchdog.obs_timeout"
    with pytest.raises(ConfigError) as err:
        Watchdog(obs_timeout=0.5, inference_timeout=float("nan"))
    assert err.value.parameter == "watchdog.inference_timeout"
    with pytest.raises(ValueError):
        WatchdogStatus("FATAL", "x", True)
