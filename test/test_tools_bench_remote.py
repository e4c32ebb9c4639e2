"""`vla-ros bench --remote URI` (vla_ros/tools/bench_remote.py) against an in-process `vla-ros serve`.

The server is a PolicyServer on 127.0.0.1 in a background thread; the figures themselves are not
checked (timings on a shared machine), only that they are measured and that the served actions
equal in-process inference with the same noise.
"""

import argparse

import pytest
from vla_ros.policy import Policy, PolicyOptions
from vla_ros.remote import codec
from vla_ros.remote.obs_formats import to_request
from vla_ros.remote.server import PolicyServer
from vla_ros.tools import bench, bench_remote


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    policy = Policy.from_checkpoint(tiny_checkpoint, PolicyOptions(device="cpu", precision="fp32"))
    server = PolicyServer(policy, "slots", port=0, request_timeout=120)
    with server:
        yield policy, server


def test_round_trip_matches_in_process_and_throughput_counts(served):
    policy, server = served
    obs = bench_remote.observation(14)
    assert {image.shape for image in obs.images.values()} == {(224, 224, 3)} and len(obs.images) == 3
    rt = bench_remote.measure_round_trip(policy, server.address, obs, runs=3, warmup=1, api_key=None)
    assert rt["max_abs_diff"] == 0.0
    assert rt["request_bytes"] > 3 * 224 * 224 * 3 and rt["replicas"] == 1 and rt["obs_format"] == "slots"
    assert rt["round_trip_ms"]["p50"] > 0 and rt["in_process_ms"]["p50"] > 0
    request = codec.encode(to_request(obs, "slots"))
    rates = bench_remote.measure_throughput({"one": server.address}, request, clients=2, seconds=1.0,
                                            api_key=None, rounds=1)
    assert rates["one"]["requests"] > 0 and len(rates["one"]["per_client"]) == 2
    assert rates["one"]["requests_per_s"] == pytest.approx(rates["one"]["requests"] / rates["one"]["seconds"])


def test_bench_cli_remote_uri(served, tiny_checkpoint, capsys):
    _, server = served
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--remote", server.address, "--checkpoint", str(tiny_checkpoint), "--runs", "2",
                              "--warmup", "1", "--seconds", "1", "--clients", "2", "--device", "cpu",
                              "--precision", "fp32"])
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "added per request" in out and "max |diff| 0.00e+00" in out and "req/s" in out


@pytest.mark.parametrize("remote", ["http://127.0.0.1:1", ","])
def test_bench_remote_refuses_what_is_not_a_websocket_uri(remote, tiny_checkpoint):
    from vla_ros.errors import ConfigError

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--remote", remote, "--checkpoint", str(tiny_checkpoint)])
    with pytest.raises(ConfigError, match="--remote"):
        bench.run(args)


def test_fleet_without_ray_names_the_extra(monkeypatch):
    import importlib.util

    from vla_ros.errors import ConfigError
    from vla_ros.remote import fleet

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ConfigError, match=r"pip install 'vla_ros\[fleet\]'"):
        fleet.require_ray()
