"""Shared test helpers. No test reaches the internet; there is none."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds; fail the test if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session (starting Ray costs seconds).

    Token auth is disabled for this loopback-only test cluster only; real
    deployments keep Ray's default (see README).
    """
    import logging

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from fleetlog.actors.fleet import LOCAL_RAY_SYSTEM_CONFIG

    ray.init(
        # A new local Ray, never one a killed test left behind in ray_current_cluster.
        address="local",
        num_cpus=4,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        namespace="fleetlog-tests",
        # As fleetlog starts a local Ray (actors/fleet.py).
        _system_config=dict(LOCAL_RAY_SYSTEM_CONFIG),
    )
    yield
    ray.shutdown()
