"""The PPO / MAPPO loss: clipped policy loss, clipped value loss, entropy bonus, masked.

One function serves both agents. PPO passes one log-prob per step (`[M]`); MAPPO passes one per
agent (`[M, N]`): each agent's ratio is clipped on its own, with the shared advantage of its step
(broadcast over agents) and the one centralised critic.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Coefficients of the PPO objective. `entropy_coef` 0.01 as the RLAE authors': it keeps the
    Dirichlet from collapsing onto one member before the reward has said which."""

    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.01


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` where `mask` is 1 (0 when the mask is empty); `mask` broadcasts to `x`."""
    mask = jnp.broadcast_to(mask, x.shape).astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_std(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Population std of `x` where `mask` is 1."""
    return jnp.sqrt(masked_mean(jnp.square(x - masked_mean(x, mask)), mask))


def normalize_advantages(advantages: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(A - mean) / (std + eps) with mean and (population) std over the valid entries only."""
    return (advantages - masked_mean(advantages, mask)) / (masked_std(advantages, mask) + eps)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """1 - Var[R - V] / Var[R] over the valid entries: 1 for a perfect critic, 0 for one that
    predicts the mean, negative for a worse one (0 when the returns do not vary)."""
    returns_var = jnp.square(masked_std(returns, mask))
    errors_var = jnp.square(masked_std(returns - values, mask))
    return jnp.where(returns_var > 0, 1.0 - errors_var / jnp.maximum(returns_var, 1e-12), 0.0)


def ppo_loss(
    log_probs: jax.Array,
    old_log_probs: jax.Array,
    advantages: jax.Array,
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    entropy: jax.Array,
    mask: jax.Array,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss and metrics over a minibatch of M steps.

    Shapes: `log_probs, old_log_probs [M]` (PPO) or `[M, N]` (MAPPO, one per agent);
    `advantages, values, old_values, returns, entropy, mask [M]` (advantages already normalised
    by the learner, over the whole batch). With masked means E[.] over valid steps (and agents),
    rho = exp(log_probs - old_log_probs):

        L_pi    = -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)]
        V_clip  = V_old + clip(V - V_old, -eps_v, eps_v)
        L_V     = 0.5 E[max((V - R)^2, (V_clip - R)^2)]
        L       = L_pi + c_V L_V - c_H E[H]
        approx_kl = E[(rho - 1) - log rho],   clip_frac = E[|rho - 1| > eps]
    """
    per_agent = log_probs.ndim == advantages.ndim + 1
    policy_mask = mask[..., None] if per_agent else mask
    policy_advantages = advantages[..., None] if per_agent else advantages

    log_ratio = log_probs - old_log_probs
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    policy_objective = jnp.minimum(ratio * policy_advantages, clipped_ratio * policy_advantages)
    policy_loss = -masked_mean(policy_objective, policy_mask)

    clipped_values = old_values + jnp.clip(
        values - old_values, -config.value_clip_eps, config.value_clip_eps
    )
    value_errors = jnp.maximum(jnp.square(values - returns), jnp.square(clipped_values - returns))
    value_loss = 0.5 * masked_mean(value_errors, mask)

    mean_entropy = masked_mean(entropy, mask)
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * mean_entropy
    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": mean_entropy,
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, policy_mask),
        "clip_frac": masked_mean(
            (jnp.abs(ratio - 1.0) > config.clip_eps).astype(ratio.dtype), policy_mask
        ),
    }
    return loss, metrics
