"""Rules of the design that are checked on the source text.

Algorithms are picked through their registry, not by comparing ``algo.name``; the runtime holds no
branch on the name of an algorithm, env or policy. Loading never unpickles: safetensors and JSON,
``torch.load`` only with ``weights_only=True``, YAML only through ``safe_load``, no ``eval``/``exec``.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncvla

PACKAGE = Path(asyncvla.__file__).resolve().parent


def _hits(root: Path, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [
        f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if regex.search(line)
    ]


def test_no_algorithm_name_comparisons_in_the_package() -> None:
    hits = _hits(PACKAGE, r"algo\.name\s*[!=]=")
    assert not hits, "\n".join(hits)


def test_runtime_compares_no_name_to_a_string_literal() -> None:
    assert (PACKAGE / "runtime" / "launcher.py").is_file()
    hits = _hits(PACKAGE / "runtime", r"name\s*[!=]=\s*[\"']")
    assert not hits, "\n".join(hits)


def test_nothing_is_unpickled_or_evaluated_as_code() -> None:
    assert (PACKAGE / "envs" / "libero.py").is_file()  # holds the one torch.load
    unsafe = [
        r"\bpickle\.loads?\(",
        r"\bcloudpickle\.loads?\(",
        r"\byaml\.(unsafe_)?load\(",
        r"(?<![.\w])(eval|exec)\(",
        r"\bnp\.load\(.*allow_pickle\s*=\s*True",
    ]
    hits = [h for p in unsafe for h in _hits(PACKAGE, p)]
    assert not hits, "\n".join(hits)
    loads = _hits(PACKAGE, r"\btorch\.load\(")
    assert loads and all("weights_only=True" in h for h in loads), "\n".join(loads)
