"""The HTML run report: its sections, embedded plots that decode and are not blank, no external
reference, robustness to partial run directories, and how it renders in a headless browser."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asyncvla.config import load_config
from asyncvla.rundir import RunDir
from asyncvla.trust.report import (
    ReportError,
    audit_status,
    busy_table,
    plot_timeline,
    read_timeline,
    write_report,
)

T0 = 1_700_000_000.0
SECTIONS = ("run", "learning", "throughput", "utilisation", "staleness", "evaluation", "lineage")
PLOT_IDS = ("plot-learning", "plot-return", "plot-throughput", "plot-timeline", "plot-staleness")


def make_run(path: Path, updates: int = 6, eval_every: int = 2, events: bool = True) -> Path:
    """A synthetic run directory as a run writes it: config.yaml and metrics.jsonl through
    ``RunDir``, then events.jsonl (3 workers over 10 s), summary.json and manifest.json."""
    cfg = load_config(
        None,
        [
            "name=synthetic",
            "mode=async",
            "env.kwargs.family=object",
            f"train.updates={updates}",
            f"train.eval_every={eval_every}",
            "train.init=sft",
            "eval.episodes=100",
            "eval.quick_episodes=20",
        ],
    )
    run = RunDir(path, cfg, tensorboard=False)
    for u in range(1, updates + 1):
        row = {
            "update": u,
            "policy_version": u,
            "env_steps": 1000 * u,
            "decisions": 250 * u,
            "wall_s": 1.5 * u,
            "success_rate": 0.1 * u,
            "episode_return": 0.2 * u,
            "episodes": 40,
            "lr": 1e-3 * (1 - u / (updates + 1)),
            "loss_policy": -0.01 * u,
            "loss_value": 0.1 / u,
            "entropy": 1.0 - 0.05 * u,
            "approx_kl": 0.001 * u,
            "staleness_mean": 0.5,
            "staleness_max": 1,
            "staleness_hist": {"0": 100, "1": 100 + 10 * u},
            "env_steps_per_s": 1000 * u / (1.5 * u) + 20 * u,
        }
        if u % eval_every == 0:
            row["eval_success_rate"] = 0.05 * u
        run.log(row)
    run.close()
    if events:
        write_events(path / "events.jsonl")
    summary = {
        "mode": "async",
        "max_staleness": 1,
        "updates": updates,
        "env_steps": 1000 * updates,
        "wall_s": 1.5 * updates,
        "env_steps_per_s": 1000 / 1.5,
        "samples_trained": 250 * updates,
        "samples_rejected": 3,
        "sft_success_rate": 0.12,
        "sft_success_ci95": [0.07, 0.2],
        "final_success_rate": 0.61,
        "final_success_ci95": [0.51, 0.7],
        "eval_episodes": 100,
        "sft_demos": 30,
        "expert_success_rate": 1.0,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    manifest = {
        "schema": 1,
        "started": "2026-01-01T00:00:00Z",
        "finished": "2026-01-01T00:01:00Z",
        "config_sha256": hashlib.sha256((path / "config.yaml").read_bytes()).hexdigest(),
        "seed": 0,
        "git": {"commit": "0123456789abcdef0123", "dirty": True},
        "python": "3.11.2",
        "platform": "Linux-x86_64",
        "cpu": "Test CPU @ 2 GHz",
        "gpu": None,
        "packages": {"torch": "2.13.0", "ray": "2.40.0"},
        "checkpoints_loaded": [{"path": "sft", "files": {"model.safetensors": "a" * 64}}],
        "checkpoints_written": [
            {"path": "checkpoints/update_00006", "files": {"model.safetensors": "b" * 64}}
        ],
        "assets": {},
        "demo_data": {"sha256": "d" * 64, "arrays": ["obs", "actions"]},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def write_events(path: Path) -> None:
    """env0 busy 0-5 s (50%), rollout0 2-4 s (20%), trainer 5-9 s (40%) of a 10 s log."""
    events = [{"worker": "driver", "kind": "run_start", "t": T0}]
    for i in range(50):  # env0: 50 env steps of 0.1 s back to back
        events.append(
            {
                "worker": "env0",
                "kind": "env_step",
                "t": T0 + 0.1 * (i + 1),
                "t0": T0 + 0.1 * i,
                "t1": T0 + 0.1 * (i + 1),
            }
        )
    for i in range(20):  # rollout0: 20 inferences of 0.1 s from 2 s
        t0 = T0 + 2 + 0.1 * i
        events.append(
            {"worker": "rollout0", "kind": "batch_inferred", "t": t0 + 0.1, "t0": t0, "t1": t0 + 0.1}
        )
    events.append({"worker": "trainer", "kind": "train", "t": T0 + 8.5, "t0": T0 + 5, "t1": T0 + 8.5})
    events.append(
        {"worker": "trainer", "kind": "weights_published", "t": T0 + 9, "t0": T0 + 8.5, "t1": T0 + 9}
    )
    events.append({"worker": "driver", "kind": "run_end", "t": T0 + 10})
    with path.open("w") as f:
        for seq, e in enumerate(events):
            f.write(json.dumps({"seq": seq, "wseq": seq, **e}) + "\n")


def embedded_pngs(page: str) -> dict[str, np.ndarray]:
    """id -> decoded RGB pixels of every <img> with a base64 PNG data URI."""
    out = {}
    for tag in re.findall(r"<img\b[^>]*>", page):
        src = re.search(r'src="data:image/png;base64,([^"]+)"', tag)
        ident = re.search(r'id="([^"]+)"', tag)
        assert src and ident and re.search(r'alt="[^"]+"', tag), tag[:200]
        raw = base64.b64decode(src.group(1), validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        out[ident.group(1)] = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.float64)
    return out


def assert_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    assert "http://" not in page and "https://" not in page


def test_report_has_every_section_and_plots_that_are_not_blank(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = write_report(run)
    assert out == run / "report.html"
    page = out.read_text()
    positions = [page.index(f'<section id="{s}">') for s in SECTIONS]
    assert positions == sorted(positions)
    for title in (
        "Learning curves",
        "Throughput",
        "Worker utilisation",
        "Staleness",
        "Evaluation",
        "Lineage",
    ):
        assert f"<h2>{title}</h2>" in page
    images = embedded_pngs(page)
    assert len(images) >= 5 and set(PLOT_IDS) <= set(images)
    for ident, px in images.items():
        assert px.std() > 10, f"{ident} looks blank"
        assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20, ident
    assert_self_contained(page)
    # header: final success with its interval and episodes
    assert "0.610" in page and "[0.510, 0.700]" in page and "over 100 episodes" in page
    # evaluation table: initial (SFT), periodic, final
    assert "initial policy (SFT checkpoint (sft/))" in page and "[0.070, 0.200]" in page
    assert "update 4 (4000 env steps)" in page
    assert "Final minus initial: +0.490" in page
    # utilisation table: the union of each worker's intervals over the 10 s log
    assert "50.0%" in page and "20.0%" in page and "40.0%" in page
    # staleness: 600 samples at 0, 600 + 10 * 21 at 1
    assert "1410 trained samples" in page
    # lineage from the manifest
    for text in (
        "0123456789ab (dirty: uncommitted changes)",
        "2.13.0 / 2.40.0",
        "Test CPU",
        "bbbbbbbbbbbb",
    ):
        assert text in page, text
    assert "differs from the manifest" not in page
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "config_sha256": "c" * 64}))
    assert "differs from the manifest" in write_report(run).read_text()


def test_busy_fractions_are_the_union_of_intervals(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path)
    with path.open("a") as f:  # an overlapping interval adds no busy time; a torn line is skipped
        f.write(
            json.dumps({"worker": "env0", "kind": "env_step", "t": T0 + 1, "t0": T0 + 0.5, "t1": T0 + 1})
            + "\n"
        )
        f.write('{"worker": "env0", "kind": "env_st')
    tl = read_timeline(path)
    assert tl is not None and tl.span_s == pytest.approx(10.0)
    rows = {r["worker"]: r for r in busy_table(tl)}
    assert list(rows) == ["env0", "rollout0", "trainer"]
    assert rows["env0"]["busy_frac"] == pytest.approx(0.5)
    assert rows["rollout0"]["busy_frac"] == pytest.approx(0.2)
    assert rows["trainer"]["busy_frac"] == pytest.approx(0.4)
    assert rows["trainer"]["per_kind"] == pytest.approx({"train": 3.5, "weights_published": 0.5})


def test_report_without_events_eval_or_trust_files_and_with_a_torn_line(tmp_path: Path, monkeypatch) -> None:
    run = make_run(tmp_path / "run", eval_every=100, events=False)
    (run / "summary.json").unlink()
    (run / "manifest.json").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"update": 7, "env_st')  # a crash mid-write
    page = write_report(run).read_text()
    assert "events.jsonl (worker events): not recorded" in page
    assert "manifest.json: not recorded" in page
    assert "final evaluation: not recorded" in page
    assert "No periodic held-out evaluation" in page
    assert "audit log: not available" in page
    images = embedded_pngs(page)
    assert "plot-timeline" not in images and len(images) >= 4
    assert_self_contained(page)


def test_audit_status_reports_the_chain_or_its_absence(tmp_path: Path) -> None:
    from asyncvla.trust.audit import AuditLog

    assert audit_status(tmp_path).startswith("audit log: not available")
    log = AuditLog(tmp_path)
    for u in range(3):
        log.append("weights", version=u + 1, sha256=f"{u:064x}")
    log.close()
    status = audit_status(tmp_path)
    assert status.startswith("audit chain intact: 3 records") and "(head " in status
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"version":2', '"version":7')
    (tmp_path / "audit.jsonl").write_text("\n".join(lines) + "\n")
    status = audit_status(tmp_path)
    assert status.startswith("audit chain broken") and "line 3" in status


def test_bad_run_directories_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ReportError) as e:
        write_report(tmp_path / "missing")
    assert str(e.value) == f"{tmp_path / 'missing'}: no such directory"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError) as e:
        write_report(tmp_path / "empty")
    msg = str(e.value)
    assert (
        msg == f"{tmp_path / 'empty'}: no metrics.jsonl (not a run directory, or the run wrote no update yet)"
    )
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"upd')
    with pytest.raises(ReportError, match="holds no update row") as e:
        write_report(tmp_path / "empty")
    assert "\n" not in str(e.value)


def test_a_large_event_log_plots_quickly(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    n = 120_000
    rng = np.random.default_rng(0)
    starts = np.sort(rng.uniform(0, 600, size=n))
    workers = ("env0", "env1", "rollout0", "trainer")
    kinds = ("env_step", "env_step", "batch_inferred", "train")
    with path.open("w") as f:
        for i, t0 in enumerate(starts):
            w = i % 4
            t = T0 + t0
            f.write(
                json.dumps(
                    {
                        "seq": i,
                        "worker": workers[w],
                        "wseq": i,
                        "kind": kinds[w],
                        "t": t + 0.004,
                        "t0": t,
                        "t1": t + 0.004,
                    }
                )
                + "\n"
            )
    start = time.perf_counter()
    tl = read_timeline(path)
    assert tl is not None
    img = plot_timeline(tl)
    busy = busy_table(tl)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"{elapsed:.1f} s for {n} events"
    assert img.startswith('<img id="plot-timeline"') and len(busy) == 4


def _browser() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium or chromium-browser on PATH (.ci/run installs it)")
    return exe


def _chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_report_renders_in_a_headless_browser(tmp_path: Path) -> None:
    exe = _browser()
    report = write_report(make_run(tmp_path / "run"))
    shot = tmp_path / "shot.png"
    res = _chromium(
        exe, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri()
    )
    assert shot.is_file(), res.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert px.shape[:2] == (3000, 1200)
    bands = [px[y : y + 300] for y in range(0, 3000, 300)]
    assert sum(b.std() > 10 for b in bands) >= 6, [round(b.std(), 1) for b in bands]
    # the plots are drawn: pixels of the timeline's "train" colour and the learning curve's colour
    for rgb in ((0x55, 0xA8, 0x68), (0x4C, 0x72, 0xB0)):
        near = (np.abs(px - np.array(rgb)).max(axis=2) < 12).sum()
        assert near > 500, (rgb, near)
    dom = _chromium(exe, tmp_path / "profile", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    imgs = re.findall(r"<img\b[^>]*>", dom.stdout)
    assert len(imgs) >= 5 and all("data:image/png;base64," in tag for tag in imgs)
    assert {re.search(r'id="([^"]+)"', tag).group(1) for tag in imgs} >= set(PLOT_IDS)
