"""`asyncvla explain`: integrated gradients and the deletion statistic on a case whose answer is known,
TinyVLA's differentiable mean action, and the command."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

from asyncvla.builder import build_policy
from asyncvla.cli import app
from asyncvla.config import load_config
from asyncvla.envs import make_env
from asyncvla.policies import save_policy
from asyncvla.policies.base import ActOutput, Policy
from asyncvla.policies.heads import TokenHead
from asyncvla.trust.explain import attribute, deletion, deletion_statistic, explain

SIDE = 32
REACH = ["env.kwargs.family=reach", "env.kwargs.image_size=32", "policy.kwargs.width=32"]


class RegionPolicy(Policy):
    """a = weight * (tanh(2 q), q^2) for both actions of the chunk, q = the mean of the top-left
    quadrant's pixels: only that region matters (weight 0: the image does not matter at all)."""

    chunk_size, action_dim = 2, 2

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def mean_action(self, obs, images=None):
        x = images["image"] if images else torch.as_tensor(np.asarray(obs["image"])).float() / 255.0
        q = x[:, : SIDE // 2, : SIDE // 2].mean((1, 2, 3))
        a = self.weight * torch.stack([torch.tanh(2 * q), q**2], -1)
        return a[:, None].expand(-1, self.chunk_size, -1) + 0.1

    def act(self, obs, deterministic=False, with_features=False):
        with torch.no_grad():
            a = self.mean_action(obs).numpy().astype(np.float32)
        n = a.shape[0]
        return ActOutput(actions=a, log_probs=np.zeros_like(a), values=np.zeros(n, np.float32), version=0)

    def evaluate(self, obs, actions, features=None):
        raise NotImplementedError

    def init_kwargs(self):
        return {"weight": self.weight}


def _frames(n: int = 100) -> dict:
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, size=(n, SIDE, SIDE, 3), dtype=np.uint8),
        "state": np.zeros((n, 4), np.float32),
        "instruction": ["reach the red ball"] * n,
    }


def _region() -> np.ndarray:
    inside = np.zeros((SIDE, SIDE), bool)
    inside[: SIDE // 2, : SIDE // 2] = True
    return inside


def test_ig_concentrates_on_the_region_the_action_reads_and_is_complete():
    obs = _frames(16)
    attr, delta, span = attribute(RegionPolicy(1.0), obs, steps=32)
    per_pixel = np.abs(attr).sum(-1)
    inside = per_pixel[:, _region()].sum(1) / per_pixel.sum((1, 2))
    assert (inside > 0.9).all(), inside.min()
    # Completeness: sum_i IG_i = f(x) - f(black) = ||a(x) - a(black)||, computed here independently.
    x = torch.as_tensor(obs["image"]).float() / 255.0
    p = RegionPolicy(1.0)
    with torch.no_grad():
        want = (
            (p.mean_action(obs, {"image": x}) - p.mean_action(obs, {"image": 0 * x})).flatten(1).norm(dim=1)
        )
    np.testing.assert_allclose(attr.reshape(16, -1).sum(1), want.numpy(), rtol=1e-3)
    np.testing.assert_allclose(span, want.numpy(), rtol=1e-5)
    assert np.abs(delta).max() < 1e-3 * span.min()


def test_deletion_ranks_the_true_region_above_random_and_a_blind_policy_is_not_faithful():
    obs = _frames(100)
    res = explain(RegionPolicy(1.0), obs, steps=16)
    d = res["deletion"]
    assert d["frames"] == 100
    assert d["faithful"] and d["ci95_low"] > 0, d
    assert d["mean_change_top"] > 2 * d["mean_change_random"], d
    assert d["frac_top_greater"] > 0.9, d

    # A saliency map pointing at the opposite corner deletes nothing the action reads: not faithful.
    wrong = np.zeros((100, SIDE, SIDE))
    wrong[:, SIDE // 2 :, SIDE // 2 :] = 1.0
    d_top, d_rand = deletion(RegionPolicy(1.0), obs, wrong)
    assert (d_top == 0).all() and (d_rand > 0).mean() > 0.9
    bad = deletion_statistic(d_top, d_rand)
    assert not bad["faithful"] and bad["ci95_high"] < 0, bad

    blind = explain(RegionPolicy(0.0), obs, steps=4)
    assert np.abs(blind["attributions"]).max() == 0.0
    b = blind["deletion"]
    assert not b["faithful"] and b["mean_diff"] == 0.0 and b["mean_change_top"] == 0.0, b


def _tiny(head: str, n: int = 3):
    torch.manual_seed(0)
    cfg = load_config(None, [*REACH, f"policy.kwargs.head={head}"])
    env = make_env(cfg.env.name, num_envs=n, **cfg.env.kwargs)
    obs, _ = env.reset(seed=list(range(n)), options={"init_state": list(range(n))})
    env.close()
    return build_policy(cfg, env), obs


def _image_grad(policy, obs) -> torch.Tensor:
    x = (torch.as_tensor(obs["image"]).float() / 255.0).requires_grad_(True)
    policy.mean_action(obs, {"image": x}).sum().backward()
    return x.grad


def test_tiny_vla_gaussian_mean_action_is_the_deterministic_action_and_differentiable():
    policy, obs = _tiny("gaussian")
    det = policy.act(obs, deterministic=True).actions
    with torch.no_grad():
        mean = policy.mean_action(obs).numpy()
        same = policy.mean_action(obs, {"image": torch.as_tensor(obs["image"]).float() / 255.0}).numpy()
    np.testing.assert_allclose(mean, det, atol=1e-6)
    np.testing.assert_allclose(same, det, atol=1e-6)
    g = _image_grad(policy, obs)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_token_head_mean_is_the_expectation_of_the_bin_centres():
    low, high = torch.tensor([-1.0, 0.0, -2.0]), torch.tensor([1.0, 0.5, 3.0])
    head = TokenHead(8, 16, 2, 3, 5, low, high)
    logits = torch.randn(4, 2, 3, 5, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(5).expand(4, 2, 3, 5)
    centres = head.bin_centers(ids.permute(3, 0, 1, 2)).permute(1, 2, 3, 0)  # [4, 2, 3, 5]
    want = (logits.softmax(-1) * centres).sum(-1)
    np.testing.assert_allclose(head.mean(logits).numpy(), want.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        head.mean(torch.zeros(1, 2, 3, 5)).numpy(), ((low + high) / 2).expand(1, 2, 3).numpy(), atol=1e-6
    )


def test_tiny_vla_token_mean_action_is_act_when_the_bins_are_one_hot_and_differentiable():
    policy, obs = _tiny("tokens")
    head = policy.head
    g = _image_grad(policy, obs)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        mean = policy.mean_action(obs)
        assert ((mean >= head.low) & (mean <= head.low + head.n_bins * head.bin_width)).all()
        # Logits 50 at one bin per token, 0 elsewhere: the expectation is that bin's centre up to
        # 255 e^-50 (far below float precision), and so is the argmax ``act`` returns.
        pick = torch.randint(0, head.n_bins, (head.chunk_size * head.action_dim,))
        head.out.weight.zero_()
        head.out.bias.copy_(50.0 * F.one_hot(pick, head.n_bins).float().flatten())
        np.testing.assert_allclose(
            policy.mean_action(obs).numpy(), policy.act(obs, deterministic=True).actions, atol=1e-6
        )


@pytest.mark.slow
def test_explain_command_writes_the_statistic_and_overlays(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, [*REACH, "policy.kwargs.head=gaussian", "policy.kwargs.size=nano"])
    ckpt = save_policy(build_policy(cfg), tmp_path / "policy", "tiny_vla")
    out = tmp_path / "explain"
    r = CliRunner().invoke(
        app, ["explain", str(ckpt), "--out", str(out), "--frames", "3", "--steps", "4", *REACH]
    )
    assert r.exit_code == 0, r.output
    assert "faithful=" in r.output
    res = json.loads((out / "explain.json").read_text())
    d = res["deletion"]
    assert d["frames"] == 3 and isinstance(d["faithful"], bool)
    assert d["ci95_low"] <= d["mean_diff"] <= d["ci95_high"]
    assert res["checkpoint"] == str(ckpt) and res["ig_steps"] == 4 and res["baseline"] == "black"
    assert res["overlays"] == [f"overlay_{i:02d}.png" for i in range(3)]
    for name in res["overlays"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--frames", "1", "env.kwargs.family=reach"], ["does not fit", "image_size=32", "image_size=64"]),
        (["--steps", "1", *REACH], ["--steps 1", ">= 2"]),
    ],
)
def test_explain_refuses_a_policy_that_does_not_fit_and_too_few_steps(tmp_path, args, expected):
    torch.manual_seed(0)
    ckpt = save_policy(build_policy(load_config(None, REACH)), tmp_path / "policy", "tiny_vla")
    r = CliRunner().invoke(app, ["explain", str(ckpt), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert all(part in lines[0] for part in expected), lines[0]
    assert not (tmp_path / "o").exists()
