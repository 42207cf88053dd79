"""The run manifest (``manifest.json``): what a result can be traced to.

Written when the run starts (config hash, code, software, machine, seeds, the checkpoint loaded,
env assets, training data) and completed when it ends (checkpoints written, finish time). Every
write is atomic. ``array_digest`` hashes in-memory training data (SFT demos, pretraining labels).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from asyncvla.rundir import atomic_write_text

MANIFEST_FILE = "manifest.json"

PACKAGES = (
    "asyncvla",
    "torch",
    "numpy",
    "ray",
    "gymnasium",
    "safetensors",
    "pydantic",
    "transformers",
    "peft",
    "lerobot",
    "mujoco",
    "robosuite",
    "libero",
    "cryptography",
)
"""Reported with their versions where installed."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def array_digest(*arrays: Any) -> str:
    """SHA-256 over arrays (dtype, shape and bytes) and string lists, in order."""
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, dict):
            for k in sorted(a):
                h.update(k.encode())
                h.update(array_digest(a[k]).encode())
            continue
        if isinstance(a, list):
            h.update(json.dumps(a).encode())
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _git(path: Path) -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout holding ``path`` (None outside a git checkout)."""
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", "-C", str(path), *a], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return None


def packages() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment() -> dict[str, Any]:
    """Code, software and machine of this process."""
    return {
        "git": _git(Path(__file__).resolve().parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": _gpu(),
        "packages": packages(),
    }


def files_digest(files: dict[str, str]) -> dict[str, str]:
    from asyncvla.trust.audit import sha256_file

    return {name: sha256_file(path) for name, path in sorted(files.items())}


def checkpoint_entry(run_dir: Path, ckpt: Path) -> dict[str, Any]:
    from asyncvla.trust.audit import checkpoint_hashes

    ckpt = Path(ckpt)
    try:
        shown = ckpt.resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        shown = str(ckpt)
    return {"path": shown, "files": checkpoint_hashes(ckpt)}


class Manifest:
    """``manifest.json`` of one run directory; a resumed run keeps the first start's fields and
    records each resume."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / MANIFEST_FILE
        self.run_dir = Path(run_dir)
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError:
                self.data = {}

    def start(
        self,
        config_text: str,
        seed: int,
        assets: dict[str, str],
        loaded: Path | None = None,
        resumed: bool = False,
    ) -> str:
        """Record the run's start; returns the manifest's SHA-256."""
        d = self.data
        entry = checkpoint_entry(self.run_dir, loaded) if loaded is not None else None
        if resumed and d:
            d.setdefault("resumes", []).append(
                {
                    "time": _now(),
                    "checkpoint": entry,
                    "config_sha256": sha256_text(config_text),
                    **environment(),
                }
            )
            d["finished"] = None
        else:
            d.clear()
            d.update(
                schema=1,
                started=_now(),
                finished=None,
                config_sha256=sha256_text(config_text),
                seed=seed,
                **environment(),
                checkpoints_loaded=[entry] if entry is not None else [],
                checkpoints_written=[],
                assets=files_digest(assets),
                demo_data=None,
            )
        return self.write()

    def set(self, **fields: Any) -> str:
        self.data.update(fields)
        return self.write()

    def finish(self) -> str:
        """Record the checkpoints the run directory holds and the finish time."""
        ckpts = sorted((self.run_dir / "checkpoints").glob("update_*"))
        if (self.run_dir / "sft" / "model.safetensors").is_file():
            ckpts.insert(0, self.run_dir / "sft")
        self.data["checkpoints_written"] = [checkpoint_entry(self.run_dir, c) for c in ckpts if c.is_dir()]
        self.data["finished"] = _now()
        return self.write()

    def write(self) -> str:
        text = json.dumps(self.data, indent=2)
        atomic_write_text(self.path, text)
        return sha256_text(text)
