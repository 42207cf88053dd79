"""A training run's lineage: manifest, audit chain (verify, sign, resume), refusal of a tampered
checkpoint at load, report and model cards."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from asyncvla.cli import app
from asyncvla.config import load_config
from asyncvla.train import train
from asyncvla.trust.audit import sha256_file
from asyncvla.trust.manifest import sha256_text
from tests.trust.tiny import TINY

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

BASE = [
    *TINY,
    "mode=sync",
    "train.updates=4",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "algo.epochs=1",
]


def _records(run):
    return [json.loads(x) for x in (run / "audit.jsonl").read_text().splitlines()]


def _one_line_error(out, *parts):
    lines = [ln for ln in out.output.splitlines() if ln.strip()]
    assert out.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.output
    for p in parts:
        assert p in lines[0], lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("lineage") / "run"
    train(load_config(None, BASE), path)
    return path


def test_manifest_records_config_code_software_and_checkpoints(run):
    m = json.loads((run / "manifest.json").read_text())
    assert m["config_sha256"] == sha256_text((run / "config.yaml").read_text())
    assert m["seed"] == 0 and m["finished"] and m["cpu_count"] >= 1
    assert {"torch", "ray", "numpy"} <= set(m["packages"])
    assert m["git"] is None or len(m["git"]["commit"]) == 40
    written = {c["path"]: c["files"] for c in m["checkpoints_written"]}
    assert set(written) == {"checkpoints/update_00002", "checkpoints/update_00004"}
    for path, files in written.items():
        assert files["model.safetensors"] == sha256_file(run / path / "model.safetensors")


def test_the_audit_chain_records_the_run_and_verifies(run):
    kinds = [r["kind"] for r in _records(run)]
    assert kinds[:2] == ["run_start", "config"] and kinds[-1] == "run_end"
    assert kinds.count("weights") == 4 and kinds.count("checkpoint") == 2
    assert kinds.count("evaluation") == 1 + 2 + 1  # initial, every eval_every, final
    start = _records(run)[0]
    assert start["manifest_sha256"]  # the manifest as written at the start
    out = CliRunner().invoke(app, ["audit", "verify", str(run)])
    assert out.exit_code == 0 and "audit chain intact" in out.output, out.output


def test_a_tampered_checkpoint_is_caught_and_refused_at_load(run, tmp_path):
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    ckpt = bad / "checkpoints" / "update_00004"
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-5] ^= 0x01
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    cli = CliRunner()
    out = cli.invoke(app, ["audit", "verify", str(bad)])
    assert out.exit_code == 1 and "model.safetensors sha256 mismatch" in out.output
    _one_line_error(
        cli.invoke(app, ["eval", str(ckpt), "--episodes", "2"]), "model.safetensors", "--no-verify"
    )
    cfg = [str(bad / "config.yaml"), f"train.init={ckpt}"]
    _one_line_error(cli.invoke(app, ["train", *cfg, "--run-dir", str(tmp_path / "other")]), "--no-verify")
    assert not (tmp_path / "other").exists()  # refused before anything was written
    out = cli.invoke(app, ["eval", str(ckpt), "--episodes", "2", "--no-verify"])
    assert out.exit_code == 0, out.output


def test_sign_and_verify_with_a_public_key_and_a_rewritten_chain_is_caught(run, tmp_path):
    signed = tmp_path / "run"
    shutil.copytree(run, signed)
    cli = CliRunner()
    key = tmp_path / "key.pem"
    assert cli.invoke(app, ["audit", "keygen", str(key)]).exit_code == 0
    pub = tmp_path / "key.pem.pub"
    assert cli.invoke(app, ["audit", "sign", str(signed), "--key", str(key)]).exit_code == 0
    out = cli.invoke(app, ["audit", "verify", str(signed), "--pubkey", str(pub)])
    assert out.exit_code == 0 and "signature valid" in out.output, out.output
    # Rewrite the whole chain with one value changed, re-hashing every record: the chain alone
    # verifies, the signature does not.
    from asyncvla.trust.audit import AuditLog

    recs = _records(signed)
    (signed / "audit.jsonl").unlink()
    log = AuditLog(signed)
    for r in recs:
        fields = {k: v for k, v in r.items() if k not in ("seq", "kind", "time", "prev")}
        if r["kind"] == "evaluation":
            fields["success_rate"] = 1.0
        log.append(r["kind"], **fields)
    log.close()
    assert cli.invoke(app, ["audit", "verify", str(signed)]).exit_code == 0
    out = cli.invoke(app, ["audit", "verify", str(signed), "--pubkey", str(pub)])
    assert out.exit_code == 1 and "signed head" in out.output


def test_resume_continues_the_chain(run, tmp_path):
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    before = len(_records(resumed))
    train(load_config(resumed / "config.yaml", ["train.updates=6"]), resumed, resume=True)
    recs = _records(resumed)
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    assert recs[before]["kind"] == "run_start" and any(r["kind"] == "resume" for r in recs[before:])
    assert CliRunner().invoke(app, ["audit", "verify", str(resumed)]).exit_code == 0
    m = json.loads((resumed / "manifest.json").read_text())
    assert len(m["resumes"]) == 1 and m["resumes"][0]["checkpoint"]["path"] == "checkpoints/update_00004"


def test_train_writes_the_report_and_a_model_card_per_checkpoint(run):
    html = (run / "report.html").read_text()
    assert "data:image/png;base64" in html and "audit chain intact" in html
    for ckpt in ("checkpoints/update_00002", "checkpoints/update_00004"):
        card = (run / ckpt / "README.md").read_text()
        assert card.startswith("---\n") and "## Evaluation results" in card
