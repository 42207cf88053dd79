"""Bad input to any command: one line on the terminal, exit code 2, nothing written."""

import json

import pytest
import torch
from typer.testing import CliRunner

from asyncvla.builder import build_policy
from asyncvla.cli import app
from asyncvla.config import load_config
from asyncvla.policies import save_policy

REACH = ["env.kwargs.family=reach", "env.kwargs.image_size=32", "policy.kwargs.width=32"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt") / "policy"
    save_policy(build_policy(load_config(None, REACH)), d, "tiny_vla")
    return d


def _broken(ckpt, tmp_path, how):
    d = tmp_path / how
    d.mkdir()
    for f in ("policy.json", "model.safetensors"):
        (d / f).write_bytes((ckpt / f).read_bytes())
    if how == "truncated":
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "no-policy-json":
        (d / "policy.json").unlink()
    elif how == "other-architecture":
        meta = json.loads((d / "policy.json").read_text())
        meta["kwargs"]["width"] = 48
        (d / "policy.json").write_text(json.dumps(meta))
    elif how == "not-json":
        (d / "policy.json").write_text("{name: tiny")
    return d


def _one_error_line(r, *expected):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "configs/quickstart.yaml", "algo.lr=fast"], ["algo.lr"]),
        (["train", "configs/quickstart.yaml", "algo.nope=1"], ["algo.nope"]),
        (["compare", "configs/quickstart.yaml", "algo.epochs=0"], ["algo.epochs"]),
        (["sft", "configs/quickstart.yaml", "sft.steps=-1"], ["sft.steps"]),
        (["trainer-speed", "configs/quickstart.yaml", "env.kwargs.family=juggle"], ["env.kwargs"]),
        (["env-speed", "bogus_kwarg=1"], ["env.kwargs", "bogus_kwarg"]),
        (["env-speed", "--env", "nowhere"], ["env.name", "nowhere"]),
        (["bench", "--workload", "no-such-profile"], ["no-such-profile"]),
        (["plan", "--profile", "no-such-profile"], ["no-such-profile"]),
        (["soak", "configs/quickstart.yaml", "algo.lr=fast"], ["algo.lr"]),
        (
            ["train", "configs/quickstart.yaml", "safety.shield.workspace=[0.5,0.5,1.5,0.9]"],
            ["safety.shield.workspace", "outside"],
        ),
        (
            ["train", "configs/quickstart.yaml", "env.kwargs.keep_out=[0.4,0.4,1.4,0.6]"],
            ["env.kwargs", "keep_out"],
        ),
        (["train", "configs/quickstart.yaml", "monitor.disable=[nope]"], ["monitor.disable", "nope"]),
        (
            ["train", "configs/quickstart.yaml", "monitor.thresholds.kl_spike=-1"],
            ["monitor.thresholds.kl_spike"],
        ),
        (["train", "configs/quickstart.yaml", "algo.name=ppo_lagrangian"], ["algo.cost_limit"]),
        (["safe-compare", "configs/quickstart.yaml"], ["algo.cost_limit", "constrained"]),
        (
            ["soak", "configs/quickstart.yaml", "--minutes", "1", "--warmup", "1"],
            ["--minutes 1", "--warmup 1"],
        ),
        (["explain", "no/such/checkpoint"], ["no/such/checkpoint", "no policy.json"]),
        (["explain", "no/such/checkpoint", "--frames", "0"], ["--frames 0", ">= 1"]),
    ],
)
def test_every_command_refuses_a_bad_value_with_one_line(args, expected, tmp_path):
    r = CliRunner().invoke(
        app,
        [
            *args,
            *(
                ["--out", str(tmp_path / "o")]
                if args[0] in ("compare", "sft", "safe-compare", "explain")
                else []
            ),
        ],
    )
    _one_error_line(r, *expected)
    assert not (tmp_path / "o").exists()


def test_eval_refuses_a_bad_env_value_and_a_policy_that_does_not_fit(ckpt):
    r = CliRunner().invoke(app, ["eval", str(ckpt), *REACH, "env.kwargs.perturb.camera_shift=0.1"])
    _one_error_line(r, "env.kwargs", "camera_shift")
    r = CliRunner().invoke(app, ["eval", str(ckpt), "env.kwargs.family=reach", "env.kwargs.image_size=48"])
    _one_error_line(r, "does not fit", "image_size=32", "image_size=48")


@pytest.mark.parametrize(
    "how,expected",
    [
        ("truncated", ["model.safetensors", "unreadable"]),
        ("no-policy-json", ["no policy.json"]),
        ("other-architecture", ["does not fit the tiny_vla architecture"]),
        ("not-json", ["policy.json"]),
    ],
)
def test_a_broken_checkpoint_gives_one_line(ckpt, tmp_path, how, expected):
    bad = _broken(ckpt, tmp_path, how)
    r = CliRunner().invoke(app, ["eval", str(bad), *REACH, "--episodes", "1"])
    _one_error_line(r, *expected)
    out = tmp_path / "run"
    r = CliRunner().invoke(
        app, ["train", "configs/quickstart.yaml", *REACH, f"train.init={bad}", "--run-dir", str(out)]
    )
    _one_error_line(r, bad.name)
    assert not out.exists()


def test_malformed_yaml_names_line_and_column(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\nalgo:\n  lr: [1, 2\n  epochs: 3\n")
    r = CliRunner().invoke(app, ["train", str(cfg)])
    _one_error_line(r, "not valid YAML", "line ", "column ")


@pytest.mark.parametrize(
    "command, files, expected",
    [
        (["replay"], [], "no config.yaml"),
        (["replay"], ["config.yaml", "metrics.jsonl"], "no events.jsonl"),
        (["report"], [], "no metrics.jsonl"),
        (["audit", "verify"], [], "audit.jsonl missing"),
        (["audit", "sign", "--key", "missing.pem"], [], "audit.jsonl"),
    ],
    ids=["replay-empty", "replay-no-events", "report-empty", "verify-empty", "sign-empty"],
)
def test_trust_commands_refuse_a_directory_without_their_files(tmp_path, command, files, expected):
    run = tmp_path / "run"
    run.mkdir()
    for f in files:
        (run / f).write_text("")
    args = [*command[:2], str(run), *command[2:]] if command[0] == "audit" else [command[0], str(run)]
    _one_error_line(CliRunner().invoke(app, args), expected)
    assert sorted(p.name for p in run.iterdir()) == sorted(files)  # nothing written
    missing = [str(tmp_path / "nope") if a == str(run) else a for a in args]
    _one_error_line(CliRunner().invoke(app, missing), "nope")


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--suite", "fairness"], ["--suite 'fairness'", "robustness"]),
        (
            ["--suite", "robustness", "--axis", "sideways"],
            ["unknown robustness axis 'sideways'", "camera_shift"],
        ),
        (
            ["--suite", "robustness", "--axis", "camera_shift", "--strengths", "2,40"],
            ["camera_shift strength", "[-16, 16]", "40"],
        ),
        (["--suite", "robustness", "--axis", "zoom", "--strengths", "big"], ["--strengths", "'big'"]),
        (["--suite", "language", "--axis", "zoom"], ["robustness suite, not 'language'"]),
        (["--axis", "zoom"], ["need --suite"]),
    ],
)
def test_eval_suite_refuses_bad_suites_axes_and_strengths(ckpt, tmp_path, extra, expected):
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["eval", str(ckpt), *REACH, "--workers", "1", *extra, "--out", str(out)])
    _one_error_line(r, *expected)
    assert not out.exists()


def test_eval_suite_refuses_a_policy_that_does_not_fit_and_a_missing_out(ckpt, tmp_path):
    out = tmp_path / "o"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            str(ckpt),
            "env.kwargs.family=reach",
            "env.kwargs.image_size=48",
            "--suite",
            "language",
            "--out",
            str(out),
        ],
    )
    _one_error_line(r, "does not fit", "image_size=48")
    r = CliRunner().invoke(app, ["eval", str(ckpt), *REACH, "--suite", "language"])
    _one_error_line(r, "--suite needs --out")
    assert not out.exists()
