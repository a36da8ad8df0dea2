"""A pure-JAX PPO / MAPPO learner: `update(train_state, transitions) -> (train_state, metrics)`.

The agent type decides observation and action shapes (see `networks`); everything here works on
pytrees with leading `[T, B]` (rollout) or `[M]` (minibatch) axes. The update is jittable and
vmappable over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlae_jax.rl.gae import generalized_advantages
from rlae_jax.rl.losses import LossConfig, ppo_loss


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Learner hyper-parameters. The learning rate decays linearly to `final_lr_fraction` of its
    start over `total_updates` updates (constant when `total_updates` is 0)."""

    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 3e-4
    final_lr_fraction: float = 0.0
    total_updates: int = 0
    max_grad_norm: float = 0.5
    loss: LossConfig = LossConfig()

    @functools.cache
    def optimizer(self) -> optax.GradientTransformation:
        """clip_by_global_norm then Adam with the learning-rate schedule (counted per minibatch
        step). One object per (equal) config: a TrainState holds it as a static field, so a new
        object would make every jitted step that takes the state compile again."""
        if self.total_updates:
            steps = self.total_updates * self.num_epochs * self.num_minibatches
            schedule = optax.linear_schedule(
                self.learning_rate, self.learning_rate * self.final_lr_fraction, steps
            )
        else:
            schedule = optax.constant_schedule(self.learning_rate)
        return optax.chain(
            optax.clip_by_global_norm(self.max_grad_norm), optax.adam(schedule, eps=1e-5)
        )


@flax.struct.dataclass
class Transitions:
    """One batch of episodes, `[T, B]` spans × episodes (T = static maximum, padded).

    obs: agent observation pytree with leading `[T, B]` (`[T, B, F]` for PPO, `MultiAgentObs` for
    MAPPO)
    span_index: `[T, B]` int32
    actions: `[T, B, N]` (PPO: weights on the simplex; MAPPO: per-agent log-Gamma actions y,
        weights = softmax(y); see `networks`)
    log_probs: behaviour log-probs `[T, B]` (PPO) or `[T, B, N]` (MAPPO)
    values: `[T, B]`; rewards: `[T, B]`
    dones: `[T, B]` 1 at the last span of an episode; valid: `[T, B]` 0 on padded spans.
    Episodes end within T (bootstrap value 0).
    """

    obs: Any
    span_index: jax.Array
    actions: jax.Array
    log_probs: jax.Array
    values: jax.Array
    rewards: jax.Array
    dones: jax.Array
    valid: jax.Array


@flax.struct.dataclass
class TrainState:
    """Agent `(graphdef, params)`, optimiser state, RNG key, update count; `tx`, `config` static."""

    graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
    params: nnx.State
    opt_state: optax.OptState
    key: jax.Array
    update_count: jax.Array
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    config: PPOConfig = flax.struct.field(pytree_node=False)


def create_train_state(agent: nnx.Module, config: PPOConfig, key: jax.Array) -> TrainState:
    """Split `agent` into (graphdef, params) and initialise the optimiser."""
    graphdef, params = nnx.split(agent)
    tx = config.optimizer()
    return TrainState(
        graphdef=graphdef,
        params=params,
        opt_state=tx.init(params),
        key=key,
        update_count=jnp.zeros((), jnp.int32),
        tx=tx,
        config=config,
    )


def all_finite(tree) -> jax.Array:
    """True when every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def update(
    train_state: TrainState, transitions: Transitions
) -> tuple[TrainState, dict[str, jax.Array]]:
    """GAE, then `num_epochs` × `num_minibatches` clipped-PPO steps over the T·B flattened spans.

    A minibatch step whose loss or gradients are non-finite is skipped (parameters and optimiser
    state kept), and every step is skipped when the advantages, returns or behaviour log-probs
    are (e.g. a NaN reward); `metrics['nonfinite']` is then True and
    `metrics['skipped_minibatches']` counts the skipped steps.
    Other metrics are means over all minibatch steps.
    """
    config = train_state.config
    num_steps, batch = transitions.rewards.shape
    num_samples = num_steps * batch
    if num_samples % config.num_minibatches:
        raise ValueError(
            f"T*B = {num_samples} is not divisible by num_minibatches = {config.num_minibatches}"
        )
    advantages, returns = generalized_advantages(
        transitions.rewards,
        transitions.values,
        transitions.dones,
        transitions.valid,
        jnp.zeros((batch,), transitions.values.dtype),
        config.gamma,
        config.gae_lambda,
    )
    inputs_finite = all_finite((advantages, returns, transitions.log_probs))
    samples = jax.tree.map(
        lambda x: x.reshape(num_samples, *x.shape[2:]), (transitions, advantages, returns)
    )

    def loss_fn(params, minibatch):
        steps, step_advantages, step_returns = minibatch
        agent = nnx.merge(train_state.graphdef, params)
        log_probs, entropy, values = agent.evaluate(steps.obs, steps.span_index, steps.actions)
        return ppo_loss(
            log_probs,
            steps.log_probs,
            step_advantages,
            values,
            steps.values,
            step_returns,
            entropy,
            steps.valid,
            config.loss,
        )

    def minibatch_step(carry, minibatch):
        params, opt_state = carry
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, minibatch)
        updates, new_opt_state = train_state.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = inputs_finite & jnp.isfinite(loss) & all_finite(grads)
        keep_new = lambda new, old: jnp.where(finite, new, old)
        carry = (
            jax.tree.map(keep_new, new_params, params),
            jax.tree.map(keep_new, new_opt_state, opt_state),
        )
        return carry, {**metrics, "grad_norm": optax.tree.norm(grads), "skipped": ~finite}

    def epoch(carry, key):
        permutation = jax.random.permutation(key, num_samples)
        minibatches = jax.tree.map(
            lambda x: x[permutation].reshape(config.num_minibatches, -1, *x.shape[1:]), samples
        )
        return jax.lax.scan(minibatch_step, carry, minibatches)

    key, epoch_key = jax.random.split(train_state.key)
    (params, opt_state), step_metrics = jax.lax.scan(
        epoch,
        (train_state.params, train_state.opt_state),
        jax.random.split(epoch_key, config.num_epochs),
    )
    skipped = step_metrics.pop("skipped")
    metrics = jax.tree.map(jnp.mean, step_metrics)
    metrics["skipped_minibatches"] = jnp.sum(skipped)
    metrics["nonfinite"] = jnp.any(skipped)
    new_state = train_state.replace(
        params=params, opt_state=opt_state, key=key, update_count=train_state.update_count + 1
    )
    return new_state, metrics


def raise_if_nonfinite(metrics: dict[str, Any], update_index: int) -> None:
    """Host-side check for a training loop: stop with a message naming the update."""
    if bool(metrics["nonfinite"]):
        raise FloatingPointError(
            f"update {update_index}: non-finite loss or gradients in "
            f"{int(metrics['skipped_minibatches'])} "
            "minibatch step(s); those steps were skipped (check rewards and observations for "
            "NaN/inf)"
        )
