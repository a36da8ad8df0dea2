"""Weight functions (`WeightFn`: called every span inside the compiled loop) and the named baseline
strategies. The RL policy is one such object."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlae_jax.engine.features import SpanFeatures

STRATEGY_NAMES = ("uniform", "fixed", "single", "threshold", "topk", "packllm")


@dataclasses.dataclass(frozen=True)
class Selection:
    """How the union token is chosen: 'full' (exact over the union; greedy uses a certified
    candidate shortcut) or 'topk' (UniTE: only the union of each member's top-k tokens)."""

    mode: str = "full"
    top_k: int = 4


def check_weights(weights: Sequence[float], num_members: int) -> np.ndarray:
    """Validate user weights eagerly: shape [N], finite, non-negative, not all zero → normalised."""
    array = np.asarray(weights, np.float32)
    if array.shape != (num_members,):
        raise ValueError(
            f"weights must have shape ({num_members},) — one per member — got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"weights contain NaN or infinity: {array.tolist()}")
    if np.any(array < 0):
        raise ValueError(f"weights must be non-negative: {array.tolist()}")
    if array.sum() <= 0:
        raise ValueError("weights are all zero: at least one member needs a positive weight")
    return array / array.sum()


@runtime_checkable
class WeightFn(Protocol):
    """What the engine calls every span: `init_carry(batch, num_spans)` → the carry;
    `__call__(features: SpanFeatures, carry)` → (weights `[B, N]`, carry); `optional_features`: the
    costly features it reads ("js_divergence", "prompt_nll"), so the others are never computed;
    `selection`: how the union token is chosen from its mixture (static, so the compiled loop
    branches on it). Strategies and RL agents implement it; pytrees, so they can carry arrays into
    compiled code."""

    optional_features: tuple[str, ...]
    selection: Selection

    def init_carry(self, batch: int, num_spans: int) -> Any: ...

    def __call__(self, features: SpanFeatures, carry: Any) -> tuple[jax.Array, Any]: ...


def check_weight_fn(weight_fn: Any, where: str) -> Any:
    """`weight_fn` when it implements WeightFn, else a one-line TypeError naming what was passed."""
    if isinstance(weight_fn, tuple):
        raise TypeError(
            f"{where}: got a tuple {tuple(type(x).__name__ for x in weight_fn)}; a weight_fn is "
            "needed (see rlae_jax.engine.strategies.WeightFn; resolve_strategy returns one)"
        )
    if not isinstance(weight_fn, WeightFn):
        members = ("init_carry", "optional_features", "selection")
        missing = [n for n in members if not hasattr(weight_fn, n)]
        raise TypeError(
            f"{where}: {type(weight_fn).__name__} is not a weight_fn (missing "
            f"{', '.join(missing) or '__call__'}; see rlae_jax.engine.strategies.WeightFn)"
        )
    if not isinstance(weight_fn.selection, Selection):
        raise TypeError(
            f"{where}: {type(weight_fn).__name__}.selection is a "
            f"{type(weight_fn.selection).__name__}, not a Selection"
        )
    return weight_fn


class StatelessWeightFn:
    """Mixin for weight functions that carry nothing between spans (and choose the union token
    from the full union)."""

    optional_features: tuple[str, ...] = ()
    selection: Selection = Selection()

    def init_carry(self, batch: int, num_spans: int):
        return ()


@struct.dataclass
class FixedWeights(StatelessWeightFn):
    """The same weights `[N]` (an array or a list) for every row and span (uniform = GaC's
    average; one-hot = single member); the engine normalises them. `selection`
    `Selection("topk", k)`: UniTE's top-k union."""

    weights: jax.Array
    selection: Selection = struct.field(pytree_node=False, default=Selection())

    def __call__(self, features: SpanFeatures, carry):
        weights = jnp.asarray(self.weights, jnp.float32)
        return jnp.broadcast_to(weights, features.previous_weights.shape), carry


@struct.dataclass
class ThresholdGating(StatelessWeightFn):
    """GaC gating, per row: the primary member alone where its max probability exceeds `threshold`,
    else the `ensemble_weights` [N]. Evaluated at every span boundary (use span_length=1 for GaC).
    """

    threshold: jax.Array
    ensemble_weights: jax.Array
    primary: int = struct.field(pytree_node=False, default=0)

    def __call__(self, features: SpanFeatures, carry):
        alone = jax.nn.one_hot(self.primary, len(self.ensemble_weights))
        confident = features.max_prob[:, self.primary] > self.threshold
        ensemble = jnp.asarray(self.ensemble_weights, jnp.float32)
        return jnp.where(confident[:, None], alone, ensemble), carry


@struct.dataclass
class PackLLMWeights(StatelessWeightFn):
    """PackLLM-sim: weights ∝ exp(-prompt NLL / temperature) — members that find the prompt less
    surprising get more weight; fixed for the whole answer."""

    temperature: jax.Array
    optional_features: tuple[str, ...] = struct.field(pytree_node=False, default=("prompt_nll",))

    def __call__(self, features: SpanFeatures, carry):
        return jax.nn.softmax(-features.prompt_nll / self.temperature, axis=-1), carry


@struct.dataclass
class CallableWeightFn(StatelessWeightFn):
    """Wrap a plain function `fn(features) -> weights [B, N]` (hashable, closed-over constants
    only)."""

    fn: Callable[[SpanFeatures], jax.Array] = struct.field(pytree_node=False)
    optional_features: tuple[str, ...] = struct.field(pytree_node=False, default=())

    def __call__(self, features: SpanFeatures, carry):
        return self.fn(features), carry


def resolve_strategy(
    strategy: Any,
    num_members: int,
    weights: Sequence[float] | None = None,
    threshold: float = 0.5,
    primary: int = 0,
    top_k: int = 4,
    packllm_temperature: float = 1.0,
) -> Any:
    """A strategy name (see STRATEGY_NAMES) or a weight_fn object → its weight_fn (with its
    `selection`)."""
    uniform = np.full((num_members,), 1.0 / num_members, np.float32)
    if not isinstance(strategy, str):
        if callable(strategy) and not hasattr(strategy, "init_carry"):
            strategy = CallableWeightFn(strategy)
        return check_weight_fn(strategy, "strategy")
    if strategy == "uniform":
        return FixedWeights(jnp.asarray(uniform))
    if strategy == "fixed":
        if weights is None:
            raise ValueError("strategy 'fixed' needs weights=[...] (one per member)")
        return FixedWeights(jnp.asarray(check_weights(weights, num_members)))
    if strategy == "single":
        if not 0 <= primary < num_members:
            raise ValueError(f"primary={primary} is not a member index (0..{num_members - 1})")
        return FixedWeights(jax.nn.one_hot(primary, num_members))
    if strategy == "threshold":
        if not 0 <= primary < num_members:
            raise ValueError(f"primary={primary} is not a member index (0..{num_members - 1})")
        ensemble = uniform if weights is None else check_weights(weights, num_members)
        return ThresholdGating(jnp.float32(threshold), jnp.asarray(ensemble), primary)
    if strategy == "topk":
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        ensemble = uniform if weights is None else check_weights(weights, num_members)
        return FixedWeights(jnp.asarray(ensemble), Selection("topk", top_k))
    if strategy == "packllm":
        return PackLLMWeights(jnp.float32(packllm_temperature))
    raise ValueError(
        f"unknown strategy {strategy!r}; known: {', '.join(STRATEGY_NAMES)} or a weight_fn object"
    )
