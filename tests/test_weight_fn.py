"""The WeightFn protocol at the public entry points: a one-line error naming what was passed."""

import jax
import jax.numpy as jnp
import pytest

from rlae_jax.engine import DecodeConfig, FixedWeights, Selection, decode, resolve_strategy
from rlae_jax.engine.strategies import WeightFn, check_weight_fn
from rlae_jax.experiments.evaluation import run_strategies
from rlae_jax.rl.baselines import RouterWeightFn
from rlae_jax.rl.rollout import PolicyWeightFn


def test_strategies_and_agents_implement_the_protocol():
    for weight_fn in (FixedWeights(jnp.ones(2)), resolve_strategy("packllm", 2)):
        assert isinstance(weight_fn, WeightFn)
        assert weight_fn.selection == Selection()
    for agent_class in (PolicyWeightFn, RouterWeightFn):
        assert all(hasattr(agent_class, n) for n in ("init_carry", "__call__", "selection"))


def test_the_top_k_union_strategy_carries_its_selection_as_static_data():
    unite = resolve_strategy("topk", 2, top_k=3)
    assert unite.selection == Selection("topk", 3)
    leaves, tree = jax.tree.flatten(unite)
    assert len(leaves) == 1  # the weights; the selection is static, so tracing can branch on it
    assert jax.tree.unflatten(tree, leaves).selection == Selection("topk", 3)


def test_a_tuple_where_a_weight_fn_belongs_is_named():
    pair = (resolve_strategy("uniform", 2), Selection())  # the old resolve_strategy's result
    message = r"got a tuple \('FixedWeights', 'Selection'\); a weight_fn is needed"
    with pytest.raises(TypeError, match=r"'uniform': its second item must be a DecodeConfig"):
        run_strategies({"uniform": pair}, None, None, [])
    with pytest.raises(TypeError, match=r"strategy 'both': " + message):
        run_strategies({"both": (pair, DecodeConfig())}, None, None, [])
    with pytest.raises(TypeError, match=r"decode: " + message):
        decode(None, None, pair, None, 0.0, 1.0, DecodeConfig())
    with pytest.raises(TypeError, match=r"strategy: " + message):
        resolve_strategy(pair, 2)  # what `generate` does with its strategy


def test_an_object_without_the_protocol_is_named():
    class Weights:
        def __call__(self, features, carry):
            return features.previous_weights, carry

    with pytest.raises(TypeError, match=r"Weights is not a weight_fn \(missing init_carry"):
        check_weight_fn(Weights(), "generate")
    with pytest.raises(TypeError, match=r"strategy 'mine': its second item must be a DecodeConfig"):
        run_strategies({"mine": (FixedWeights(jnp.ones(2)), "greedy")}, None, None, [])


def test_a_selection_that_is_not_a_selection_is_named():
    with pytest.raises(TypeError, match=r"FixedWeights.selection is a str, not a Selection"):
        check_weight_fn(FixedWeights(jnp.ones(2), "topk"), "decode")
