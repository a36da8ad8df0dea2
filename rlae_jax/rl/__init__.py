"""RLAE agents: Dirichlet (PPO) and per-member (MAPPO) weight policies, GAE, PPO loss, learner."""

from rlae_jax.rl.distributions import Dirichlet, LogGamma
from rlae_jax.rl.gae import generalized_advantages
from rlae_jax.rl.losses import LossConfig, ppo_loss
from rlae_jax.rl.networks import AgentConfig, MAPPOAgent, MultiAgentObs, PPOAgent, make_agent
from rlae_jax.rl.ppo import (
    PPOConfig,
    TrainState,
    Transitions,
    create_train_state,
    raise_if_nonfinite,
    update,
)

__all__ = [
    "AgentConfig",
    "Dirichlet",
    "LogGamma",
    "LossConfig",
    "MAPPOAgent",
    "MultiAgentObs",
    "PPOAgent",
    "PPOConfig",
    "TrainState",
    "Transitions",
    "create_train_state",
    "generalized_advantages",
    "make_agent",
    "ppo_loss",
    "raise_if_nonfinite",
    "update",
]
