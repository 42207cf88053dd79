"""RL algorithms as pure tensor functions: GAE, PPO (clip-higher) and GRPO."""

from asyncvla.algos.gae import compute_gae
from asyncvla.algos.grpo import grpo_advantages, grpo_loss
from asyncvla.algos.ppo import LEVELS, ppo_loss, reduce_log_probs

__all__ = ["LEVELS", "compute_gae", "grpo_advantages", "grpo_loss", "ppo_loss", "reduce_log_probs"]
