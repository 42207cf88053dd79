import subprocess
import sys

import pytest

from asyncvla.config import ConfigError, load_config


@pytest.mark.parametrize(
    "override, expected",
    [
        ("algo.lrr=1", "algo.lrr: unknown key; allowed: name, gamma"),
        ("bogus=1", "bogus: unknown key"),
        ("algo.lr=-1", "algo.lr: Input should be greater than 0"),
        ("algo.name=dqn", "algo.name: unknown algo 'dqn'; registered: grpo, ppo"),
        ("train.updates=abc", "train.updates: Input should be a valid integer"),
        ("algo.logprob_level=sequence", "algo.logprob_level: Input should be 'token', 'action' or 'chunk'"),
    ],
)
def test_config_errors_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_cross_field_error_names_both_keys() -> None:
    with pytest.raises(ConfigError, match=r"algo.group_size: must divide env.num_envs=10"):
        load_config(None, ["algo.name=grpo", "env.num_envs=10", "algo.group_size=4"])


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["pretrain.augment_shift=-1"], "pretrain.augment_shift: Input should be greater than or equal to 0"),
        (["sft.augment_shift=17"], "sft.augment_shift: 17 exceeds image_size // 4 = 16 (image_size 64"),
        (
            ["env.kwargs.image_size=32", "pretrain.augment_shift=9"],
            "pretrain.augment_shift: 9 exceeds image_size // 4 = 8 (image_size 32",
        ),
    ],
)
def test_augment_shift_is_bounded_by_a_quarter_image(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)
    cfg = load_config(None, ["pretrain.augment_shift=16", "sft.augment_shift=0"])
    assert (cfg.pretrain.augment_shift, cfg.sft.augment_shift) == (16, 0)


def test_overrides_are_typed_and_nested(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nalgo:\n  lr: 0.001\nenv:\n  kwargs:\n    family: reach\n")
    cfg = load_config(p, ["algo.epochs=2", "env.kwargs.n_objects=[3, 5]", "algo.value_clip=null"])
    assert cfg.algo.lr == 0.001 and cfg.algo.epochs == 2
    assert cfg.env.kwargs == {"family": "reach", "n_objects": [3, 5]}
    assert cfg.algo.value_clip is None


def test_missing_file_and_bad_override_syntax(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["algo.lr"])


@pytest.mark.slow
def test_cli_exits_2_with_one_line(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "asyncvla.cli",
            "train",
            str(p),
            "algo.clip_hgh=0.3",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == ["error: algo.clip_hgh: unknown key; allowed: " + lines[0].split("allowed: ")[1]]
    assert "clip_high" in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_rejects_bad_env_kwargs_at_start(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nenv:\n  kwargs:\n    family: juggling\n")
    r = subprocess.run(
        [sys.executable, "-m", "asyncvla.cli", "train", str(p), "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: env.kwargs:") and "family" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
