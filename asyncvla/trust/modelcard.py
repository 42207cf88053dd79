"""Model cards: a ``README.md`` in the Hugging Face model card format for each checkpoint of a run.

The YAML block holds the Hub's metadata (library, tags, pipeline tag) and a ``model-index`` with
one result per held-out evaluation of the checkpoint's own weights. The text gives the training
procedure from ``config.yaml`` and the checkpoint's ``state.json``, the evaluations (those of
earlier policies of the run are listed, labelled as such), limitations specific to the task
family, and the lineage: config hash, git commit, audit status and each file's SHA-256.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import yaml

from asyncvla.trust.report import (
    NOT_RECORDED,
    Run,
    audit_status,
    dataset_name,
    eval_rows,
    fmt_ci,
    fmt_rate,
    init_label,
    load_run,
    quick_eval_ci,
    sha256_file,
    task_family,
)

CARD = "README.md"
_INTERFACE_KEYS = (
    "image_keys",
    "image_size",
    "state_dim",
    "action_dim",
    "chunk_size",
    "head",
    "action_low",
    "action_high",
)
TAGS = ["robotics", "reinforcement-learning", "vision-language-action", "asyncvla"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def parameter_count(weights: Path) -> int | None:
    """Parameters in a safetensors file, from its header alone (8-byte length, then JSON)."""
    try:
        with weights.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            count = 1
            for d in entry.get("shape", []):
                count *= int(d)
            total += count
    return total


class _Checkpoint:
    """One checkpoint directory and its place in the run."""

    def __init__(self, path: Path, run: Run) -> None:
        self.path = path
        self.run_path = run.path
        self.policy = _read_json(path / "policy.json")
        self.state = _read_json(path / "state.json")
        # an RL checkpoint (checkpoints/update_NNNNN) has the trainer's state; sft/ has none
        self.is_rl = "update" in self.state
        self.update = int(self.state["update"]) if self.is_rl else 0
        s = run.summary or {}
        self.is_final = self.is_rl and "updates" in s and int(s["updates"]) == self.update
        # the SFT checkpoint the run's RL started from, evaluated as the initial policy
        self.is_initial = not self.is_rl and (run.config.get("train") or {}).get("init") == "sft"

    @property
    def label(self) -> str:
        try:
            return self.path.resolve().relative_to(self.run_path.resolve()).as_posix()
        except ValueError:
            return str(self.path)


def _evaluations(ck: _Checkpoint, run: Run) -> list[dict[str, Any]]:
    """Held-out evaluations of this checkpoint's weights: the initial evaluation (SFT checkpoint),
    the periodic one at its update, the final one (the last checkpoint)."""
    s = run.summary or {}
    quick = int(run.section("eval").get("quick_episodes") or 0)
    out = []
    if ck.is_initial and isinstance(s.get("sft_success_rate"), (int, float)):
        out.append(
            {
                "name": "initial held-out evaluation (before RL)",
                "value": float(s["sft_success_rate"]),
                "ci95": s.get("sft_success_ci95"),
                "episodes": s.get("eval_episodes"),
            }
        )
    if ck.is_rl:
        for r in eval_rows(run, ck.update):
            if int(r["update"]) == ck.update:
                rate = float(r["eval_success_rate"])
                ci = quick_eval_ci(rate, quick) if quick else None
                out.append(
                    {
                        "name": f"periodic held-out evaluation at update {ck.update}",
                        "value": rate,
                        "ci95": list(ci) if ci else None,
                        "episodes": quick or None,
                    }
                )
    if ck.is_final and isinstance(s.get("final_success_rate"), (int, float)):
        out.append(
            {
                "name": "final held-out evaluation",
                "value": float(s["final_success_rate"]),
                "ci95": s.get("final_success_ci95"),
                "episodes": s.get("eval_episodes"),
            }
        )
    return out


def _metadata(ck: _Checkpoint, run: Run, evals: list[dict[str, Any]]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_name": "asyncvla",
        "tags": list(TAGS),
        "pipeline_tag": "robotics",
    }
    if not evals:
        return meta
    ds = dataset_name(run.config)
    results = []
    for e in evals:
        metric: dict[str, Any] = {
            "type": "success_rate",
            "value": e["value"],
            "name": f"{e['name']} ({e['episodes'] or '?'} episodes)",
            "verified": False,
        }
        args = {}
        if e["ci95"] and len(e["ci95"]) == 2:
            args["ci95"] = [float(v) for v in e["ci95"]]
        if e["episodes"]:
            args["episodes"] = int(e["episodes"])
        if args:
            metric["args"] = args
        results.append(
            {
                "task": {"type": "reinforcement-learning", "name": f"{ds} (simulation)"},
                "dataset": {"name": ds, "type": ds, "split": "held-out init states"},
                "metrics": [metric],
            }
        )
    meta["model-index"] = [{"name": f"{run.name}/{ck.label}", "results": results}]
    return meta


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in kwargs.items()) or "none"


def _title(ck: _Checkpoint, run: Run) -> str:
    policy = ck.policy.get("name") or (run.config.get("policy") or {}).get("name") or "policy"
    kw = ck.policy.get("kwargs") or {}
    params = parameter_count(ck.path / "model.safetensors")
    what = "an RL checkpoint" if ck.is_rl else "the pre-RL (SFT) checkpoint"
    family = task_family(run.config)
    env = (run.config.get("env") or {}).get("name", NOT_RECORDED)
    lines = [
        f"# {policy} fine-tuned with asyncvla",
        "",
        f"`{ck.label}` of run `{run.name}`: {what} of the `{policy}` policy"
        + (f" ({params:,} parameters)" if params is not None else "")
        + f", trained on the `{env}` simulator"
        + (f", task family `{family}`." if family else "."),
        "",
        "Inputs: camera images, proprioceptive state and a language instruction; output: a chunk of "
        "actions per decision. Interface (policy.json): "
        + _kwargs_text({k: kw[k] for k in _INTERFACE_KEYS if k in kw})
        + ".",
    ]
    return "\n".join(lines)


def _intended_use(ck: _Checkpoint, run: Run) -> str:
    ds = dataset_name(run.config)
    return "\n".join(
        [
            "## Intended use",
            "",
            f"Research on RL fine-tuning of vision-language-action policies: a reference point, an "
            f"initialisation for further fine-tuning, or an object of study (staleness, off-policy "
            f"corrections, throughput) on `{ds}`, in simulation.",
            "",
            "Load and evaluate it with asyncvla (safetensors and JSON, no pickle):",
            "",
            "```python",
            "from asyncvla.policies import load_policy",
            "",
            'policy = load_policy("path/to/this/directory")',
            "```",
        ]
    )


def _training(ck: _Checkpoint, run: Run) -> str:
    cfg = run.config
    algo, train, sft, pre = (
        run.section("algo"),
        run.section("train"),
        run.section("sft"),
        run.section("pretrain"),
    )
    env, s = run.section("env"), run.summary or {}
    init = train.get("init")
    pairs: list[tuple[str, Any]] = []
    if ck.is_rl:
        pairs += [
            ("algorithm", algo.get("name", NOT_RECORDED)),
            (
                "schedule",
                f"{cfg.get('mode', NOT_RECORDED)}, max staleness "
                f"{s.get('max_staleness', (run.section('runtime')).get('max_staleness', NOT_RECORDED))}",
            ),
            ("updates (this checkpoint)", ck.update),
            ("env steps (this checkpoint)", ck.state.get("env_steps", NOT_RECORDED)),
            (
                "samples trained / rejected",
                f"{ck.state.get('decisions', NOT_RECORDED)} / {ck.state.get('rejected_samples', 0)}",
            ),
            ("RL wall-clock", f"{float(ck.state['wall_s']):.1f} s" if "wall_s" in ck.state else NOT_RECORDED),
            ("updates planned", train.get("updates", NOT_RECORDED)),
            ("initialisation", init_label(cfg)),
            (
                "learning rate",
                f"{algo.get('lr', NOT_RECORDED)}"
                + (" (annealed linearly to 0 over the planned updates)" if algo.get("anneal_lr") else ""),
            ),
            (
                "PPO",
                f"epochs {algo.get('epochs')}, minibatch {algo.get('minibatch_size')}, gamma {algo.get('gamma')}, "
                f"GAE lambda {algo.get('gae_lambda')}, clip [{algo.get('clip_low')}, {algo.get('clip_high')}], "
                f"off-policy correction {algo.get('off_policy')}",
            ),
            (
                "rollouts",
                f"{env.get('num_managers', '?')} env managers x {env.get('num_envs', '?')} envs, "
                f"{train.get('rollout_steps', '?')} decisions per segment",
            ),
        ]
    pairs.append(("seed", cfg.get("seed", NOT_RECORDED)))
    pairs.append(("env kwargs", _kwargs_text(env.get("kwargs") or {})))
    data = [
        "",
        "Data: the RL stage learns from its own interaction with the simulator (on-policy, up to the "
        "staleness bound), on training init states; held-out evaluation init states start at "
        f"`eval.seed_offset` = {run.section('eval').get('seed_offset', NOT_RECORDED)}.",
    ]
    if init == "sft" or not ck.is_rl:
        demos = s.get("sft_demos", sft.get("demos", NOT_RECORDED))
        sft_line = (
            f"SFT: behaviour cloning on {demos} scripted-expert demonstrations "
            f"({sft.get('steps', '?')} steps, lr {sft.get('lr', '?')}, batch {sft.get('batch_size', '?')}"
        )
        if "expert_success_rate" in s:
            sft_line += f", expert success {s['expert_success_rate']:.2f}"
        if "sft_final_nll" in s:
            sft_line += f", final NLL {s['sft_final_nll']:.3f}"
        data.append("")
        data.append(sft_line + ").")
        if pre.get("enabled"):
            data.append("")
            data.append(
                f"Before SFT, grounding pretraining (pointing at named objects, no actions) on "
                f"{pre.get('episodes', '?')} scenes per family of {', '.join(map(str, pre.get('families') or []))}"
                f" ({s.get('pretrain_samples', '?')} samples, {pre.get('epochs', '?')} epochs)."
            )
    return "\n".join(
        [
            "## Training procedure and data",
            "",
            _md_table(["item", "value"], [[k, v] for k, v in pairs]),
            *data,
        ]
    )


def _evaluation(ck: _Checkpoint, run: Run, evals: list[dict[str, Any]]) -> str:
    rows = [
        [e["name"], fmt_rate(e["value"]), fmt_ci(e["ci95"]), e["episodes"] or NOT_RECORDED] for e in evals
    ]
    parts = ["## Evaluation results", ""]
    if rows:
        parts.append(
            _md_table(["evaluation of these weights", "success rate", "95% interval", "episodes"], rows)
        )
    else:
        parts.append("The run recorded no held-out evaluation of these weights.")
    earlier = [r for r in eval_rows(run, ck.update) if int(r["update"]) != ck.update] if ck.is_rl else []
    s = run.summary or {}
    if ck.is_rl:
        quick = int(run.section("eval").get("quick_episodes") or 0)
        history = [
            [
                f"initial policy ({init_label(run.config)})",
                fmt_rate(s.get("sft_success_rate")),
                fmt_ci(s.get("sft_success_ci95")),
                s.get("eval_episodes", NOT_RECORDED),
            ]
        ]
        for r in earlier:
            ci = quick_eval_ci(float(r["eval_success_rate"]), quick) if quick else None
            history.append(
                [f"update {r['update']}", fmt_rate(r["eval_success_rate"]), fmt_ci(ci), quick or NOT_RECORDED]
            )
        parts += [
            "",
            "Earlier policies of the same run, for reference (not these weights):",
            "",
            _md_table(["policy", "success rate", "95% interval", "episodes"], history),
        ]
    parts += [
        "",
        "Success: the fraction of episodes that reach the task's goal, with deterministic actions; "
        "intervals are Wilson 95% intervals.",
    ]
    return "\n".join(parts)


def _limitations(ck: _Checkpoint, run: Run, evals: list[dict[str, Any]]) -> str:
    env = run.section("env")
    family = task_family(run.config)
    task = f"`{env.get('name', NOT_RECORDED)}`" + (f" task family `{family}`" if family else "")
    episodes = [int(e["episodes"]) for e in evals if e["episodes"]]
    bullets = [
        f"Trained and evaluated only in simulation, on {task} with env kwargs "
        f"{_kwargs_text(env.get('kwargs') or {})}. Not validated on real robots: the sim-to-real gap "
        "(rendering, dynamics, latency, sensing) is not measured, and nothing here makes the policy "
        "safe to run on hardware.",
        "Success is measured on held-out init states of the same distribution as training (same env "
        "kwargs, other seeds). It says nothing about other task families, objects, instructions, "
        "camera placements or perturbations.",
        "Training-episode success in metrics.jsonl is on-policy, with exploration noise and on "
        "training init states; it is not an evaluation.",
    ]
    if episodes:
        n = min(episodes)
        bullets.append(
            f"The smallest evaluation here has {n} episodes; differences between checkpoints smaller "
            "than the width of their intervals are not evidence of improvement."
        )
    if not evals:
        bullets.append("These weights have no held-out evaluation of their own; evaluate before use.")
    if not (ck.is_final or ck.is_initial):
        bullets.append("An intermediate checkpoint of the run, not its final policy.")
    m = run.manifest or {}
    if not m:
        bullets.append("No manifest.json: the software environment and git commit are not recorded.")
    elif isinstance(m.get("git"), dict) and m["git"].get("dirty"):
        bullets.append(
            "Trained from a git tree with uncommitted changes: the commit alone does not reproduce it."
        )
    bullets.append("Out of scope: any use where a wrong action can harm people or property.")
    return "\n".join(["## Limitations and out-of-scope use", "", *[f"- {b}" for b in bullets]])


def _lineage(ck: _Checkpoint, run: Run) -> str:
    m = run.manifest or {}
    git = m.get("git")
    git_s = (
        f"`{git.get('commit')}`" + (" (dirty)" if git.get("dirty") else "")
        if isinstance(git, dict)
        else NOT_RECORDED
    )
    cfg = run.path / "config.yaml"
    pairs = [
        ("run directory", f"`{run.path.name}`"),
        ("checkpoint", f"`{ck.label}`"),
        ("config sha256 (manifest)", f"`{m['config_sha256']}`" if m.get("config_sha256") else NOT_RECORDED),
        ("config.yaml sha256 (on disk)", f"`{sha256_file(cfg)}`" if cfg.is_file() else NOT_RECORDED),
        ("git commit", git_s),
        ("audit", audit_status(run.path)),
    ]
    recorded: dict[str, str] = {}
    for entry in m.get("checkpoints_written") or []:
        if isinstance(entry, dict) and str(entry.get("path", "")).rstrip("/") == ck.label:
            recorded = entry.get("files") or {}
    files = []
    for f in sorted(
        p for p in ck.path.iterdir() if p.is_file() and p.name != CARD and not p.name.startswith(".")
    ):
        digest = sha256_file(f)
        check = (
            ""
            if f.name not in recorded
            else (" (matches manifest)" if recorded[f.name] == digest else " (DIFFERS from manifest)")
        )
        files.append([f"`{f.name}`", f"`{digest}`{check}"])
    return "\n".join(
        [
            "## Lineage",
            "",
            _md_table(["item", "value"], [[k, v] for k, v in pairs]),
            "",
            "Files of this checkpoint (SHA-256):",
            "",
            _md_table(["file", "sha256"], files),
        ]
    )


def render_model_card(ckpt_dir: Path, run: Run) -> str:
    ck = _Checkpoint(Path(ckpt_dir), run)
    evals = _evaluations(ck, run)
    meta = yaml.safe_dump(_metadata(ck, run, evals), sort_keys=False, allow_unicode=True)
    body = [
        _title(ck, run),
        _intended_use(ck, run),
        _training(ck, run),
        _evaluation(ck, run, evals),
        _limitations(ck, run, evals),
        _lineage(ck, run),
    ]
    return f"---\n{meta}---\n\n" + "\n\n".join(body) + "\n"


def write_model_card(ckpt_dir: Path, run_dir: Path) -> Path:
    """Write CKPT_DIR/README.md for a checkpoint of the run in ``run_dir``.

    Raises ``ReportError`` (one line) when ``run_dir`` is not a run directory with metric rows,
    ``FileNotFoundError`` when ``ckpt_dir`` holds no model.safetensors.
    """
    from asyncvla.rundir import atomic_write_text

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{ckpt_dir}: no model.safetensors (not a checkpoint directory)")
    out = ckpt_dir / CARD
    atomic_write_text(out, render_model_card(ckpt_dir, load_run(run_dir)))
    return out


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The run's checkpoint directories: ``sft/`` (if any), then ``checkpoints/update_*`` in order."""
    run_dir = Path(run_dir)
    dirs = [run_dir / "sft"] if (run_dir / "sft" / "model.safetensors").is_file() else []
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        dirs += sorted(
            p
            for p in ckpts.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "model.safetensors").is_file()
        )
    return dirs


def write_model_cards(run_dir: Path) -> list[Path]:
    """A model card in every checkpoint directory of the run; returns their paths."""
    from asyncvla.rundir import atomic_write_text

    run = load_run(run_dir)
    out = []
    for d in checkpoint_dirs(run.path):
        path = d / CARD
        atomic_write_text(path, render_model_card(d, run))
        out.append(path)
    return out
