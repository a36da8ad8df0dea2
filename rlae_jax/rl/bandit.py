"""A contextual multi-span bandit for testing and benchmarking the agents.

Each episode draws a context c in {0..N-1} and a length L in {1..max_spans} (or L = max_spans).
At span s the observation is [one_hot(c), noise] and the reward for weights w `[N]` is
w[(c + s) mod N]: the best member depends on the context and changes across spans, so the agent
needs both the observation and its span embedding. The optimal return of an episode is L
(all weight on the best member); `normalized_return` is return / L averaged over episodes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from rlae_jax.rl.networks import AgentConfig, MAPPOAgent, MultiAgentObs, make_agent
from rlae_jax.rl.ppo import PPOConfig, Transitions, create_train_state, update


@dataclasses.dataclass(frozen=True)
class BanditConfig:
    """Environment size; obs_dim = num_members + noise_dims."""

    num_members: int = 3
    max_spans: int = 3
    noise_dims: int = 2
    noise_scale: float = 1.0
    variable_length: bool = True
    batch_size: int = 64

    @property
    def obs_dim(self) -> int:
        return self.num_members + self.noise_dims


def sample_episodes(key: jax.Array, config: BanditConfig):
    """Contexts `[B]`, global obs `[T, B, F]`, span indices `[T, B]`, valid and done `[T, B]`."""
    context_key, length_key, noise_key = jax.random.split(key, 3)
    shape = (config.max_spans, config.batch_size)
    contexts = jax.random.randint(context_key, (config.batch_size,), 0, config.num_members)
    if config.variable_length:
        lengths = jax.random.randint(length_key, (config.batch_size,), 1, config.max_spans + 1)
    else:
        lengths = jnp.full((config.batch_size,), config.max_spans)
    noise = config.noise_scale * jax.random.normal(noise_key, (*shape, config.noise_dims))
    one_hot = jnp.broadcast_to(
        jax.nn.one_hot(contexts, config.num_members), (*shape, config.num_members)
    )
    obs = jnp.concatenate([one_hot, noise], axis=-1)
    span_index = jnp.broadcast_to(jnp.arange(config.max_spans, dtype=jnp.int32)[:, None], shape)
    valid = span_index < lengths
    dones = span_index == lengths - 1
    return contexts, obs, span_index, valid, dones


def agent_observation(agent: nnx.Module, obs: jax.Array, num_members: int):
    """The agent's view of `obs [..., F]`: itself for PPO; MAPPO: each actor sees the global obs."""
    if isinstance(agent, MAPPOAgent):
        shared = jnp.broadcast_to(obs[..., None, :], (*obs.shape[:-1], num_members, obs.shape[-1]))
        return MultiAgentObs(state=obs, agent_obs=shared)
    return obs


def span_rewards(
    weights: jax.Array, contexts: jax.Array, span_index: jax.Array, valid: jax.Array
) -> jax.Array:
    """Reward w[(c + s) mod N] per span `[T, B]` (0 on padded spans) for `weights [T, B, N]`."""
    best = (contexts[None, :] + span_index) % weights.shape[-1]
    return jnp.take_along_axis(weights, best[..., None], axis=-1)[..., 0] * valid


def normalized_return(rewards: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over episodes of return / optimal return (= number of valid spans)."""
    return jnp.mean(jnp.sum(rewards, axis=0) / jnp.sum(valid, axis=0))


def rollout(graphdef: nnx.GraphDef, params: nnx.State, key: jax.Array, config: BanditConfig):
    """One batch of episodes with the stochastic policy -> (`Transitions`, normalised return)."""
    env_key, action_key = jax.random.split(key)
    agent = nnx.merge(graphdef, params)
    contexts, obs, span_index, valid, dones = sample_episodes(env_key, config)
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    unflat = lambda x: x.reshape(config.max_spans, config.batch_size, *x.shape[1:])
    agent_obs = agent_observation(agent, obs, config.num_members)
    actions, log_probs, values = agent.act(
        jax.tree.map(flat, agent_obs), flat(span_index), action_key
    )
    actions, log_probs, values = unflat(actions), unflat(log_probs), unflat(values)
    rewards = span_rewards(agent.weights(actions), contexts, span_index, valid)
    transitions = Transitions(
        obs=agent_obs,
        span_index=span_index,
        actions=actions,
        log_probs=log_probs,
        values=values,
        rewards=rewards,
        dones=dones.astype(jnp.float32),
        valid=valid.astype(jnp.float32),
    )
    return transitions, normalized_return(rewards, valid)


def evaluate_mean_policy(
    graphdef: nnx.GraphDef, params: nnx.State, key: jax.Array, config: BanditConfig
) -> jax.Array:
    """Normalised return of the deterministic policy w = E[weights] on a fresh batch."""
    agent = nnx.merge(graphdef, params)
    contexts, obs, span_index, valid, _ = sample_episodes(key, config)
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    agent_obs = jax.tree.map(flat, agent_observation(agent, obs, config.num_members))
    weights = agent.mean_weights(agent_obs, flat(span_index)).reshape(*span_index.shape, -1)
    return normalized_return(span_rewards(weights, contexts, span_index, valid), valid)


def train(
    key: jax.Array,
    agent_config: AgentConfig,
    ppo_config: PPOConfig,
    bandit_config: BanditConfig,
    num_updates: int,
):
    """The whole training run for one seed as a function of `key` (jit / vmap it; configs are
    static).

    Returns the final `TrainState` and per-update metrics `[num_updates]`, including
    `return` (stochastic policy, training batch) and `mean_policy_return` (deterministic, fresh
    batch).
    """
    init_key, learner_key, loop_key = jax.random.split(key, 3)
    train_state = create_train_state(make_agent(agent_config, init_key), ppo_config, learner_key)

    def one_update(train_state, key):
        rollout_key, eval_key = jax.random.split(key)
        transitions, episode_return = rollout(
            train_state.graphdef, train_state.params, rollout_key, bandit_config
        )
        train_state, metrics = update(train_state, transitions)
        metrics["return"] = episode_return
        metrics["mean_policy_return"] = evaluate_mean_policy(
            train_state.graphdef, train_state.params, eval_key, bandit_config
        )
        return train_state, metrics

    return jax.lax.scan(one_update, train_state, jax.random.split(loop_key, num_updates))
