"""Device holders for the exclusion tests: each counts how many holders are inside a hold at once.

Imported by spawned processes, so it imports no torch (only ``asyncvla.bench.vdevice``).
"""

from __future__ import annotations

import time
from typing import Any

from asyncvla.bench.vdevice import VirtualDevice, device


def hold_and_count(
    name: str,
    run_id: str,
    lock_dir: str,
    ready: Any,
    inside: Any,
    most: Any,
    meet: Any = None,
    seconds: float = 0.2,
    fresh: bool = False,
) -> None:
    """Wait for every holder to be ready (``ready``: a barrier), then hold device ``name``: count
    this holder into ``inside`` (a shared int), keep ``most`` the largest count seen, stay
    ``seconds``, count out. ``meet``: a second barrier to pass while holding (only holders that
    can be inside together pass it). ``fresh``: a new device object instead of the cached one."""
    dev = VirtualDevice(name, run_id, lock_dir) if fresh else device(name, run_id, lock_dir)
    ready.wait(timeout=30)
    with dev.hold(op="test"):
        with inside.get_lock():
            inside.value += 1
            most.value = max(most.value, inside.value)
        if meet is not None:
            meet.wait(timeout=30)
        time.sleep(seconds)
        with inside.get_lock():
            inside.value -= 1
