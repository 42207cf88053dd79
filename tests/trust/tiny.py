"""The smallest training runs the trust tests make: 2 managers x 4 envs of `reach`, nano TinyVLA."""

TINY = [
    "env.num_envs=4",
    "env.num_managers=2",
    "env.kwargs.family=reach",
    "train.rollout_steps=3",
    "algo.minibatch_size=16",
    "eval.episodes=4",
    "eval.quick_episodes=4",
    "eval.num_envs=4",
    "policy.kwargs.image_grid=4",
    "policy.kwargs.size=nano",
    "runtime.stall_timeout_s=120",
]
