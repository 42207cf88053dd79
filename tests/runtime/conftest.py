import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def ray_local():
    """One local Ray instance (loopback) for the runtime tests; runs reuse it."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        started = True
    yield
    if started:
        ray.shutdown()
