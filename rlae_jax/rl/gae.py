"""Advantages over spans with done / valid masks: generalised advantage estimation with the critic
(`generalized_advantages`) and the group-relative advantage of K samples per question
(`group_advantages`, no critic)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def generalized_advantages(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    valid: jax.Array,
    last_value: jax.Array,
    gamma: float,
    gae_lambda: float,
) -> tuple[jax.Array, jax.Array]:
    """GAE(gamma, lambda) computed backwards over time with `lax.scan`.

    Inputs are `[T, B]` (T spans, static maximum; B episodes) and `last_value [B]`, the value of
    the state after step T-1 (0 when every episode ends within T). With valid_T = 1, V_T =
    last_value:

        c_t     = (1 - done_t) * valid_{t+1}                     (continue into step t+1?)
        delta_t = r_t + gamma * c_t * V_{t+1} - V_t
        A_t     = valid_t * (delta_t + gamma * lambda * c_t * A_{t+1}),   A_T = 0
        R_t     = A_t + V_t   (value targets; masked out by the loss where valid_t = 0)

    Padded steps (valid_t = 0) get A_t = 0 and never leak into earlier steps, because c_t = 0
    whenever step t+1 is padding. Returns `(advantages [T, B], returns [T, B])`.
    """
    valid = valid.astype(values.dtype)
    not_done = 1.0 - dones.astype(values.dtype)
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    next_valid = jnp.concatenate([valid[1:], jnp.ones_like(valid[:1])], axis=0)
    continues = not_done * next_valid

    def backward_step(next_advantage, step):
        reward, value, next_value, continue_t, valid_t = step
        delta = reward + gamma * continue_t * next_value - value
        advantage = valid_t * (delta + gamma * gae_lambda * continue_t * next_advantage)
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward_step,
        jnp.zeros_like(last_value),
        (rewards, values, next_values, continues, valid),
        reverse=True,
    )
    return advantages, advantages + values


def episode_returns(rewards: jax.Array, valid: jax.Array) -> jax.Array:
    """Undiscounted return of each row `[B]` from `rewards, valid [T, B]` (one episode per row)."""
    return jnp.sum(rewards * valid.astype(rewards.dtype), axis=0)


def grouped(values: jax.Array, group_size: int) -> jax.Array:
    """`[B]` -> `[B / K, K]`: rows laid out question-major (rows q*K .. q*K + K - 1 are question
    q's K samples)."""
    if values.shape[0] % group_size:
        raise ValueError(
            f"{values.shape[0]} rows do not split into groups of samples_per_question = "
            f"{group_size}"
        )
    return values.reshape(-1, group_size)


def group_advantages(
    rewards: jax.Array, valid: jax.Array, group_size: int, divide_by_std: bool, eps: float = 1e-6
) -> jax.Array:
    """Group-relative advantages `[T, B]` from `rewards, valid [T, B]`, one episode per row and rows
    in groups of K = `group_size` samples of the same question (question-major):

        A_b = (R_b - mean_{b' in g(b)} R_b') [/ (std_{b' in g(b)} R_b' + eps)]

    on every valid span of row b (0 on padding), R_b the row's undiscounted return. A question whose
    K rewards are equal gets A = 0: it teaches nothing, whatever its reward. K = 1 gives A = 0."""
    returns = grouped(episode_returns(rewards, valid), group_size)
    advantages = returns - jnp.mean(returns, axis=-1, keepdims=True)
    if divide_by_std:
        advantages = advantages / (jnp.std(returns, axis=-1, keepdims=True) + eps)
    return valid.astype(rewards.dtype) * advantages.reshape(-1)[None, :]


def informative_share(episode_rewards: jax.Array, group_size: int) -> jax.Array:
    """Share `[]` of questions whose K rewards (`episode_rewards [B]`, question-major) are not all
    equal: the questions where the weights changed the outcome (0 when K = 1)."""
    groups = grouped(episode_rewards, group_size)
    return jnp.mean((jnp.max(groups, axis=-1) > jnp.min(groups, axis=-1)).astype(jnp.float32))
