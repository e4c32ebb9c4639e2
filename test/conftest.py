"""Shared fixtures: tiny checkpoints built in the real on-disk format, once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A pi0-tiny checkpoint directory (random weights, 14-dim norm stats, trained tokenizer)."""
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("pi0_tiny"), "pi0-tiny", seed=0, dims=14)


@pytest.fixture(scope="session")
def tiny_pi05_checkpoint(tmp_path_factory):
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("pi05_tiny"), "pi05-tiny", seed=1, dims=14)


@pytest.fixture(scope="session")
def tiny_fast_checkpoint(tmp_path_factory):
    """An untrained pi0fast-tiny checkpoint (openpi layout, 8-dim stats, FAST tokenizer beside it)."""
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("pi0fast_tiny"), "pi0fast-tiny", seed=2, dims=8)
