"""The run directory on resume: the metric stream continues without duplicated update numbers."""

import json

import pytest

from asyncvla.config import load_config
from asyncvla.rundir import RunDir


def _updates(path):
    return [json.loads(ln)["update"] for ln in (path / "metrics.jsonl").read_text().splitlines()]


def test_resume_drops_the_rows_after_the_checkpoint_and_a_torn_line(tmp_path):
    cfg = load_config(None, [])
    run = RunDir(tmp_path, cfg, tensorboard=False)
    for u in range(1, 7):
        run.log({"update": u, "env_steps": 100 * u})
    run.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"update": 7, "env_st')  # a crash mid-write
    with pytest.raises(FileExistsError):
        RunDir(tmp_path, cfg, tensorboard=False)
    # the checkpoint of update 4: rows 5 and 6 (and the torn 7) were trained after it
    resumed = RunDir(
        tmp_path, cfg, resume=True, tensorboard=False, resume_from={"update": 4, "env_steps": 400}
    )
    assert _updates(tmp_path) == [1, 2, 3, 4]
    for u in range(5, 9):
        resumed.log({"update": u, "env_steps": 100 * u - 7})
    resumed.close()
    assert _updates(tmp_path) == list(range(1, 9))


def test_resume_without_a_checkpoint_state_keeps_every_row(tmp_path):
    cfg = load_config(None, [])
    run = RunDir(tmp_path, cfg, tensorboard=False)
    run.log({"update": 1, "env_steps": 10})
    run.close()
    RunDir(tmp_path, cfg, resume=True, tensorboard=False).close()
    assert _updates(tmp_path) == [1]
