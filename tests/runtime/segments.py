"""Segments acted by a real policy on `tabletop`, without Ray (shared by the worker tests)."""

from asyncvla.runtime.env_worker import EnvManager
from asyncvla.runtime.types import ActionReply


def act_segments(
    policy, n, *, family="reach", num_envs=4, rollout_steps=3, seed=0, version=0, with_features=False
):
    """The first ``n`` segments of one manager of ``num_envs`` envs, every action chunk sampled by
    ``policy`` and labelled with behaviour ``version`` (``with_features``: replies carry the
    policy's frozen features, as a rollout worker ships them)."""
    m = EnvManager(0, "tabletop", num_envs, {"family": family}, rollout_steps=rollout_steps, seed=seed)
    segs = []
    try:
        while len(segs) < n:
            (req,) = m.request()
            out = policy.act(req.obs, with_features=with_features)
            segs += m.apply(
                ActionReply(
                    0,
                    req.request_id,
                    req.env_ids,
                    out.actions,
                    out.log_probs,
                    out.values,
                    version,
                    features=out.features,
                )
            )
    finally:
        m.shutdown()
    return segs[:n]
