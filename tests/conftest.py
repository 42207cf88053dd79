import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance (loopback) shared by the runs of one test module (request it with
    ``pytestmark = pytest.mark.usefixtures("ray_local")``).

    Workers import plug-ins from the repository (``tests.runtime.faulty``) through PYTHONPATH.
    """
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        started = True
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny models (request it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): more threads only add
    contention there (seconds instead of milliseconds)."""
    import torch

    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)
