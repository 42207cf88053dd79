"""mode / placement ``auto``: resolved at start from a profile's stage costs into a concrete config."""

import json

import pytest
import yaml

from asyncvla.bench.auto import choose
from asyncvla.bench.profiles import load_profile, mode_config, resolve_profile
from asyncvla.config import ConfigError, load_config
from asyncvla.runtime.autoplace import resolve


def _cfg(*overrides):
    return load_config(None, ["runtime.auto_profile=balanced", *overrides])


def test_auto_needs_a_profile_and_an_emulated_one():
    with pytest.raises(ConfigError, match=r"^runtime\.auto_profile: mode or placement auto"):
        load_config(None, ["mode=auto"])
    with pytest.raises(ConfigError, match=r"^runtime\.auto_profile: workload 'nope'"):
        resolve(load_config(None, ["runtime.placement=auto", "runtime.auto_profile=nope"]))
    with pytest.raises(ConfigError, match="real workload"):
        resolve(load_config(None, ["runtime.placement=auto", "runtime.auto_profile=tabletop-tiny"]))
    with pytest.raises(ValueError, match="resolve the config first"):
        _cfg("mode=auto").schedule()


def test_nothing_auto_is_left_as_it_is():
    cfg = load_config(None, ["mode=async", "runtime.placement=hybrid"])
    assert resolve(cfg) == (cfg, None)


def test_full_auto_applies_the_choice_of_the_bench_chooser():
    cfg, report = resolve(_cfg("mode=auto", "runtime.placement=auto"))
    expected = choose(load_profile(resolve_profile("balanced")), 1.0)
    assert report["chosen"] == expected["chosen"] == "streamer"
    assert (cfg.mode, cfg.runtime.placement, cfg.async_.streamer) == ("async", "disaggregated", True)
    cfg.schedule()  # concrete now


def test_a_fixed_mode_keeps_its_schedule_and_only_the_placement_is_chosen():
    # vectorized-sim: its GPUs are the bottleneck; splitting them is predicted ~0.6x, so a fixed
    # schedule stays on the shared device.
    sync, r = resolve(
        load_config(None, ["mode=sync", "runtime.placement=auto", "runtime.auto_profile=vectorized-sim"])
    )
    assert (sync.mode, sync.runtime.placement) == ("sync", "colocated")
    assert set(r["predicted"]) == {"sync-colocated", "sync-disaggregated"}
    rollout, r = resolve(
        load_config(
            None,
            [
                "mode=async",
                "async.streamer=false",
                "runtime.placement=auto",
                "runtime.auto_profile=vectorized-sim",
            ],
        )
    )
    assert (rollout.mode, rollout.runtime.placement, rollout.async_.streamer) == ("async", "colocated", False)
    assert all(n.startswith("rollout-async") for n in r["predicted"])


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_a_run_with_auto_uses_and_records_the_choice(tmp_path):
    from asyncvla.train import train

    profile = load_profile(resolve_profile("balanced"))
    base = mode_config(profile, "sync-colocated", updates=2, time_scale=0.2)
    tree = base.model_dump(by_alias=True)
    tree["mode"], tree["runtime"]["placement"], tree["runtime"]["auto_profile"] = "auto", "auto", "balanced"
    tree["train"]["init"], tree["eval"]["episodes"], tree["eval"]["num_envs"] = None, 2, 2
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    summary = train(load_config(path), tmp_path / "run")
    assert summary["auto"] == "streamer" and summary["mode"] == "async" and summary["updates"] == 2
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["mode"], saved["runtime"]["placement"]) == ("async", "disaggregated")
    auto = json.loads((tmp_path / "run" / "auto.json").read_text())
    assert auto["chosen"] == "streamer" and auto["profile"] == "balanced"
