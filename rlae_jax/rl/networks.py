"""Agent networks (Flax NNX): PPO (one Dirichlet policy) and MAPPO (one actor per member).

Both agents expose the same interface, which is all the learner (`ppo.update`) and a rollout use:
    act(obs, span_index, key)          -> (actions [B, N], log_probs, values [B])
    evaluate(obs, span_index, actions) -> (log_probs, entropy [B], values [B])
    weights(actions)                   -> ensemble weights [B, N] on the simplex
    weight_distribution(obs, span_index) -> the Dirichlet the weights follow
    eval_weights(obs, span_index, eval_action, key) -> evaluation weights [B, N] (`EVAL_ACTIONS`)
    zero_observation()                 -> one all-zero observation (no batch axes)
log_probs is `[B]` for PPO and `[B, N]` (one per agent) for MAPPO.

MAPPO joint action: agent i draws y_i = log g_i, g_i ~ Gamma(alpha_i, 1), from its own actor's
concentration alpha_i; the weights are softmax(y) = g / sum(g) ~ Dirichlet(alpha). The joint
policy factorises, pi(y) = prod_i pi_i(y_i), and each pi_i is a proper density over agent i's
own action, so the per-agent ratio pi_i(y_i) / pi_i_old(y_i) and its PPO clip are well defined
(the usual MAPPO setting); the induced weight distribution equals the PPO agent's. The entropy
bonus is the entropy of that induced Dirichlet (the spread of the weights), not the sum of the
per-agent log-Gamma entropies, which grow without bound as alpha -> 0 and would reward
degenerate weights.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rlae_jax.rl.distributions import Dirichlet, LogGamma

# how an evaluation turns the policy into weights: the Dirichlet's mean, its mode (the mean where
# it has none, see `Dirichlet.mode`) or one sample. The mean of any symmetric policy is uniform
# weights, however peaked the policy; the mode and a sample show what it prefers.
EVAL_ACTIONS = ("mean", "mode", "sample")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Agent architecture. `kind` is "ppo" or "mappo"; `obs_dim` is F (global features),
    `agent_obs_dim` is F_a (MAPPO per-member features); `span_horizon` sizes the span-position
    encoding (`span_encoding`): a constant of the architecture, not the run's number of spans."""

    kind: str
    num_members: int
    obs_dim: int
    agent_obs_dim: int = 0
    hidden_sizes: tuple[int, ...] = (64, 64)
    span_horizon: int = 32
    min_concentration: float = 1e-2
    initial_concentration: float = 1.0
    shared_actor: bool = True


@flax.struct.dataclass
class MultiAgentObs:
    """MAPPO obs: global `state [..., F]` (critic), per-member `agent_obs [..., N, F_a]` (actor)."""

    state: jax.Array
    agent_obs: jax.Array


def inverse_softplus(x: float) -> float:
    """y with softplus(y) = x (x > 0)."""
    return x + math.log(-math.expm1(-x))


class MLP(nnx.Module):
    """tanh MLP `[..., in_dim] -> [..., hidden_sizes[-1]]` with orthogonal(sqrt 2) init."""

    def __init__(self, in_dim: int, hidden_sizes: tuple[int, ...], *, rngs: nnx.Rngs):
        sizes = (in_dim, *hidden_sizes)
        init = nnx.initializers.orthogonal(math.sqrt(2.0))
        self.layers = nnx.List(
            [nnx.Linear(a, b, kernel_init=init, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def concentration_head(
    in_dim: int, out_dim: int, config: AgentConfig, *, rngs: nnx.Rngs
) -> nnx.Linear:
    """Small-init linear layer: softplus(.) + min_concentration starts at initial_concentration."""
    bias = inverse_softplus(config.initial_concentration - config.min_concentration)
    return nnx.Linear(
        in_dim,
        out_dim,
        kernel_init=nnx.initializers.orthogonal(0.01),
        bias_init=nnx.initializers.constant(bias),
        rngs=rngs,
    )


def span_periods(horizon: int) -> tuple[int, ...]:
    """Periods 2, 4, ..., up to the first power of two >= 2 * horizon."""
    return tuple(2**k for k in range(1, max(horizon, 1).bit_length() + 2))


def span_encoding_dim(horizon: int) -> int:
    """Width of `span_encoding`: clipped one-hot, sin and cos per period, clipped fraction."""
    return horizon + 2 * len(span_periods(horizon)) + 1


def span_encoding(span_index: jax.Array, horizon: int) -> jax.Array:
    """Fixed features of the span index `[B]` -> `[B, span_encoding_dim(horizon)]`: one-hot of
    min(i, horizon - 1) (spans past the horizon share the last slot), sin and cos of 2 pi i / p for
    periods p = 2, 4, ... (`span_periods`, telling later spans apart) and min(i, horizon) / horizon.

    Bounded, not a table sized by the run: the agent's parameters do not depend on how many spans a
    run generates, so a checkpoint restores for any `max_new_tokens`."""
    clipped = jax.nn.one_hot(jnp.clip(span_index, 0, horizon - 1), horizon)
    index = span_index.astype(jnp.float32)[..., None]
    angles = 2.0 * jnp.pi * index / jnp.asarray(span_periods(horizon), jnp.float32)
    fraction = jnp.minimum(index, horizon) / horizon
    return jnp.concatenate([clipped, jnp.sin(angles), jnp.cos(angles), fraction], axis=-1)


def check_eval_action(eval_action: str) -> str:
    if eval_action not in EVAL_ACTIONS:
        raise ValueError(f"unknown eval_action {eval_action!r}; known: {', '.join(EVAL_ACTIONS)}")
    return eval_action


class Agent(nnx.Module):
    """Shared by both agents: `self(obs, span_index)` returns (policy distribution, values [B])."""

    def act(self, obs, span_index, key):
        """Sample actions; returns (actions, their log-probs, values)."""
        policy, values = self(obs, span_index)
        actions = policy.sample(key)
        return actions, policy.log_prob(actions), values

    def eval_weights(self, obs, span_index, eval_action: str, key: jax.Array) -> jax.Array:
        """Evaluation weights `[B, N]`: the weight Dirichlet's mean, mode or a sample."""
        distribution = self.weight_distribution(obs, span_index)
        if check_eval_action(eval_action) == "sample":
            return distribution.sample(key)
        return distribution.mean() if eval_action == "mean" else distribution.mode()


class PPOAgent(Agent):
    """MLP torsos on [obs, span encoding] -> Dirichlet concentrations `[B, N]` (actor) and value
    `[B]` (critic); actor and critic have separate torsos."""

    def __init__(self, config: AgentConfig, *, rngs: nnx.Rngs):
        self.config = config
        hidden = config.hidden_sizes[-1]
        in_dim = config.obs_dim + span_encoding_dim(config.span_horizon)
        self.actor_torso = MLP(in_dim, config.hidden_sizes, rngs=rngs)
        self.critic_torso = MLP(in_dim, config.hidden_sizes, rngs=rngs)
        self.concentration_head = concentration_head(hidden, config.num_members, config, rngs=rngs)
        self.value_head = nnx.Linear(
            hidden, 1, kernel_init=nnx.initializers.orthogonal(1.0), rngs=rngs
        )

    def __call__(self, obs: jax.Array, span_index: jax.Array) -> tuple[Dirichlet, jax.Array]:
        """`obs [B, F]`, `span_index [B]` -> (Dirichlet over `[B, N]`, value `[B]`)."""
        span = span_encoding(span_index, self.config.span_horizon)
        inputs = jnp.concatenate([obs, span], axis=-1)
        concentration = (
            jax.nn.softplus(self.concentration_head(self.actor_torso(inputs)))
            + self.config.min_concentration
        )
        return Dirichlet(concentration), self.value_head(self.critic_torso(inputs))[..., 0]

    def evaluate(self, obs, span_index, actions):
        policy, values = self(obs, span_index)
        return policy.log_prob(actions), policy.entropy(), values

    def weights(self, actions: jax.Array) -> jax.Array:
        return actions

    def weight_distribution(self, obs, span_index) -> Dirichlet:
        return self(obs, span_index)[0]

    def zero_observation(self) -> jax.Array:
        return jnp.zeros((self.config.obs_dim,), jnp.float32)


class Actor(nnx.Module):
    """An actor: MLP on its input `[..., D]` -> `heads` positive concentrations `[..., heads]`."""

    def __init__(self, in_dim: int, heads: int, config: AgentConfig, *, rngs: nnx.Rngs):
        self.min_concentration = config.min_concentration
        self.torso = MLP(in_dim, config.hidden_sizes, rngs=rngs)
        self.head = concentration_head(config.hidden_sizes[-1], heads, config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.softplus(self.head(self.torso(x))) + self.min_concentration


class MAPPOAgent(Agent):
    """N actors emitting one concentration each, and a centralised critic on [state, span encoding]
    -> value `[B]`. `shared_actor`: one torso reads every member's [agent_obs, one-hot agent id,
    span encoding] and member i's concentration comes from head i (the RLAE authors' shared encoder
    with one head per member); otherwise each member has its own torso and head.

    Why a head per member: with one shared head, member i's concentration can differ from member
    j's on the same input only through the agent-id input's small interaction with the input, and
    the gradients that raise one member's weight in a context and lower the other's cancel in
    every shared parameter: on tests/test_rl.py's two-context bandit such an actor moved member 0's
    weight by 0.05-0.07 between the contexts in 30 updates, heads per member by 0.90-0.92."""

    def __init__(self, config: AgentConfig, *, rngs: nnx.Rngs):
        self.config = config
        num_members = config.num_members
        span_dim = span_encoding_dim(config.span_horizon)
        actor_in = config.agent_obs_dim + span_dim + (num_members if config.shared_actor else 0)
        if config.shared_actor:
            self.actor = Actor(actor_in, num_members, config, rngs=rngs)
        else:

            @nnx.split_rngs(splits=num_members)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def stacked_actors(rngs):
                return Actor(actor_in, 1, config, rngs=rngs)

            self.actor = stacked_actors(rngs)
        self.critic = MLP(config.obs_dim + span_dim, config.hidden_sizes, rngs=rngs)
        self.value_head = nnx.Linear(
            config.hidden_sizes[-1], 1, kernel_init=nnx.initializers.orthogonal(1.0), rngs=rngs
        )

    def concentrations(self, agent_obs: jax.Array, span_index: jax.Array) -> jax.Array:
        """`agent_obs [B, N, F_a]`, `span_index [B]` -> per-agent concentrations `[B, N]`."""
        batch, num_members, _ = agent_obs.shape
        encoded = span_encoding(span_index, self.config.span_horizon)
        span = jnp.broadcast_to(encoded[:, None], (batch, num_members, encoded.shape[-1]))
        if self.config.shared_actor:
            agent_id = jnp.broadcast_to(
                jnp.eye(num_members, dtype=agent_obs.dtype), (batch, num_members, num_members)
            )
            heads = self.actor(jnp.concatenate([agent_obs, agent_id, span], axis=-1))
            return jnp.diagonal(heads, axis1=-2, axis2=-1)  # member i from head i: [B, N]

        @nnx.vmap(in_axes=(0, 1), out_axes=1)
        def apply_each(actor, inputs):
            return actor(inputs)[..., 0]

        return apply_each(self.actor, jnp.concatenate([agent_obs, span], axis=-1))

    def value(self, state: jax.Array, span_index: jax.Array) -> jax.Array:
        """Centralised critic: `state [B, F]` -> `[B]`."""
        encoded = span_encoding(span_index, self.config.span_horizon)
        features = self.critic(jnp.concatenate([state, encoded], axis=-1))
        return self.value_head(features)[..., 0]

    def __call__(self, obs: MultiAgentObs, span_index: jax.Array) -> tuple[LogGamma, jax.Array]:
        return LogGamma(self.concentrations(obs.agent_obs, span_index)), self.value(
            obs.state, span_index
        )

    def evaluate(self, obs, span_index, actions):
        policy, values = self(obs, span_index)
        return policy.log_prob(actions), policy.weights_distribution().entropy(), values

    def weights(self, actions: jax.Array) -> jax.Array:
        return jax.nn.softmax(actions, axis=-1)

    def weight_distribution(self, obs, span_index) -> Dirichlet:
        return self(obs, span_index)[0].weights_distribution()

    def zero_observation(self) -> MultiAgentObs:
        config = self.config
        return MultiAgentObs(
            state=jnp.zeros((config.obs_dim,), jnp.float32),
            agent_obs=jnp.zeros((config.num_members, config.agent_obs_dim), jnp.float32),
        )


def make_agent(config: AgentConfig, key: jax.Array) -> PPOAgent | MAPPOAgent:
    """Build the agent named by `config.kind` with parameters drawn from `key`."""
    agents = {"ppo": PPOAgent, "mappo": MAPPOAgent}
    if config.kind not in agents:
        raise ValueError(f"unknown agent kind {config.kind!r}; expected one of {sorted(agents)}")
    return agents[config.kind](config, rngs=nnx.Rngs(key))
