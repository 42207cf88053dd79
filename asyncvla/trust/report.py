"""The run report: one self-contained HTML page (``report.html``) built from a run directory.

It reads what a run writes (``config.yaml``, ``metrics.jsonl``, ``events.jsonl``,
``summary.json``, ``checkpoints/``) and, where present, ``manifest.json`` and the audit log. Plots
are matplotlib PNGs embedded as base64 ``data:`` URIs and the CSS is inline, so the page opens
offline and can be archived or mailed as one file; it holds no script and no external URL.

Every input but ``metrics.jsonl`` may be missing (a run still going, one that crashed, one from
before the trust files): its section then says "not recorded".
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from asyncvla.trust.audit import sha256_file, verify_run

NOT_RECORDED = "not recorded"
INTERVAL_KINDS = ("env_step", "batch_inferred", "micro_batch", "train", "weights_published")
"""Event kinds with ``t0``/``t1`` (``asyncvla.runtime.events``): the busy spans of the timeline."""
_KIND_COLOURS = {
    "env_step": "#4c72b0",
    "batch_inferred": "#dd8452",
    "micro_batch": "#8172b3",
    "train": "#55a868",
    "weights_published": "#c44e52",
}
_TIMELINE_BINS = 4000
"""Intervals of one worker and kind closer than span / this are drawn as one bar (a pixel is wider)."""


class ReportError(Exception):
    """The run directory cannot be reported on; the message is one line naming it and why."""


@dataclass
class Run:
    """What a run directory holds, parsed; the optional parts are None when absent."""

    path: Path
    config: dict[str, Any]
    """``config.yaml`` as a plain mapping (empty when missing)."""
    rows: list[dict[str, Any]]
    """``metrics.jsonl``, one row per update (a torn last line is skipped)."""
    summary: dict[str, Any] | None
    manifest: dict[str, Any] | None

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    def section(self, key: str) -> dict[str, Any]:
        value = self.config.get(key)
        return value if isinstance(value, dict) else {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; lines that do not parse (a torn write) are skipped."""
    out = []
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def load_run(run_dir: str | Path) -> Run:
    """Parse a run directory. Raises ``ReportError`` when it holds no metric row."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(f"{path}: no metrics.jsonl (not a run directory, or the run wrote no update yet)")
    rows = [r for r in read_jsonl(metrics) if "update" in r]
    if not rows:
        raise ReportError(f"{path}: metrics.jsonl holds no update row (the run wrote no update yet)")
    config: dict[str, Any] = {}
    cfg_path = path / "config.yaml"
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError:
            loaded = None
        config = loaded if isinstance(loaded, dict) else {}
    return Run(path, config, rows, _read_json(path / "summary.json"), _read_json(path / "manifest.json"))


def audit_status(run_dir: Path) -> str:
    """One line on the audit chain of ``audit.jsonl``: intact (records, head) or why not."""
    if not (Path(run_dir) / "audit.jsonl").is_file():
        return "audit log: not available (no audit.jsonl)"
    try:
        res = verify_run(Path(run_dir))
    except Exception as e:  # a verifier that fails is reported, not fatal to the report
        return f"audit log: verification failed ({type(e).__name__}: {e})"
    if res.ok:
        return f"{res.message} (head {str(res.head)[:16]})"
    return f"audit chain broken after {res.records} intact records: {res.message}"


def task_family(config: dict[str, Any]) -> str | None:
    """The env's task family (tabletop ``family``, LIBERO ``suite``), if the config names one."""
    kwargs = (config.get("env") or {}).get("kwargs") or {}
    for key in ("family", "suite"):
        if kwargs.get(key):
            return str(kwargs[key])
    return None


def dataset_name(config: dict[str, Any]) -> str:
    """``env.name`` and, if any, its task family: ``tabletop-object``."""
    env = str((config.get("env") or {}).get("name") or "unknown-env")
    family = task_family(config)
    return f"{env}-{family}" if family else env


def init_label(config: dict[str, Any]) -> str:
    """What the RL stage started from (``train.init``)."""
    init = (config.get("train") or {}).get("init")
    if init is None:
        return "random initialisation"
    if init == "sft":
        return "SFT checkpoint (sft/)"
    return f"checkpoint {init}"


def fmt_ci(ci: Sequence[float] | None) -> str:
    if not ci or len(ci) != 2 or any(v is None for v in ci):
        return NOT_RECORDED
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def fmt_rate(value: float | None) -> str:
    return NOT_RECORDED if value is None else f"{value:.3f}"


def quick_eval_ci(rate: float, episodes: int) -> tuple[float, float] | None:
    """The Wilson 95% interval of a periodic evaluation (its success count is rate * episodes)."""
    if episodes <= 0:
        return None
    from asyncvla.stats import wilson_interval

    k = min(episodes, max(0, round(rate * episodes)))
    return wilson_interval(k, episodes)


def eval_rows(run: Run, up_to: int | None = None) -> list[dict[str, Any]]:
    """Metric rows with a periodic held-out evaluation, at or before update ``up_to``."""
    return [r for r in run.rows if "eval_success_rate" in r and (up_to is None or int(r["update"]) <= up_to)]


# -- plots ---------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig_id: str, alt: str, fig) -> str:
    return f'<img id="{fig_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _series(rows: Iterable[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [
        (float(r[x]), float(r[y]))
        for r in rows
        if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_learning(rows: list[dict[str, Any]]) -> str:
    fig = _figure(10, 3.6)
    a = fig.add_subplot(1, 1, 1)
    xs, ys = _series(rows, "env_steps", "success_rate")
    a.plot(xs, ys, color="#4c72b0", label="training episodes (recent window)")
    ex, ey = _series(rows, "env_steps", "eval_success_rate")
    if ex:
        a.plot(ex, ey, "o-", color="#c44e52", label="held-out evaluation")
    a.set_xlabel("env steps")
    a.set_ylabel("success rate")
    a.set_ylim(-0.02, 1.02)
    a.grid(alpha=0.3)
    a.legend(loc="best")
    return _img(
        "plot-learning", "success rate of training episodes and held-out evaluations vs env steps", fig
    )


def plot_return(rows: list[dict[str, Any]]) -> str:
    fig = _figure(10, 3.0)
    a = fig.add_subplot(1, 1, 1)
    xs, ys = _series(rows, "env_steps", "episode_return")
    a.plot(xs, ys, color="#55a868")
    a.set_xlabel("env steps")
    a.set_ylabel("episode return")
    a.grid(alpha=0.3)
    return _img("plot-return", "mean return of training episodes vs env steps", fig)


def plot_throughput(rows: list[dict[str, Any]]) -> str:
    fig = _figure(10, 3.2)
    a = fig.add_subplot(1, 1, 1)
    xs, ys = _series(rows, "wall_s", "env_steps_per_s")
    a.plot(xs, ys, color="#4c72b0", label="since the start")
    ws, steps = _series(rows, "wall_s", "env_steps")
    if len(ws) > 1:
        dt = np.diff(ws)
        ok = dt > 0
        rate = np.diff(steps)[ok] / dt[ok]
        a.plot(np.asarray(ws[1:])[ok], rate, ".-", color="#dd8452", alpha=0.7, label="per update")
    a.set_xlabel("wall-clock seconds of the RL stage")
    a.set_ylabel("env steps / s")
    a.set_ylim(bottom=0)
    a.grid(alpha=0.3)
    a.legend(loc="best")
    return _img("plot-throughput", "env steps per second vs wall-clock time", fig)


def plot_optimisation(rows: list[dict[str, Any]]) -> str | None:
    keys = [
        k
        for k in ("loss_policy", "loss_value", "entropy", "approx_kl", "clipfrac", "grad_norm")
        if any(isinstance(r.get(k), (int, float)) for r in rows)
    ]
    if not keys:
        return None
    cols = 3
    nrows = math.ceil(len(keys) / cols)
    fig = _figure(10, 2.4 * nrows)
    for i, k in enumerate(keys):
        a = fig.add_subplot(nrows, cols, i + 1)
        xs, ys = _series(rows, "update", k)
        a.plot(xs, ys, color="#8172b3")
        a.set_title(k, fontsize=9)
        a.set_xlabel("update", fontsize=8)
        a.tick_params(labelsize=7)
        a.grid(alpha=0.3)
    return _img("plot-optimisation", "PPO losses and diagnostics per update", fig)


def staleness_histogram(rows: list[dict[str, Any]]) -> dict[int, int]:
    """Trained samples per staleness (trainer version - behaviour version), summed over updates."""
    total: dict[int, int] = {}
    for r in rows:
        hist = r.get("staleness_hist")
        if not isinstance(hist, dict):
            continue
        for k, v in hist.items():
            try:
                total[int(k)] = total.get(int(k), 0) + int(v)
            except (TypeError, ValueError):
                continue
    return dict(sorted(total.items()))


def plot_staleness(hist: dict[int, int]) -> str:
    fig = _figure(6, 3.0)
    a = fig.add_subplot(1, 1, 1)
    a.bar(list(hist), list(hist.values()), color="#dd8452", width=0.7)
    a.set_xticks(list(hist))
    a.set_xlabel("staleness (policy versions behind the trainer)")
    a.set_ylabel("trained samples")
    a.grid(alpha=0.3, axis="y")
    return _img("plot-staleness", "histogram of the staleness of trained samples", fig)


# -- the event timeline --------------------------------------------------------------------------


@dataclass
class Timeline:
    """The interval events of ``events.jsonl`` per worker and kind, in seconds since the first event."""

    span_s: float
    intervals: dict[str, dict[str, np.ndarray]]
    """worker -> kind -> float array [n, 2] of (start, end), sorted by start."""
    failures: dict[str, list[float]]
    """worker -> times of its ``worker_failed`` events."""


def read_timeline(path: Path) -> Timeline | None:
    """Parse ``events.jsonl`` (None if absent or without events). Only interval events and
    failures are decoded in full; the rest contribute their time ``t`` to the span."""
    if not path.is_file():
        return None
    t_min, t_max = math.inf, -math.inf
    raw: dict[tuple[str, str], list[tuple[float, float]]] = {}
    failed: dict[str, list[float]] = {}
    with path.open() as f:
        for line in f:
            try:
                e = json.loads(line)
                t = float(e.get("t", e.get("t1", math.nan)))
            except (ValueError, TypeError, AttributeError):
                continue
            if math.isfinite(t):
                t_min, t_max = min(t_min, t), max(t_max, t)
            if "t0" in e and "t1" in e:
                try:
                    t0, t1 = float(e["t0"]), float(e["t1"])
                except (TypeError, ValueError):
                    continue
                raw.setdefault((str(e.get("worker")), str(e.get("kind"))), []).append((t0, t1))
                t_min, t_max = min(t_min, t0), max(t_max, t1)
            elif e.get("kind") == "worker_failed" and math.isfinite(t):
                failed.setdefault(str(e.get("actor") or e.get("worker")), []).append(t)
    if not math.isfinite(t_min):
        return None
    intervals: dict[str, dict[str, np.ndarray]] = {}
    for (worker, kind), spans in raw.items():
        arr = np.asarray(spans, dtype=np.float64) - t_min
        intervals.setdefault(worker, {})[kind] = arr[np.argsort(arr[:, 0], kind="stable")]
    failures = {w: [t - t_min for t in ts] for w, ts in failed.items()}
    return Timeline(max(t_max - t_min, 0.0), intervals, failures)


def merge_intervals(spans: np.ndarray, gap: float = 0.0) -> np.ndarray:
    """Union of sorted [n, 2] (start, end) spans; spans less than ``gap`` apart are joined."""
    if len(spans) == 0:
        return spans.reshape(0, 2)
    ends = np.maximum.accumulate(spans[:, 1])
    opens = np.empty(len(spans), dtype=bool)
    opens[0] = True
    opens[1:] = spans[1:, 0] > ends[:-1] + gap
    starts = np.flatnonzero(opens)
    last = np.append(starts[1:] - 1, len(spans) - 1)
    return np.stack([spans[starts, 0], ends[last]], axis=1)


def _worker_order(name: str) -> tuple[int, str, int]:
    groups = ("env", "rollout", "trainer", "coordinator", "driver")
    stem = name.rstrip("0123456789")
    digits = name[len(stem) :]
    group = groups.index(stem) if stem in groups else len(groups)
    return group, stem, int(digits) if digits else -1


def _total(spans: np.ndarray) -> float:
    return float((spans[:, 1] - spans[:, 0]).sum())


def busy_table(tl: Timeline) -> list[dict[str, Any]]:
    """Per worker: interval events, busy seconds (union of its intervals) and busy fraction of
    the span of the whole event log, plus seconds per kind."""
    out = []
    for worker in sorted(tl.intervals, key=_worker_order):
        kinds = tl.intervals[worker]
        allspans = np.concatenate(list(kinds.values()))
        allspans = allspans[np.argsort(allspans[:, 0], kind="stable")]
        busy = _total(merge_intervals(allspans))
        out.append(
            {
                "worker": worker,
                "events": int(len(allspans)),
                "busy_s": busy,
                "busy_frac": busy / tl.span_s if tl.span_s > 0 else 0.0,
                "per_kind": {k: _total(merge_intervals(v)) for k, v in kinds.items()},
            }
        )
    return out


def plot_timeline(tl: Timeline) -> str:
    workers = sorted(tl.intervals, key=_worker_order)
    gap = tl.span_s / _TIMELINE_BINS
    fig = _figure(10, 1.2 + 0.45 * len(workers))
    a = fig.add_subplot(1, 1, 1)
    seen: set[str] = set()
    for i, worker in enumerate(workers):
        for kind, spans in tl.intervals[worker].items():
            m = merge_intervals(spans, gap)
            colour = _KIND_COLOURS.get(kind, "#937860")
            label = kind if kind not in seen else None
            seen.add(kind)
            a.broken_barh(
                np.stack([m[:, 0], np.maximum(m[:, 1] - m[:, 0], gap)], axis=1),
                (i - 0.35, 0.7),
                facecolors=colour,
                label=label,
            )
        if tl.failures.get(worker):
            label = "worker failed" if "worker failed" not in seen else None
            seen.add("worker failed")
            a.plot(tl.failures[worker], [i] * len(tl.failures[worker]), "kx", markersize=8, label=label)
    a.set_yticks(range(len(workers)))
    a.set_yticklabels(workers)
    a.set_ylim(len(workers) - 0.5, -0.5)
    a.set_xlim(0, max(tl.span_s, 1e-6))
    a.set_xlabel("seconds since the first event")
    a.grid(alpha=0.3, axis="x")
    fig.legend(loc="outside upper center", ncol=6, fontsize=8, frameon=False)
    return _img("plot-timeline", "per-worker timeline of busy intervals, coloured by event kind", fig)


# -- HTML ----------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1080px;
       color: #222; background: #fff; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.muted { color: #777; }
.headline { font-size: 1.15em; }
.bad { color: #b00020; font-weight: 600; }
code { font-size: 0.9em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], body: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = []
    for row in body:
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs) + "</table>"


def _not_recorded(what: str) -> str:
    return f'<p class="muted">{_e(what)}: {NOT_RECORDED}.</p>'


def _header(run: Run) -> str:
    s = run.summary or {}
    last = run.rows[-1]
    updates = s.get("updates", last.get("update"))
    env_steps = s.get("env_steps", last.get("env_steps"))
    wall = s.get("wall_s", last.get("wall_s"))
    mode = s.get("mode", run.config.get("mode", NOT_RECORDED))
    if run.summary is None:
        headline = (
            '<p class="headline bad">final evaluation: not recorded (no summary.json: the run is '
            "still going, or it stopped before its final evaluation)</p>"
        )
    else:
        headline = (
            f'<p class="headline">final held-out success <b>{fmt_rate(s.get("final_success_rate"))}</b>, '
            f"95% interval {fmt_ci(s.get('final_success_ci95'))}, over "
            f"{_e(s.get('eval_episodes', NOT_RECORDED))} episodes</p>"
        )
    pairs = [
        ("run", f"{run.name} ({run.path.name})"),
        ("mode", f"{mode}, max staleness {s.get('max_staleness', NOT_RECORDED)}"),
        ("task", dataset_name(run.config)),
        ("policy", (run.config.get("policy") or {}).get("name", NOT_RECORDED)),
        ("updates", updates),
        ("env steps", env_steps),
        ("RL wall-clock", NOT_RECORDED if wall is None else f"{float(wall):.1f} s"),
        ("env steps/s", NOT_RECORDED if "env_steps_per_s" not in s else f"{s['env_steps_per_s']:.0f}"),
        (
            "samples trained / rejected",
            f"{s.get('samples_trained', NOT_RECORDED)} / {s.get('samples_rejected', NOT_RECORDED)}",
        ),
    ]
    lost = {k: s[k] for k in ("lost_samples", "lost_episodes", "worker_restarts", "env_errors") if s.get(k)}
    if lost:
        pairs.append(("supervision", ", ".join(f"{k} {v}" for k, v in lost.items())))
    return f'<section id="run"><h1>Run report: {_e(run.name)}</h1>{headline}{_kv(pairs)}</section>'


def _learning(run: Run) -> str:
    parts = [plot_learning(run.rows), plot_return(run.rows)]
    if not eval_rows(run):
        parts.append('<p class="muted">No periodic held-out evaluation (train.eval_every is 0).</p>')
    opt = plot_optimisation(run.rows)
    opt_html = f"<h3>Optimisation</h3>{opt}" if opt else ""
    return f'<section id="learning"><h2>Learning curves</h2>{"".join(parts)}{opt_html}</section>'


def _throughput(run: Run) -> str:
    return f'<section id="throughput"><h2>Throughput</h2>{plot_throughput(run.rows)}</section>'


def _utilisation(run: Run) -> str:
    tl = read_timeline(run.path / "events.jsonl")
    title = "<h2>Worker utilisation</h2>"
    if tl is None or not tl.intervals:
        return f'<section id="utilisation">{title}{_not_recorded("events.jsonl (worker events)")}</section>'
    rows = busy_table(tl)
    table = _table(
        ["worker", "interval events", "busy s", "busy fraction", "busy s per kind"],
        [
            (
                r["worker"],
                r["events"],
                f"{r['busy_s']:.2f}",
                f"{r['busy_frac']:.1%}",
                ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["per_kind"].items())),
            )
            for r in rows
        ],
        numeric=(1, 2, 3),
    )
    note = (
        f'<p class="muted">Span of the event log: {tl.span_s:.1f} s. Busy: the union of a worker\'s '
        "intervals (env steps, inference, training, weight publication); idle time is waiting. "
        "Crosses mark worker failures.</p>"
    )
    return f'<section id="utilisation">{title}{plot_timeline(tl)}{note}{table}</section>'


def _staleness(run: Run) -> str:
    hist = staleness_histogram(run.rows)
    title = "<h2>Staleness</h2>"
    if not hist:
        return f'<section id="staleness">{title}{_not_recorded("staleness histogram")}</section>'
    total = sum(hist.values())
    mean = sum(k * v for k, v in hist.items()) / total if total else 0.0
    note = (
        f"<p>{total} trained samples; mean staleness {mean:.2f}, max {max(hist)} "
        f"(bound {_e((run.summary or {}).get('max_staleness', NOT_RECORDED))}).</p>"
    )
    return f'<section id="staleness">{title}{plot_staleness(hist)}{note}</section>'


def _evaluation(run: Run) -> str:
    s = run.summary or {}
    episodes = s.get("eval_episodes", NOT_RECORDED)
    quick = int((run.section("eval")).get("quick_episodes") or 0)
    body: list[tuple[Any, ...]] = [
        (
            f"initial policy ({init_label(run.config)})",
            "before RL",
            fmt_rate(s.get("sft_success_rate")),
            fmt_ci(s.get("sft_success_ci95")),
            episodes if "sft_success_rate" in s else NOT_RECORDED,
        )
    ]
    for r in eval_rows(run):
        body.append(
            (
                "periodic held-out evaluation",
                f"update {r['update']} ({r.get('env_steps', '?')} env steps)",
                fmt_rate(r["eval_success_rate"]),
                fmt_ci(quick_eval_ci(float(r["eval_success_rate"]), quick)) if quick else NOT_RECORDED,
                quick or NOT_RECORDED,
            )
        )
    body.append(
        (
            "final policy",
            f"update {s['updates']}" if "updates" in s else NOT_RECORDED,
            fmt_rate(s.get("final_success_rate")),
            fmt_ci(s.get("final_success_ci95")),
            episodes if "final_success_rate" in s else NOT_RECORDED,
        )
    )
    table = _table(["policy", "when", "success rate", "95% interval", "episodes"], body, numeric=(2, 4))
    delta = ""
    if isinstance(s.get("final_success_rate"), (int, float)) and isinstance(
        s.get("sft_success_rate"), (int, float)
    ):
        delta = f"<p>Final minus initial: {s['final_success_rate'] - s['sft_success_rate']:+.3f}.</p>"
    note = (
        '<p class="muted">Held-out init states (eval.seed_offset and up) are disjoint from the '
        "training ones; intervals are Wilson 95% intervals of the success count.</p>"
    )
    return f'<section id="evaluation"><h2>Evaluation</h2>{table}{delta}{note}</section>'


def _short(digest: Any, n: int = 12) -> str:
    return str(digest)[:n] if digest else NOT_RECORDED


def _checkpoint_lines(entries: Any) -> list[tuple[str, str]]:
    out = []
    for c in entries if isinstance(entries, list) else []:
        files = c.get("files") if isinstance(c, dict) else None
        hashes = ", ".join(f"{k} {_short(v)}" for k, v in sorted((files or {}).items()))
        out.append((str(c.get("path", "?") if isinstance(c, dict) else c), hashes or NOT_RECORDED))
    return out


def _recorded_config_sha256(manifest: dict[str, Any] | None) -> str | None:
    """The config hash of the latest start: a resume records its own (it rewrites config.yaml)."""
    if not manifest:
        return None
    resumes = [r for r in manifest.get("resumes") or [] if isinstance(r, dict) and r.get("config_sha256")]
    return resumes[-1]["config_sha256"] if resumes else manifest.get("config_sha256")


def _lineage(run: Run) -> str:
    title = "<h2>Lineage</h2>"
    audit = f"<p>{_e(audit_status(run.path))}</p>"
    cfg = run.path / "config.yaml"
    m = run.manifest
    cfg_line = ""
    if cfg.is_file():
        digest = sha256_file(cfg)
        recorded = _recorded_config_sha256(m)
        differs = (
            ' <span class="bad">(differs from the manifest: config.yaml changed after the run started)</span>'
            if recorded and recorded != digest
            else ""
        )
        cfg_line = f"<p>config.yaml sha256 on disk <code>{digest}</code>{differs}</p>"
    if m is None:
        ckpts = sorted(p.name for p in (run.path / "checkpoints").glob("update_*") if p.is_dir())
        listing = f"<p>Checkpoints on disk: {_e(', '.join(ckpts) or 'none')}.</p>"
        return f'<section id="lineage">{title}{_not_recorded("manifest.json")}{cfg_line}{listing}{audit}</section>'
    git = m.get("git")
    git_s = (
        f"{_short(git.get('commit'))}{' (dirty: uncommitted changes)' if git.get('dirty') else ''}"
        if isinstance(git, dict)
        else NOT_RECORDED
    )
    pkgs = m.get("packages") or {}
    demo = m.get("demo_data")
    pairs = [
        ("started / finished", f"{m.get('started') or NOT_RECORDED} / {m.get('finished') or 'not finished'}"),
        ("config sha256", m.get("config_sha256") or NOT_RECORDED),
        ("resumes", len(m.get("resumes") or [])),
        ("seed", m.get("seed", NOT_RECORDED)),
        ("git commit", git_s),
        ("python", m.get("python") or NOT_RECORDED),
        ("torch / ray", f"{pkgs.get('torch', NOT_RECORDED)} / {pkgs.get('ray', NOT_RECORDED)}"),
        ("packages recorded", len(pkgs)),
        ("platform", m.get("platform") or NOT_RECORDED),
        ("cpu", m.get("cpu") or NOT_RECORDED),
        ("gpu", m.get("gpu") or "none"),
        ("assets", f"{len(m.get('assets') or {})} hashed"),
        (
            "demo data",
            f"sha256 {_short(demo.get('sha256'))}, arrays {', '.join(map(str, demo.get('arrays') or []))}"
            if isinstance(demo, dict)
            else "none",
        ),
    ]
    loaded = _checkpoint_lines(m.get("checkpoints_loaded"))
    written = _checkpoint_lines(m.get("checkpoints_written"))
    ck = ""
    if loaded or written:
        ck = _table(
            ["checkpoint", "direction", "files (sha256, first 12 hex digits)"],
            [(p, "loaded", h) for p, h in loaded] + [(p, "written", h) for p, h in written],
        )
    return f'<section id="lineage">{title}{_kv(pairs)}{cfg_line}{ck}{audit}</section>'


def render_report(run: Run) -> str:
    sections = [
        _header(run),
        _learning(run),
        _throughput(run),
        _utilisation(run),
        _staleness(run),
        _evaluation(run),
        _lineage(run),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>asyncvla run report: {_e(run.name)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(sections)}"
        f'<p class="muted">Generated by asyncvla.trust.report from {_e(run.path)}.</p></body></html>\n'
    )


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``).

    Raises ``ReportError`` (one line) when ``run_dir`` is not a run directory with metric rows.
    """
    from asyncvla.rundir import atomic_write_text

    run = load_run(run_dir)
    target = Path(out) if out is not None else run.path / "report.html"
    atomic_write_text(target, render_report(run))
    return target
