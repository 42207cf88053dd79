"""Environment for Ray, set before ``ray`` is imported (Ray reads some variables at import)."""

from __future__ import annotations

import os
from pathlib import Path


def prepare_ray_env(address: str | None) -> None:
    """Local instance: keep it on loopback. Joining a cluster: `ray start` enables token auth and
    writes ``~/.ray/auth_token``; the joining driver needs ``RAY_AUTH_MODE=token``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
            os.environ["RAY_AUTH_MODE"] = "token"
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
