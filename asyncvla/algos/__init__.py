"""RL algorithms: pure tensor functions (GAE, PPO clip-higher, GRPO, off-policy corrections) and
the algorithm objects the trainer uses, registered by name in ``ALGOS``."""

from asyncvla.algos.base import ALGOS, Algorithm, make_algo
from asyncvla.algos.gae import compute_gae
from asyncvla.algos.grpo import GRPO, grpo_advantages, grpo_loss
from asyncvla.algos.offpolicy import correction, importance_weights, interpolated_proximal
from asyncvla.algos.ppo import LEVELS, PPO, ppo_loss, reduce_log_probs
from asyncvla.algos.ppo_lagrangian import PPOLagrangian, update_multiplier

__all__ = [
    "ALGOS",
    "GRPO",
    "LEVELS",
    "PPO",
    "PPOLagrangian",
    "Algorithm",
    "compute_gae",
    "correction",
    "grpo_advantages",
    "grpo_loss",
    "importance_weights",
    "interpolated_proximal",
    "make_algo",
    "ppo_loss",
    "reduce_log_probs",
    "update_multiplier",
]
