"""The WeightFn protocol at the public entry points: a one-line error naming what was passed."""

import jax.numpy as jnp
import pytest

from rlae_jax.engine import DecodeConfig, FixedWeights, decode, resolve_strategy
from rlae_jax.engine.strategies import WeightFn, check_weight_fn
from rlae_jax.experiments.evaluation import run_strategies
from rlae_jax.rl.baselines import RouterWeightFn
from rlae_jax.rl.rollout import PolicyWeightFn


def test_strategies_and_agents_implement_the_protocol():
    for weight_fn in (FixedWeights(jnp.ones(2)), resolve_strategy("packllm", 2)[0]):
        assert isinstance(weight_fn, WeightFn)
    for agent_class in (PolicyWeightFn, RouterWeightFn):
        assert all(hasattr(agent_class, name) for name in ("init_carry", "__call__"))


def test_a_resolve_strategy_tuple_where_a_weight_fn_belongs_is_named():
    pair = resolve_strategy("uniform", 2)
    with pytest.raises(TypeError, match=r"'uniform': its second item must be a DecodeConfig"):
        run_strategies({"uniform": pair}, None, None, [])
    with pytest.raises(TypeError, match=r"strategy 'both': give \(weight_fn, DecodeConfig\)"):
        run_strategies({"both": (*pair, DecodeConfig())}, None, None, [])
    with pytest.raises(TypeError, match=r"decode: got a tuple \('FixedWeights', 'Selection'\)"):
        decode([], None, None, pair, None, 0.0, 1.0, DecodeConfig())


def test_an_object_without_the_protocol_is_named():
    class Weights:
        def __call__(self, features, carry):
            return features.previous_weights, carry

    with pytest.raises(TypeError, match=r"Weights is not a weight_fn \(missing init_carry"):
        check_weight_fn(Weights(), "generate")
    with pytest.raises(TypeError, match=r"strategy 'mine': its second item must be a DecodeConfig"):
        run_strategies({"mine": (FixedWeights(jnp.ones(2)), "greedy")}, None, None, [])
