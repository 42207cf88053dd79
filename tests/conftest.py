import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBERO_TESTS = ROOT / "tests" / "envs" / "test_libero.py"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers that follow from what a test uses, so that none can be forgotten: ``ray`` on every
    test that uses the ``ray_local`` fixture, ``libero`` on every test of ``test_libero.py``."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
        if item.path.resolve() == LIBERO_TESTS:
            item.add_marker(pytest.mark.libero)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test without the ``ray`` marker that starts Ray (``ray.init``) fails, naming the marker:
    the fast tier (``-m "not ray"``) must not start Ray behind the marker's back."""
    ray = sys.modules.get("ray")
    if ray is None or item.get_closest_marker("ray") is not None:
        return (yield)
    init = ray.init

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{item.nodeid} starts Ray: mark it with pytest.mark.ray")

    ray.init = refuse
    try:
        return (yield)
    finally:
        ray.init = init


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
