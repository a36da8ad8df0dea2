"""Generalised advantage estimation over spans with done / valid masks."""

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
