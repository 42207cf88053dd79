"""Model cards: valid Hub metadata, the sections in order, and values that match the run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from asyncvla.trust.modelcard import parameter_count, write_model_card, write_model_cards
from asyncvla.trust.report import ReportError
from tests.trust.test_report import make_run

SECTIONS = (
    "# tiny_vla fine-tuned with asyncvla",
    "## Intended use",
    "## Training procedure and data",
    "## Evaluation results",
    "## Limitations and out-of-scope use",
    "## Lineage",
)


def make_checkpoint(path: Path, update: int | None, seed: int = 0) -> Path:
    """A checkpoint as ``save_policy`` (+ the trainer's state.json) writes it; 12 + 5 parameters."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file(
        {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.zeros(5, np.float32)},
        str(path / "model.safetensors"),
    )
    kwargs = {"image_keys": ["image"], "image_size": 64, "state_dim": 6, "action_dim": 3, "chunk_size": 4}
    (path / "policy.json").write_text(
        json.dumps({"name": "tiny_vla", "kwargs": kwargs, "version": update or 0})
    )
    if update is not None:
        state = {
            "update": update,
            "env_steps": 1000 * update,
            "wall_s": 1.5 * update,
            "decisions": 250 * update,
        }
        (path / "state.json").write_text(json.dumps(state))
    return path


@pytest.fixture
def run(tmp_path: Path) -> Path:
    path = make_run(tmp_path / "run")
    make_checkpoint(path / "sft", None)
    for u in (3, 4, 6):
        make_checkpoint(path / "checkpoints" / f"update_{u:05d}", u, seed=u)
    (path / "checkpoints" / "latest.json").write_text(json.dumps({"path": "update_00006"}))
    manifest = json.loads((path / "manifest.json").read_text())
    final = path / "checkpoints" / "update_00006" / "model.safetensors"
    manifest["checkpoints_written"] = [
        {
            "path": "checkpoints/update_00006",
            "files": {"model.safetensors": hashlib.sha256(final.read_bytes()).hexdigest()},
        }
    ]
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def model_index_results(meta: dict) -> list[dict]:
    (entry,) = meta["model-index"]
    return entry["results"]


def test_final_checkpoint_card_metadata_sections_and_values(run: Path) -> None:
    ckpt = run / "checkpoints" / "update_00006"
    card = write_model_card(ckpt, run)
    assert card == ckpt / "README.md"
    meta, body = split_card(card.read_text())
    assert meta["library_name"] == "asyncvla"
    assert meta["pipeline_tag"] == "robotics"
    assert {"robotics", "reinforcement-learning", "vision-language-action", "asyncvla"} <= set(meta["tags"])
    results = model_index_results(meta)
    assert len(results) == 2  # the periodic evaluation at update 6 and the final one
    for r in results:
        assert r["task"]["type"] == "reinforcement-learning"
        assert r["dataset"]["name"] == "tabletop-object"
        assert r["metrics"][0]["type"] == "success_rate"
    periodic, final = (r["metrics"][0] for r in results)
    assert periodic["value"] == pytest.approx(0.3) and periodic["args"]["episodes"] == 20
    assert final["value"] == pytest.approx(0.61)
    assert final["args"] == {"ci95": [0.51, 0.7], "episodes": 100}
    positions = [body.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "| updates (this checkpoint) | 6 |" in body
    assert "| env steps (this checkpoint) | 6000 |" in body
    assert "| final held-out evaluation | 0.610 | [0.510, 0.700] | 100 |" in body
    assert "| update 4 | 0.200 |" in body  # an earlier policy, listed for reference
    assert "30 scripted-expert demonstrations" in body
    assert "(17 parameters)" in body
    assert "task family `object`" in body and "Not validated on real robots" in body
    digest = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert f"| `model.safetensors` | `{digest}` (matches manifest) |" in body
    assert "`0123456789abcdef0123` (dirty)" in body
    assert "| audit | audit log: not available (no audit.jsonl) |" in body


def test_intermediate_and_sft_cards(run: Path) -> None:
    cards = write_model_cards(run)
    assert [c.parent.name for c in cards] == ["sft", "update_00003", "update_00004", "update_00006"]
    meta, body = split_card((run / "checkpoints" / "update_00003" / "README.md").read_text())
    assert "model-index" not in meta  # update 3 has no evaluation of its own
    assert "The run recorded no held-out evaluation of these weights." in body
    assert "An intermediate checkpoint of the run" in body
    meta, body = split_card((run / "checkpoints" / "update_00004" / "README.md").read_text())
    (result,) = model_index_results(meta)
    assert result["metrics"][0]["value"] == pytest.approx(0.2)
    assert "update 6" not in body  # later evaluations are not this checkpoint's history
    meta, body = split_card((run / "sft" / "README.md").read_text())
    (result,) = model_index_results(meta)
    assert result["metrics"][0]["value"] == pytest.approx(0.12)
    assert result["metrics"][0]["args"] == {"ci95": [0.07, 0.2], "episodes": 100}
    assert "the pre-RL (SFT) checkpoint" in body and "## Lineage" in body
    assert "README.md" not in body.split("## Lineage")[1]  # the card does not hash itself


def test_a_changed_checkpoint_file_is_flagged_and_bad_inputs_fail(run: Path, tmp_path: Path) -> None:
    ckpt = run / "checkpoints" / "update_00006"
    save_file({"w": np.ones((3, 4), np.float32)}, str(ckpt / "model.safetensors"))
    assert "(DIFFERS from manifest)" in write_model_card(ckpt, run).read_text()
    assert parameter_count(ckpt / "model.safetensors") == 12
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        write_model_card(tmp_path / "nothing", run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no metrics.jsonl"):
        write_model_cards(tmp_path / "empty")
