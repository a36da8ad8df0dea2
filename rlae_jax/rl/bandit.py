"""A contextual multi-span bandit for testing and benchmarking the agents.

Each episode draws a context c in {0..N-1} and a length L in {1..max_spans} (or L = max_spans).
At span s the observation is obs_offset + obs_scale * [one_hot(c), noise] and the reward for
weights w `[N]` is w[(c + s) mod N] (or, with `bernoulli_reward`, 1 with probability
w[(c + s) mod N], else 0: a 0/1 correctness reward): the best member depends on the context and
changes across spans, so the agent needs both the observation and its span embedding. Rows come in
groups of `samples_per_context` episodes of one context (question-major, as the RLAE rollout lays
out K samples per question). The optimal return of an episode is L (all weight on the best
member); `normalized_return` is return / L averaged over episodes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from rlae_jax.rl.gae import episode_returns, informative_share
from rlae_jax.rl.networks import AgentConfig, MAPPOAgent, MultiAgentObs, make_agent
from rlae_jax.rl.normalization import normalize
from rlae_jax.rl.ppo import PPOConfig, TrainState, Transitions, create_train_state, update


@dataclasses.dataclass(frozen=True)
class BanditConfig:
    """Environment size; obs_dim = num_members + noise_dims. `obs_offset` / `obs_scale` put the
    observation on the scale of raw hidden states, where the agent needs its input normalised."""

    num_members: int = 3
    max_spans: int = 3
    noise_dims: int = 2
    noise_scale: float = 1.0
    variable_length: bool = True
    batch_size: int = 64
    samples_per_context: int = 1
    bernoulli_reward: bool = False
    obs_offset: float = 0.0
    obs_scale: float = 1.0

    @property
    def obs_dim(self) -> int:
        return self.num_members + self.noise_dims


def sample_episodes(key: jax.Array, config: BanditConfig):
    """Contexts `[B]`, global obs `[T, B, F]`, span indices `[T, B]`, valid and done `[T, B]`."""
    context_key, length_key, noise_key = jax.random.split(key, 3)
    shape = (config.max_spans, config.batch_size)
    groups = config.batch_size // config.samples_per_context
    contexts = jnp.repeat(
        jax.random.randint(context_key, (groups,), 0, config.num_members),
        config.samples_per_context,
    )
    if config.variable_length:
        lengths = jax.random.randint(length_key, (config.batch_size,), 1, config.max_spans + 1)
    else:
        lengths = jnp.full((config.batch_size,), config.max_spans)
    noise = config.noise_scale * jax.random.normal(noise_key, (*shape, config.noise_dims))
    one_hot = jnp.broadcast_to(
        jax.nn.one_hot(contexts, config.num_members), (*shape, config.num_members)
    )
    obs = config.obs_offset + config.obs_scale * jnp.concatenate([one_hot, noise], axis=-1)
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
    weights: jax.Array,
    contexts: jax.Array,
    span_index: jax.Array,
    valid: jax.Array,
    key: jax.Array | None = None,
) -> jax.Array:
    """Reward w[(c + s) mod N] per span `[T, B]` (0 on padded spans) for `weights [T, B, N]`; with a
    `key`, a 0/1 draw that is 1 with that probability."""
    best = (contexts[None, :] + span_index) % weights.shape[-1]
    chance = jnp.take_along_axis(weights, best[..., None], axis=-1)[..., 0]
    if key is not None:
        chance = (jax.random.uniform(key, chance.shape) < chance).astype(chance.dtype)
    return chance * valid


def normalized_return(rewards: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over episodes of return / optimal return (= number of valid spans)."""
    return jnp.mean(jnp.sum(rewards, axis=0) / jnp.sum(valid, axis=0))


def flat(x: jax.Array) -> jax.Array:
    """`[T, B, ...]` -> `[T·B, ...]`."""
    return x.reshape(-1, *x.shape[2:])


def rollout(train_state: TrainState, key: jax.Array, config: BanditConfig):
    """One batch of episodes with the stochastic policy -> (`Transitions`, normalised return)."""
    env_key, action_key, reward_key = jax.random.split(key, 3)
    agent = nnx.merge(train_state.graphdef, train_state.params)
    contexts, obs, span_index, valid, dones = sample_episodes(env_key, config)
    unflat = lambda x: x.reshape(config.max_spans, config.batch_size, *x.shape[1:])
    agent_obs = agent_observation(agent, obs, config.num_members)
    inputs = normalize(train_state.input_stats(), jax.tree.map(flat, agent_obs))
    actions, log_probs, values = agent.act(inputs, flat(span_index), action_key)
    actions, log_probs, values = unflat(actions), unflat(log_probs), unflat(values)
    rewards = span_rewards(
        agent.weights(actions),
        contexts,
        span_index,
        valid,
        reward_key if config.bernoulli_reward else None,
    )
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


def evaluation_weights(
    train_state: TrainState, key: jax.Array, config: BanditConfig, eval_action: str = "mean"
):
    """Contexts `[B]`, evaluation weights `[T, B, N]` (`eval_action`) and valid `[T, B]` on a fresh
    batch."""
    env_key, action_key = jax.random.split(key)
    agent = nnx.merge(train_state.graphdef, train_state.params)
    contexts, obs, span_index, valid, _ = sample_episodes(env_key, config)
    inputs = jax.tree.map(flat, agent_observation(agent, obs, config.num_members))
    weights = agent.eval_weights(
        normalize(train_state.input_stats(), inputs), flat(span_index), eval_action, action_key
    )
    return contexts, weights.reshape(*span_index.shape, -1), valid


def mean_policy_return(train_state: TrainState, key: jax.Array, config: BanditConfig) -> jax.Array:
    """Normalised return of the deterministic policy w = E[weights] on a fresh batch."""
    contexts, weights, valid = evaluation_weights(train_state, key, config)
    span_index = jnp.broadcast_to(jnp.arange(config.max_spans)[:, None], valid.shape)
    return normalized_return(span_rewards(weights, contexts, span_index, valid), valid)


def weights_by_context(
    train_state: TrainState, key: jax.Array, config: BanditConfig, eval_action: str = "mean"
) -> jax.Array:
    """`[N contexts, N members]`: the evaluation weights of the first span, averaged over the
    episodes of each context in a fresh batch (NaN for a context the batch did not draw)."""
    contexts, weights, _ = evaluation_weights(train_state, key, config, eval_action)
    one_hot = jax.nn.one_hot(contexts, config.num_members)
    return (one_hot.T @ weights[0]) / one_hot.sum(0)[:, None]


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
    `return` (stochastic policy, training batch), `mean_policy_return` (deterministic, fresh
    batch) and `informative_share` (contexts whose samples' returns differ).
    """
    init_key, learner_key, loop_key = jax.random.split(key, 3)
    train_state = create_train_state(make_agent(agent_config, init_key), ppo_config, learner_key)

    def one_update(train_state, key):
        rollout_key, eval_key = jax.random.split(key)
        transitions, episode_return = rollout(train_state, rollout_key, bandit_config)
        train_state, metrics = update(train_state, transitions)
        metrics["return"] = episode_return
        metrics["informative_share"] = informative_share(
            episode_returns(transitions.rewards, transitions.valid),
            bandit_config.samples_per_context,
        )
        metrics["mean_policy_return"] = mean_policy_return(train_state, eval_key, bandit_config)
        return train_state, metrics

    return jax.lax.scan(one_update, train_state, jax.random.split(loop_key, num_updates))
