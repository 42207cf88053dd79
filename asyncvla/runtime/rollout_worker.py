"""RolloutWorker: serves batched inference for env managers and adopts published weights."""

from __future__ import annotations

import torch

from asyncvla.policies import Policy
from asyncvla.runtime.types import ActionReply, ObsRequest, concat_obs


class RolloutWorker:
    def __init__(self, policy: Policy, worker_id: int = 0) -> None:
        self.policy = policy
        self.worker_id = worker_id
        self.policy.eval()

    @property
    def version(self) -> int:
        return self.policy.version

    def set_weights(self, version: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Adopt published weights; called between batches only, never during one."""
        self.policy.load_sync_state_dict(state_dict)
        self.policy.version = version

    def infer(self, requests: list[ObsRequest], deterministic: bool = False) -> list[ActionReply]:
        """One forward over all requests' samples; each reply goes back to its own envs."""
        obs = concat_obs([r.obs for r in requests])
        out = self.policy.act(obs, deterministic=deterministic)
        replies, start = [], 0
        for r in requests:
            n = len(r.env_ids)
            sl = slice(start, start + n)
            replies.append(
                ActionReply(
                    manager_id=r.manager_id,
                    request_id=r.request_id,
                    env_ids=r.env_ids,
                    actions=out.actions[sl],
                    log_probs=out.log_probs[sl],
                    values=out.values[sl],
                    version=out.version,
                    shard=r.shard,
                )
            )
            start += n
        return replies
