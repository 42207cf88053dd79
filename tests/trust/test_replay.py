"""Deterministic sync runs and bit-exact replay of async runs (``asyncvla replay``)."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from asyncvla.cli import app
from asyncvla.config import load_config
from asyncvla.train import train
from asyncvla.trust.replay import TIMING, ReplayError, metrics_digest, replay
from tests.trust.tiny import TINY

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

BASE = [
    *TINY,
    "train.updates=8",
    "train.eval_every=4",
    "train.checkpoint_every=4",
    "algo.epochs=2",
]
# Two managers with heavy-tailed simulator step times and a staleness bound of 2, so that the
# schedule (batch composition, versions, arrival order) really depends on timing.
ASYNC = [
    "mode=async",
    "runtime.max_staleness=2",
    "runtime.max_batch_samples=8",
    "runtime.batch_timeout_ms=2",
    "env.kwargs.latency={kind: heavy_tail, mean_ms: 0.3, sigma: 1.0, tail_prob: 0.05, tail_mult: 20}",
]


def _weights(run, update=8):
    return load_file(str(run / "checkpoints" / f"update_{update:05d}" / "model.safetensors"))


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def async_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("async") / "run"
    train(load_config(None, [*BASE, *ASYNC]), run)
    return run


def test_two_sync_runs_give_identical_metrics_and_weights(tmp_path):
    # Two env workers: which one takes its ticket first is a race; the update must not depend on it.
    over = [*BASE, "mode=sync", "runtime.num_env_workers=2"]
    a, b = tmp_path / "a", tmp_path / "b"
    train(load_config(None, over), a)
    train(load_config(None, over), b)
    assert metrics_digest(a) == metrics_digest(b)
    rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and len({r["weights_sha256"] for r in rows}) == 8  # the digest sees training
    assert _same_weights(_weights(a), _weights(b))
    # and a sync run replays like any other
    res = replay(a)
    assert res.ok and res.updates == 8 and res.weights_checked == "checkpoints/update_00008"


def test_async_run_replays_bit_for_bit(async_run):
    rows = [json.loads(x) for x in (async_run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["staleness_max"] for r in rows) == 2  # staleness really occurred
    batches = [e for e in map(json.loads, (async_run / "events.jsonl").open()) if e["kind"] == "batch_formed"]
    assert len({len(e["reqs"]) for e in batches}) > 1  # dynamic batches of one and of two requests
    res = replay(async_run)
    assert res.ok, res.divergence
    assert res.updates == 8 and res.weights_checked == "checkpoints/update_00008"
    out = CliRunner().invoke(app, ["replay", str(async_run), "--until", "4"])
    assert out.exit_code == 0, out.output
    assert "4 updates" in out.output and "checkpoints/update_00004" in out.output


def test_a_perturbed_schedule_makes_replay_fail_naming_the_divergence(async_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(async_run, run)
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    # swap the two requests of the first two-request batch: the same samples, other rows of the
    # batch, so other sampled actions
    first = next(e for e in events if e["kind"] == "batch_formed" and len(e["reqs"]) == 2)
    first["reqs"].reverse()
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    res = replay(run)
    assert not res.ok and 1 <= res.divergence.update <= 8
    assert res.divergence.key not in TIMING and res.divergence.recorded != res.divergence.replayed
    out = CliRunner().invoke(app, ["replay", str(run)])
    assert out.exit_code == 1
    assert f"replay diverged at update {res.divergence.update}: {res.divergence.key} recorded" in out.output


def test_edited_weights_are_a_divergence(async_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(async_run, run)
    path = run / "checkpoints" / "update_00008" / "model.safetensors"
    from safetensors.torch import save_file

    w = load_file(str(path))
    k = sorted(w)[0]
    w[k] = w[k].clone()
    w[k].view(-1)[0] += 1.0
    save_file(w, str(path))
    res = replay(run)
    assert not res.ok and res.divergence.key == f"weights[{k}]" and res.divergence.update == 8


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "events.jsonl").unlink(), "no events.jsonl"),
        (lambda r: (r / "metrics.jsonl").unlink(), "no metrics.jsonl"),
        (
            lambda r: (r / "events.jsonl").write_text((r / "events.jsonl").read_text()[:-40]),
            "not JSON (truncated or edited)",
        ),
        (
            lambda r: (r / "config.yaml").write_text(
                (r / "config.yaml").read_text().replace("seed: 0", "seed: 1")
            ),
            "is not the config this run started with",
        ),
        (
            lambda r: (r / "events.jsonl").write_text(
                "".join(
                    json.dumps({k: v for k, v in e.items() if k != "reqs"}) + "\n"
                    for e in map(json.loads, (r / "events.jsonl").read_text().splitlines())
                )
            ),
            "lacks 'reqs'",
        ),
    ],
    ids=["no-events", "no-metrics", "truncated-events", "other-config", "no-schedule"],
)
def test_bad_run_directories_give_one_line(async_run, tmp_path, damage, message):
    run = tmp_path / "run"
    shutil.copytree(async_run, run)
    damage(run)
    with pytest.raises(ReplayError, match=re.escape(message)):
        replay(run)
    out = CliRunner().invoke(app, ["replay", str(run)])
    assert out.exit_code == 2
    lines = [ln for ln in out.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
