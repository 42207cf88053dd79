"""RL algorithms as pure tensor functions: GAE, PPO (clip-higher) and GRPO."""

from asyncvla.algos.gae import compute_gae
from asyncvla.algos.grpo import grpo_advantages, grpo_loss
from asyncvla.algos.offpolicy import correction, importance_weights, interpolated_proximal
from asyncvla.algos.ppo import LEVELS, ppo_loss, reduce_log_probs

__all__ = [
    "LEVELS",
    "compute_gae",
    "correction",
    "grpo_advantages",
    "grpo_loss",
    "importance_weights",
    "interpolated_proximal",
    "ppo_loss",
    "reduce_log_probs",
]
