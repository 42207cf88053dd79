"""Every module of the package imports by itself, first, in a process where no asyncvla module was
imported before: an import cycle (``a`` needs ``b`` at import time and ``b`` needs ``a``) fails only
for the module a process imports first, so each one gets that turn.

One helper interpreter imports the heavy third-party dependencies once and then forks a child per
module; a child imports its module and exits 0, or prints the traceback and exits 1. Modules are
listed from the files on disk, not with ``pkgutil.walk_packages`` alone, which skips directories
without ``__init__.py`` (namespace packages such as ``asyncvla.runtime``).
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import asyncvla

PACKAGE = Path(asyncvla.__file__).resolve().parent

pytestmark = pytest.mark.slow  # interpreters that import torch and Ray: seconds each

# Third-party modules the package imports at module level: imported once in the helper before any
# fork, so a child only runs asyncvla's own module code. Optional ones (transformers, LIBERO) are
# not here: the modules that use them must import without them being loaded.
PRELOAD = ("numpy", "torch", "ray", "gymnasium", "pydantic", "rich", "typer", "yaml")

HELPER = r"""
import importlib, os, sys, traceback

for dep in sys.argv[1].split(","):
    try:
        importlib.import_module(dep)
    except ImportError:
        pass
assert not [m for m in sys.modules if m.split(".")[0] == "asyncvla"], "asyncvla imported before the forks"
failed, running = [], {}
names = sys.argv[2:]
while names or running:
    while names and len(running) < (os.cpu_count() or 1):
        name = names.pop(0)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException:
                sys.stderr.write(f"--- import {name} failed:\n{traceback.format_exc()}")
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        running[pid] = name
    pid, status = os.wait()
    if os.waitstatus_to_exitcode(status) != 0:
        failed.append(running[pid])
    del running[pid]
print("FAILED:" + ",".join(sorted(failed)))
sys.exit(1 if failed else 0)
"""


def package_modules() -> list[str]:
    """Dotted names of every ``.py`` file under the package (``__init__`` as its package)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_module_list_covers_walk_packages() -> None:
    walked = {m.name for m in pkgutil.walk_packages(asyncvla.__path__, "asyncvla.")}
    listed = set(package_modules())
    assert walked <= listed
    assert {"asyncvla", "asyncvla.train", "asyncvla.runtime.launcher", "asyncvla.envs.libero"} <= listed


def test_every_module_imports_first_in_a_fresh_process() -> None:
    names = package_modules()
    proc = subprocess.run(
        [sys.executable, "-c", HELPER, ",".join(PRELOAD), *names],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "FAILED:"


def test_two_entry_points_import_together() -> None:
    """The CLI's own order of imports, in a plain fresh interpreter (no fork, nothing preloaded)."""
    code = "import asyncvla.train, asyncvla.bench, asyncvla.cli"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
