"""Distributions over ensemble weights: Dirichlet (PPO) and per-member log-Gamma (MAPPO).

Both are written out here (no distrax) and tested against `scipy.stats`.

Numerical safety: a Dirichlet sample in float32 can contain exact zeros when a concentration is
small, and log(0) = -inf would make the stored log-prob (and every later PPO ratio) non-finite.
`Dirichlet.sample` therefore clips each weight to at least `min_weight` and renormalises; the
clipped sample is the action that is stored and scored, so the behaviour and learner log-probs
are evaluated on the same point and stay finite. `log_prob` applies the same clip to its input.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln

DEFAULT_MIN_WEIGHT = 1e-6


def clip_to_simplex(weights: jax.Array, min_weight: float = DEFAULT_MIN_WEIGHT) -> jax.Array:
    """Clip `weights [..., N]` to >= `min_weight` and renormalise so they sum to 1."""
    clipped = jnp.maximum(weights, min_weight)
    return clipped / jnp.sum(clipped, axis=-1, keepdims=True)


@flax.struct.dataclass
class Dirichlet:
    """Dirichlet(alpha) over the simplex; `concentration [..., N]` > 0.

    log p(w) = sum_i (alpha_i - 1) log w_i - log B(alpha),
    log B(alpha) = sum_i lgamma(alpha_i) - lgamma(alpha_0),   alpha_0 = sum_i alpha_i.
    """

    concentration: jax.Array
    min_weight: float = flax.struct.field(pytree_node=False, default=DEFAULT_MIN_WEIGHT)

    def log_normalizer(self) -> jax.Array:
        """log B(alpha), shape `[...]`."""
        alpha = self.concentration
        return jnp.sum(gammaln(alpha), axis=-1) - gammaln(jnp.sum(alpha, axis=-1))

    def sample(self, key: jax.Array) -> jax.Array:
        """Reparameterised sample (jax.random.dirichlet, implicit gamma gradients) `[..., N]`,
        clipped away from 0 (see module docstring)."""
        weights = jax.random.dirichlet(key, self.concentration)
        return clip_to_simplex(weights, self.min_weight)

    def log_prob(self, weights: jax.Array) -> jax.Array:
        """Log density of `weights [..., N]` (clipped like `sample`), shape `[...]`."""
        weights = clip_to_simplex(weights, self.min_weight)
        return (
            jnp.sum((self.concentration - 1.0) * jnp.log(weights), axis=-1) - self.log_normalizer()
        )

    def entropy(self) -> jax.Array:
        """log B(alpha) + (alpha_0 - N) psi(alpha_0) - Σ_i (alpha_i - 1) psi(alpha_i), `[...]`."""
        alpha = self.concentration
        alpha_0 = jnp.sum(alpha, axis=-1)
        num_members = alpha.shape[-1]
        return (
            self.log_normalizer()
            + (alpha_0 - num_members) * digamma(alpha_0)
            - jnp.sum((alpha - 1.0) * digamma(alpha), axis=-1)
        )

    def mean(self) -> jax.Array:
        """E[w] = alpha / alpha_0, `[..., N]`."""
        return self.concentration / jnp.sum(self.concentration, axis=-1, keepdims=True)

    def mode(self) -> jax.Array:
        """argmax of the density, `[..., N]`: (alpha_i - 1) / (alpha_0 - N) for a row whose
        concentrations all exceed 1. Otherwise the density is unbounded at the simplex's edge and
        has no interior mode; such a row gets its mean instead."""
        alpha = self.concentration
        interior = (alpha - 1.0) / (jnp.sum(alpha, axis=-1, keepdims=True) - alpha.shape[-1])
        has_mode = jnp.all(alpha > 1.0, axis=-1, keepdims=True)
        return jnp.where(has_mode, interior, self.mean())


@flax.struct.dataclass
class LogGamma:
    """Independent y_i = log g_i with g_i ~ Gamma(alpha_i, 1); `concentration [..., N]` > 0.

    This is the MAPPO joint action: agent i owns y_i, and softmax(y) = g / sum(g) ~
    Dirichlet(alpha), so the induced ensemble weights have exactly the PPO agent's distribution. Per
    agent log p(y_i) = alpha_i y_i - exp(y_i) - lgamma(alpha_i)  (scipy.stats.loggamma(c=alpha_i)),
    finite for every finite y, so no clipping is needed.
    """

    concentration: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        """Per-agent actions y `[..., N]` (jax.random.loggamma: accurate for small alpha)."""
        return jax.random.loggamma(key, self.concentration)

    def log_prob(self, actions: jax.Array) -> jax.Array:
        """Per-agent log densities `[..., N]` of `actions [..., N]`."""
        alpha = self.concentration
        return alpha * actions - jnp.exp(actions) - gammaln(alpha)

    def entropy(self) -> jax.Array:
        """Per-agent entropy `[..., N]`: alpha_i + lgamma(alpha_i) - alpha_i psi(alpha_i)."""
        alpha = self.concentration
        return alpha + gammaln(alpha) - alpha * digamma(alpha)

    def weights(self, actions: jax.Array) -> jax.Array:
        """Ensemble weights softmax(y) = g / sum(g) `[..., N]`, distributed Dirichlet(alpha)."""
        return jax.nn.softmax(actions, axis=-1)

    def weights_distribution(self) -> Dirichlet:
        """The Dirichlet(alpha) that `weights(sample(key))` follows."""
        return Dirichlet(self.concentration)
