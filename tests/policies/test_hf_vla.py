"""hf_vla: an OpenVLA-style action-token policy over a tiny random Hugging Face VLM (Llava: SigLIP +
Llama), built locally in a tmp dir and loaded offline."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from asyncvla.builder import build_policy, probe_env
from asyncvla.config import load_config
from asyncvla.policies import load_policy, make_policy, save_policy
from asyncvla.policies.hf_tiny import N_BINS, build_tiny_checkpoint
from asyncvla.policies.hf_vla import HFVLA, PROMPT, CheckpointError
from asyncvla.runtime.env_worker import EnvManager
from asyncvla.runtime.learner import Learner
from asyncvla.runtime.types import ActionReply
from asyncvla.runtime.weights import pack, unpack
from asyncvla.train import train

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

STATE_DIM = 6  # the tabletop env's


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("hf_tiny"), size="tiny")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_obs(batch: int, seed: int = 0) -> dict:
    """Random 64x64 images / states and instructions of different lengths (left padding)."""
    rng = np.random.default_rng(seed)
    words = "pick up the red cube and place it in basket".split()
    return {
        "image": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "state": rng.standard_normal((batch, STATE_DIM)).astype(np.float32),
        "instruction": [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(batch)],
    }


def policy(ckpt, **kwargs) -> HFVLA:
    torch.manual_seed(0)
    kw = {"checkpoint": str(ckpt), "chunk_size": 2, "action_dim": 3, "state_dim": STATE_DIM, **kwargs}
    return make_policy("hf_vla", **kw)


def sharpen(p: HFVLA, scale: float = 40.0) -> None:
    """Scale the action rows of the LM head: random tiny weights give near-uniform bins, which would
    make sampled log-probs all ~log(1/256) and the comparisons below weak."""
    w = p._hf().get_output_embeddings().weight
    with torch.no_grad():
        w[p.bin_token_ids] *= scale


# ----------------------------------------------------------------------------- checkpoint + prompt


def test_checkpoint_loads_offline_with_prompt_image_and_action_tokens(ckpt):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        f.name for f in ckpt.iterdir()
    }
    tok = AutoTokenizer.from_pretrained(ckpt, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(ckpt, local_files_only=True)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    # The action tokens are the last 256 ids of the vocabulary.
    vocab = tok.get_vocab()
    assert tok.vocab_size == len(vocab)
    assert [vocab[f"<a{i}>"] for i in (0, 255)] == [tok.vocab_size - N_BINS, tok.vocab_size - 1]

    p = policy(ckpt)
    assert p.n_image_tokens == 16  # 32x32 SigLIP, patch 8
    ids = p._prompt_ids("Pick up the RED cube")
    text = PROMPT.format(instruction="pick up the red cube")
    assert text == "In: What action should the robot take to pick up the red cube?\nOut:"
    prompt = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[1:17] == [p.image_token_id] * 16
    assert ids[17 : 17 + len(prompt) - 1] == prompt[1:]
    assert tok.unk_token_id not in ids
    assert ids[-(1 + 6) :] == [tok.pad_token_id] * 7  # proprio slot + K*A = 2*3 query slots
    # descending (OpenVLA): bin 0 is the last token id.
    assert p.bin_token_ids[0].item() == tok.vocab_size - 1
    assert p.bin_token_ids[-1].item() == tok.vocab_size - N_BINS


def test_missing_checkpoint_and_action_stats_are_one_line_errors(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        policy(tmp_path / "nope")
    for f in ckpt.iterdir():
        if f.name != "action_stats.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match=r"no action_stats\.json"):
        policy(tmp_path)
    (tmp_path / "action_stats.json").write_text(json.dumps({"low": [0, 0], "high": [1, 1]}))
    with pytest.raises(CheckpointError, match="action_dim is 3"):
        policy(tmp_path)


# ----------------------------------------------------------------------------- bins


def test_bins_and_unnormalization_against_hand_computed_values(ckpt, tmp_path):
    for f in ckpt.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "action_stats.json").write_text(
        json.dumps({"q01": [-2.0, 0.0, 0.5], "q99": [2.0, 1.0, 1.5]})  # OpenVLA's key names
    )
    p = policy(tmp_path)
    ids = torch.tensor([[0, 128, 255]])
    # centers: -1 + (i + 0.5) / 128 -> -1 + 0.5/128, 0.5/128, 1 - 0.5/128; then low + (x+1)/2 (high-low)
    expected = torch.tensor(
        [[-2.0 + 2.0 * (0.5 / 128), 0.0 + 0.5 * (1 + 0.5 / 128), 0.5 + 1.0 * (1 - 0.25 / 128)]]
    )
    torch.testing.assert_close(p.from_bins(ids), expected, rtol=0, atol=1e-6)
    assert p.to_bins(expected).tolist() == ids.tolist()
    # Every bin center maps back to its own bin; outside the stats: the end bins.
    all_ids = torch.arange(N_BINS)[:, None].expand(N_BINS, 3)
    assert torch.equal(p.to_bins(p.from_bins(all_ids)), all_ids)
    assert p.to_bins(torch.tensor([[-9.0, 2.0, 0.5]])).tolist() == [[0, 255, 0]]
    # Bin edges: normalized x = 0 is the start of bin 128.
    assert p.to_bins(torch.tensor([[0.0, 0.5, 1.0]])).tolist() == [[128, 128, 128]]


# ----------------------------------------------------------------------------- act / evaluate


def test_act_and_evaluate_agree_on_per_token_log_probs(ckpt):
    p = policy(ckpt, temperature=0.7)
    sharpen(p)
    obs = fake_obs(5)
    out = p.act(obs)
    assert out.actions.shape == out.log_probs.shape == (5, 2, 3) and out.values.shape == (5,)
    assert out.actions.dtype == np.float32
    lo, hi = p.action_lo.numpy(), p.action_hi.numpy()
    assert ((out.actions >= lo) & (out.actions <= hi)).all()
    assert out.log_probs.std() > 0.1  # not uniform: the comparison can fail
    p.train()
    ev = p.evaluate(obs, out.actions)
    assert ev.log_probs.requires_grad
    np.testing.assert_allclose(ev.log_probs.detach().numpy(), out.log_probs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ev.values.detach().numpy(), out.values, rtol=0, atol=1e-6)
    assert ev.entropy.shape == (5, 2, 3) and (ev.entropy > 0).all() and (ev.entropy < np.log(N_BINS)).all()
    # Same sample alone (no padding) gives the same log-probs as inside the padded batch.
    one = {k: v[3:4] for k, v in obs.items()}
    np.testing.assert_allclose(
        p.evaluate(one, out.actions[3:4]).log_probs.detach().numpy(), out.log_probs[3:4], atol=1e-5
    )
    # Deterministic: argmax bins, and the observation matters.
    det = p.act(obs, deterministic=True)
    np.testing.assert_array_equal(det.actions, p.act(obs, deterministic=True).actions)
    logits, _ = p.forward_heads(obs)
    assert torch.equal(p.to_bins(torch.as_tensor(det.actions)), logits.argmax(-1))
    assert not np.array_equal(det.actions[0], p.act(fake_obs(5, seed=1), deterministic=True).actions[0])


def test_a_cost_critic_is_a_second_head_on_the_same_forward(ckpt):
    plain = policy(ckpt)
    assert (
        plain.act(fake_obs(3)).cost_values is None
        and plain.evaluate(fake_obs(3), plain.act(fake_obs(3)).actions).cost_values is None
    )
    torch.manual_seed(0)
    p = policy(ckpt, cost_critic=True)
    assert p.init_kwargs()["cost_critic"] is True and "cost_head.0.weight" in p.state_dict()
    obs = fake_obs(4)
    with torch.no_grad():  # a distinct head: not the value head's output
        p.cost_head[-1].bias.fill_(3.0)
    out = p.act(obs)
    assert out.cost_values.shape == (4,) and not np.allclose(out.cost_values, out.values)
    p.train()
    ev = p.evaluate(obs, out.actions)
    assert ev.cost_values.requires_grad
    np.testing.assert_allclose(ev.cost_values.detach().numpy(), out.cost_values, rtol=0, atol=1e-5)
    ev.cost_values.sum().backward()
    assert p.cost_head[0].weight.grad is not None and p.value_head[0].weight.grad is None


def test_temperature_scales_the_bin_logits(ckpt):
    p, q = policy(ckpt, temperature=1.0), policy(ckpt, temperature=0.5)
    obs = fake_obs(2)
    torch.testing.assert_close(q.forward_heads(obs)[0], 2.0 * p.forward_heads(obs)[0])


def test_ppo_update_changes_weights_and_save_load_round_trip(ckpt, tmp_path):
    cfg = load_config(
        None,
        [
            "env.num_envs=4",
            "env.kwargs.family=reach",
            "train.rollout_steps=2",
            "algo.epochs=1",
            "algo.minibatch_size=8",
            "policy.name=hf_vla",
            "policy.chunk_size=2",
            f"policy.kwargs.checkpoint={ckpt}",
        ],
    )
    probe = probe_env(cfg)
    torch.manual_seed(0)
    p = build_policy(cfg, probe)
    probe.close()
    assert isinstance(p, HFVLA) and p.state_dim == STATE_DIM
    m = EnvManager(0, "tabletop", 4, {"family": "reach"}, rollout_steps=2, seed=0)
    segs = []
    while not segs:
        (req,) = m.request()
        out = p.act(req.obs)
        segs += m.apply(
            ActionReply(0, req.request_id, req.env_ids, out.actions, out.log_probs, out.values, 0)
        )
    m.shutdown()
    before = {k: v.clone() for k, v in p.state_dict().items()}
    metrics = Learner(p, cfg.algo, seed=0).train(segs)
    assert p.version == 1 and metrics["train_samples"] == 8
    moved = [k for k, v in p.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("model.") for k in moved) and any(k.startswith("value_head") for k in moved)

    save_policy(p, tmp_path / "ck", "hf_vla")
    assert json.loads((tmp_path / "ck" / "policy.json").read_text())["kwargs"]["checkpoint"] == str(ckpt)
    q = load_policy(tmp_path / "ck")
    assert q.version == 1
    obs = fake_obs(4)
    a, b = p.evaluate(obs, out.actions), q.evaluate(obs, out.actions)
    assert torch.equal(a.log_probs, b.log_probs) and torch.equal(a.values, b.values)
    np.testing.assert_array_equal(p.act(obs, True).actions, q.act(obs, True).actions)


def test_lora_trains_only_adapters_and_heads(ckpt):
    p = policy(ckpt, lora_rank=4)
    sharpen(p)
    trainable = {n for n, t in p.named_parameters() if t.requires_grad}
    assert trainable and all("lora_" in n or not n.startswith("model.") for n in trainable)
    assert any("lora_" in n for n in trainable) and "query_emb" in trainable
    obs = fake_obs(3)
    base = policy(ckpt)
    sharpen(base)
    out = p.act(obs)
    # LoRA starts as the identity (B = 0).
    np.testing.assert_allclose(
        base.evaluate(obs, out.actions).log_probs.detach().numpy(), out.log_probs, atol=1e-5
    )
    opt = torch.optim.Adam([t for t in p.parameters() if t.requires_grad], lr=1e-3)
    frozen = {n: t.clone() for n, t in p.named_parameters() if not t.requires_grad}
    for _ in range(2):
        loss = -p.evaluate(obs, out.actions).log_probs.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(t, frozen[n]) for n, t in p.named_parameters() if n in frozen)
    after = p.evaluate(obs, out.actions).log_probs.mean().item()
    assert after > out.log_probs.mean() + 1e-3
    # The copy a worker builds from init_kwargs has the same structure: weights load strictly.
    clone = make_policy("hf_vla", **p.init_kwargs())
    clone.load_state_dict(p.state_dict())
    np.testing.assert_allclose(
        clone.evaluate(obs, out.actions).log_probs.detach().numpy(),
        p.evaluate(obs, out.actions).log_probs.detach().numpy(),
        atol=1e-6,
    )
    # Weight sync sends only what trains (adapters, slot embeddings, heads); a worker's fresh copy
    # holds the frozen base already, and ends up identical.
    sync = p.sync_state_dict()
    assert set(sync) == trainable and len(sync) < len(p.state_dict()) / 2
    worker = make_policy("hf_vla", **p.init_kwargs())
    sharpen(worker)  # the frozen LM head was edited in place above: the same edit here
    worker.load_sync_state_dict(unpack(pack(sync)))
    for k, v in p.state_dict().items():
        assert torch.equal(worker.state_dict()[k], v), k
    with pytest.raises(RuntimeError, match="missing"):
        worker.load_sync_state_dict({k: v for k, v in sync.items() if k != "query_emb"})
    # deepcopy (the driver's eval copy) keeps its own slot embeddings.
    d = copy.deepcopy(p)
    with torch.no_grad():
        d.query_emb.add_(1.0)
    assert not np.allclose(d.act(obs, True).log_probs, p.act(obs, True).log_probs)


# ----------------------------------------------------------------------------- runs on Ray


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize(("mode", "lora_rank"), [("sync", 0), ("async", 4)])
def test_short_train_run_finishes(ckpt, tmp_path, mode, lora_rank):
    """Full fine-tuning in sync mode; LoRA (publishes only the trainable weights) in async mode."""
    cfg = load_config(
        "configs/tabletop_hf_vla.yaml",
        [
            f"mode={mode}",
            f"policy.kwargs.checkpoint={ckpt}",
            f"policy.kwargs.lora_rank={lora_rank}",
            "env.num_envs=4",
            "env.num_managers=2",
            "train.rollout_steps=2",
            "train.updates=2",
            "algo.minibatch_size=8",
            "algo.epochs=1",
            "eval.episodes=2",
            "eval.num_envs=2",
            "runtime.stall_timeout_s=120",
        ],
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["updates"] == 2 and summary["policy_version"] == 2
    assert summary["samples_trained"] == 2 * 2 * 4 * 2
    if mode == "async":
        assert summary["max_staleness"] == 1
    ckpts = tmp_path / "run" / "checkpoints"
    q = load_policy(ckpts / json.loads((ckpts / "latest.json").read_text())["path"])
    assert isinstance(q, HFVLA) and q.version == 2
    assert any("lora_" in k for k in q.state_dict()) == (lora_rank > 0)
    # The trained weights moved away from the start (the checkpoint holds the full state dict).
    start = make_policy("hf_vla", **q.init_kwargs())
    assert len(q.state_dict()) == len(start.state_dict())
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in q.state_dict().items())


# ----------------------------------------------------------------------------- frozen-feature cache


def test_frozen_vision_features_give_the_same_outputs_and_gradients(ckpt):
    p = policy(ckpt, freeze_vision=True, image_keys=["image", "wrist_image"])
    sharpen(p)
    obs = fake_obs(8)
    obs["wrist_image"] = fake_obs(8, seed=3)["image"]
    feats = p.frozen_features(obs)
    assert feats is not None and feats["vision"].shape[:2] == (8, 2)
    actions = p.act(obs).actions
    p.train()
    rows = torch.arange(8).flip(0)  # rows taken in another order, as the trainer does
    sub = {k: (v[rows.numpy()] if not isinstance(v, list) else [v[i] for i in rows]) for k, v in obs.items()}
    plain = p.evaluate(sub, actions[rows.numpy()])
    cached = p.evaluate(sub, actions[rows.numpy()], features={"vision": feats["vision"][rows]})
    for name in ("log_probs", "entropy", "values"):
        assert torch.equal(getattr(plain, name), getattr(cached, name)), name
    # The projector still trains from cached features: same gradients as the uncached path.
    grads = []
    for out in (plain, cached):
        p.zero_grad()
        (out.log_probs.mean() + out.values.mean()).backward()
        grads.append({n: t.grad.clone() for n, t in p.named_parameters() if t.grad is not None})
    assert any("multi_modal_projector" in n for n in grads[1])
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    # Features of other observations change the output: the cache is read.
    other = p.evaluate(sub, actions[rows.numpy()], features={"vision": feats["vision"][rows.roll(1)]})
    assert not torch.equal(plain.log_probs, other.log_probs)


def test_no_cache_when_the_vision_tower_trains_and_lora_skips_a_frozen_one(ckpt):
    assert policy(ckpt).frozen_features(fake_obs(2)) is None  # full fine-tuning: nothing frozen
    lora = policy(ckpt, lora_rank=2)  # all-linear adapters reach into the vision tower
    assert any(t.requires_grad for t in lora._base().vision_tower.parameters())
    assert lora.frozen_features(fake_obs(2)) is None
    frozen = policy(ckpt, lora_rank=2, freeze_vision=True)
    assert not any(t.requires_grad for t in frozen._base().vision_tower.parameters())
    assert any(
        "lora_" in n and "language_model" in n for n, t in frozen.named_parameters() if t.requires_grad
    )
    assert frozen.frozen_features(fake_obs(2)) is not None
