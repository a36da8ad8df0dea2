"""The task family in the RL agent (the oracle-feature ablation) and the per-family training
diagnostics: on a mixture of two synthetic families (tiny random members of test_rl_train), the
`family_reward` / `family_weight_mean` / `family_rows` a run writes equal a NumPy reference from
the same rollout, a run compiles its train step once, a family_feature agent sees its row's
family as the last one-hot columns and weighs rows of different families differently, its
evaluation needs the family, and a num_families that is not the task's is refused."""

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlae_jax.engine.features import SpanFeatures
from rlae_jax.rl import rollout as rollout_module
from rlae_jax.rl.networks import MultiAgentObs
from rlae_jax.rl.observations import observation
from rlae_jax.rl.rollout import family_statistics, policy_weight_fn
from rlae_jax.rl.trainer import (
    MetricsWriter,
    RLAETrainer,
    RLConfig,
    initial_train_state,
    load_agent_state,
)
from rlae_jax.tasks.mixture import MixtureTask
from rlae_jax.tasks.synthetic import SYNTHETIC, SyntheticTask

import test_rl_train
from test_rl_train import CONFIG, tensorboard_tags

# test_rl_train's tiny random members of the demo's two architectures, and their ensemble
members, ensemble = test_rl_train.members, test_rl_train.ensemble


@dataclasses.dataclass(frozen=True)
class PartialCredit(SyntheticTask):
    """A synthetic family that a mixture scores by its char accuracy (no exact match): untrained
    members' rewards are not all 0."""

    exact_match = None


MIXTURE = MixtureTask.of(
    [PartialCredit(name="rev", kinds=(("rev",),)), PartialCredit(name="up", kinds=(("up",),))],
    [(), ()],
)
# batch_size 8 = 4 questions x 2 samples; a mixture's reward is its families' own (Python)
FAMILY_CONFIG = dataclasses.replace(
    CONFIG, num_families=2, family_feature=True, samples_per_question=2, reward="correctness"
)


@pytest.fixture(scope="module")
def mixture_examples():
    return MIXTURE.load("train", limit=8)


def per_family_reference(weights, valid, rewards, families, num_families):
    """NumPy: each family's rows, their mean reward, and their rows' mean weights over valid spans
    averaged over the rows (NaN for a family without rows)."""
    valid = np.asarray(valid, np.float64)[..., None]
    per_row = (np.asarray(weights) * valid).sum(1) / np.maximum(valid.sum(1), 1)
    rows, reward, weight_mean = [], [], []
    for family in range(num_families):
        mine = np.asarray(families) == family
        rows.append(mine.sum())
        reward.append(np.asarray(rewards)[mine].mean() if mine.any() else np.nan)
        weight_mean.append(
            per_row[mine].mean(0) if mine.any() else np.full(per_row.shape[1], np.nan)
        )
    return np.array(rows), np.array(reward), np.array(weight_mean), per_row


def test_a_family_without_rows_has_nan_means_null_in_jsonl_and_no_tensorboard_point(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.dirichlet([1.0, 1.0], size=(6, 3)).astype(np.float32)
    valid = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    result = types.SimpleNamespace(span_weights=jnp.asarray(weights), span_valid=jnp.asarray(valid))
    rewards = rng.uniform(size=6).astype(np.float32)
    families = np.array([0, 0, 2, 2, 2, 0], np.int32)
    in_graph = family_statistics(result, jnp.asarray(rewards), jnp.asarray(families), 3)
    rows, reward, weight_mean, _ = per_family_reference(weights, valid, rewards, families, 3)
    np.testing.assert_array_equal(in_graph["family_rows"], [3, 0, 3])
    np.testing.assert_allclose(in_graph["family_reward"], reward, rtol=1e-6)
    np.testing.assert_allclose(in_graph["family_weight_mean"], weight_mean, rtol=1e-6)
    assert (
        np.isnan(in_graph["family_reward"][1]) and np.isnan(in_graph["family_weight_mean"][1]).all()
    )

    writer = MetricsWriter(tmp_path)
    writer.write(
        1,
        {
            **in_graph,
            "mean_weights_per_span": np.zeros((1, 2)),
            "weight_mean": [0.5] * 2,
            "weight_spread": [0.0] * 2,
        },
    )
    writer.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=pytest.fail)
    assert row["family_reward"][1] is None and row["family_weight_mean"][1] == [None, None]
    assert row["family_rows"] == [3, 0, 3]
    tags = tensorboard_tags(tmp_path / "tensorboard")
    present = {f"family_{name}/{f}" for name in ("reward", "rows") for f in (0, 2)}
    per_member = {f"family_weight_mean/{f}/{n}" for f in (0, 2) for n in (0, 1)}
    assert present | per_member <= tags
    assert {tag.split("/")[1] for tag in tags if tag.startswith("family")} == {"0", "2"}


def constant_features(rows: int, hidden: int) -> SpanFeatures:
    """`rows` identical rows of span features (two members of hidden size `hidden`)."""
    rng = np.random.default_rng(3)
    row = lambda *shape: jnp.broadcast_to(jnp.asarray(rng.normal(0.5, 1.0, shape)), (rows, *shape))
    return SpanFeatures(
        span_index=jnp.zeros(rows, jnp.int32),
        hidden=(row(hidden), row(hidden)),
        prompt_summary=(row(hidden), row(hidden)),
        entropy=row(2),
        max_prob=row(2),
        top1_agreement=row(),
        js_divergence=row(),
        prompt_nll=row(2),
        previous_weights=row(2),
    )


@jax.jit
def evaluated(weight_fn, features: SpanFeatures) -> jax.Array:
    """The weights `[B, N]` a weight_fn gives at the first span of `features`."""
    return weight_fn(features, weight_fn.init_carry(features.span_index.shape[0], 1))[0]


@pytest.mark.parametrize("kind", ["ppo", "mappo"])
def test_the_family_one_hot_is_observed_and_changes_the_weights(members, kind):
    """Three rows alike but for their family: the observation ends in their family one-hot (MAPPO:
    the state and every agent's obs), its width is the agent's, and a random-initialised agent
    weighs them differently; an agent without the family feature ignores `family`."""
    config = dataclasses.replace(FAMILY_CONFIG, kind=kind, num_families=3, feature_set="no_hidden")
    setup, state = config.setup(members), initial_train_state(config, members)
    features = constant_features(3, setup.hidden_width)
    families = jnp.arange(3, dtype=jnp.int32)
    raw = observation(features, kind, "no_hidden", setup.hidden_width, families, 3)
    expected = config.agent_config(members)
    blocks = (
        [(raw.state, expected.obs_dim)]
        + [(raw.agent_obs[:, n], expected.agent_obs_dim) for n in range(2)]
        if isinstance(raw, MultiAgentObs)
        else [(raw, expected.obs_dim)]
    )
    for block, width in blocks:
        assert block.shape == (3, width)
        np.testing.assert_array_equal(block[:, -3:], np.eye(3))
        np.testing.assert_array_equal(
            block[:, :-3], np.broadcast_to(block[:1, :-3], (3, width - 3))
        )
    assert jax.tree.map(jnp.shape, state.obs_stats.mean) == jax.tree.map(lambda x: x.shape[1:], raw)

    key = jax.random.key(0)
    weight_fn = policy_weight_fn(state, setup, key, evaluation=True, family=families)
    weights = np.asarray(evaluated(weight_fn, features))
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert np.abs(weights[a] - weights[b]).max() > 1e-6, (a, b, weights)
    one = policy_weight_fn(state, setup, key, evaluation=True, family=1)  # one index, every row
    np.testing.assert_allclose(evaluated(one, features), weights[[1, 1, 1]], rtol=1e-6)
    # the family enters before the normalisation, like every input: stats that move only the
    # one-hot columns change the weights
    shift = lambda mean: mean.at[..., -3:].add(0.5)
    stats = state.obs_stats.replace(mean=jax.tree.map(shift, state.obs_stats.mean))
    moved = policy_weight_fn(state.replace(obs_stats=stats), setup, key, True, families)
    assert not np.allclose(evaluated(moved, features), weights, atol=1e-7)

    blind = dataclasses.replace(setup, family_feature=False)  # ignores `family`
    for family in (None, 0, families):
        assert policy_weight_fn(state, blind, key, evaluation=True, family=family).families is None


def test_an_agent_that_observes_the_family_needs_it_and_num_families_must_be_the_tasks(
    ensemble, members, mixture_examples, tmp_path
):
    state = initial_train_state(FAMILY_CONFIG, members)
    setup = FAMILY_CONFIG.setup(members)
    with pytest.raises(ValueError, match=r"observes the task family .*pass family="):
        policy_weight_fn(state, setup, jax.random.key(0), evaluation=True)
    with pytest.raises(ValueError, match=r"^family 2 is outside \[0, 2\)$"):
        policy_weight_fn(state, setup, jax.random.key(0), evaluation=True, family=2)
    three = dataclasses.replace(FAMILY_CONFIG, num_families=3)
    with pytest.raises(ValueError, match=r"^RLConfig.num_families is 3 but the task .* has 2 fam"):
        RLAETrainer(three, ensemble, MIXTURE, mixture_examples, tmp_path / "three")
    with pytest.raises(
        ValueError, match=r"^RLConfig.num_families is 2 but .*'synthetic' has 1 fam"
    ):
        RLAETrainer(FAMILY_CONFIG, ensemble, SYNTHETIC, SYNTHETIC.load("train", 8), tmp_path)
    with pytest.raises(ValueError, match="num_families must be >= 1, got 0"):
        dataclasses.replace(CONFIG, num_families=0)
    loaded = RLConfig.from_dict({"num_families": 2, "family_feature": True})
    assert (loaded.num_families, loaded.family_feature) == (2, True)
    with pytest.raises(ValueError, match="unknown RLConfig key"):
        RLConfig.from_dict({"num_family": 2})


def test_a_mixture_run_compiles_once_and_its_family_metrics_equal_numpy_on_its_rollouts(
    ensemble, members, mixture_examples, tmp_path, monkeypatch
):
    """Two updates of a family_feature agent on the mixture: one compiled train step; each row of
    metrics.jsonl (and TensorBoard) holds the family metrics that NumPy computes from that update's
    own rollout (its weights, valid spans, rewards and row families, handed out of the compiled
    step by a debug callback), with rewards that differ from 0. The checkpoint's config holds the
    family keys (a run without the feature is refused on it, an equal one resumes) and the agent
    loads for evaluation, one family per call."""
    rollouts = []

    def recorded(result, rewards, families, num_families):
        record = lambda *arrays: rollouts.append([np.asarray(a) for a in arrays])
        jax.debug.callback(record, result.span_weights, result.span_valid, rewards, families)
        return family_statistics(result, rewards, families, num_families)

    monkeypatch.setattr(rollout_module, "family_statistics", recorded)
    trainer = RLAETrainer(
        FAMILY_CONFIG, ensemble, MIXTURE, mixture_examples, tmp_path, checkpoint_every=2
    )
    state = trainer.train(num_updates=2, progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [row["train_step_compiles"] for row in rows] == [1, 1] and len(rollouts) == 2
    for update, (row, (weights, valid, rewards, families)) in enumerate(zip(rows, rollouts)):
        questions = trainer.question_indices(update)
        expected_families = MIXTURE.families_of([mixture_examples[i] for i in questions])
        np.testing.assert_array_equal(families, np.repeat(expected_families, 2))
        counts, reward, weight_mean, per_row = per_family_reference(
            weights, valid, rewards, families, 2
        )
        assert row["family_rows"] == counts.tolist()
        as_array = lambda values: np.array(values, dtype=float)  # null (absent family) → NaN
        np.testing.assert_allclose(as_array(row["family_reward"]), reward, rtol=1e-6)
        np.testing.assert_allclose(as_array(row["family_weight_mean"]), weight_mean, rtol=1e-5)
        np.testing.assert_allclose(row["weight_mean"], per_row.mean(0), rtol=1e-5)
        np.testing.assert_allclose(row["reward"], rewards.mean(), rtol=1e-5)
    assert max(max(r for r in row["family_reward"] if r is not None) for row in rows) > 0
    tags = tensorboard_tags(tmp_path / "tensorboard")
    present = {f for row in rows for f, n in enumerate(row["family_rows"]) if n}
    assert {f"family_reward/{f}" for f in present} | {
        f"family_weight_mean/{f}/1" for f in present
    } <= tags

    saved = json.loads((tmp_path / "config.json").read_text())["rl"]
    assert (saved["num_families"], saved["family_feature"]) == (2, True)
    blind = dataclasses.replace(FAMILY_CONFIG, family_feature=False)
    again = dict(workdir=tmp_path, encoded=trainer.encoded)
    del trainer
    with pytest.raises(ValueError, match=r"differs in: family_feature\)"):
        RLAETrainer(blind, ensemble, MIXTURE, mixture_examples, **again)
    resumed = RLAETrainer(FAMILY_CONFIG, ensemble, MIXTURE, mixture_examples, **again)
    assert resumed.manager.latest_step() == 2
    del resumed
    loaded = load_agent_state(tmp_path, FAMILY_CONFIG, members)
    for saved_leaf, loaded_leaf in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(loaded.params), strict=True
    ):
        np.testing.assert_array_equal(saved_leaf, loaded_leaf)
    setup = FAMILY_CONFIG.setup(members)
    features = constant_features(2, setup.hidden_width)
    per_family = [
        policy_weight_fn(loaded, setup, jax.random.key(0), evaluation=True, family=f)
        for f in (0, 1)
    ]
    weights = [evaluated(fn, features) for fn in per_family]
    assert not np.allclose(weights[0], weights[1], atol=1e-7)


def test_a_mixture_batch_holds_every_family_and_its_grouped_rollout_is_each_familys_own(
    ensemble, members, mixture_examples, tmp_path
):
    """A mixture's batch: the same number of questions from every family, one group per family
    (each from its own prefix). Decoding the groups in one `lax.map` gives exactly what decoding
    each family's group alone gives with that group's keys."""
    trainer = RLAETrainer(FAMILY_CONFIG, ensemble, MIXTURE, mixture_examples, tmp_path)
    prompts, _ = trainer.batch(0)
    families = trainer.batch_families(0)
    assert prompts.input_ids[0].shape[0] == 2  # [G, questions per family, T]
    np.testing.assert_array_equal(families, [0, 0, 0, 0, 1, 1, 1, 1])  # 2 questions × K=2 each
    state = initial_train_state(FAMILY_CONFIG, members)
    keys = jax.random.split(jax.random.key(3))
    run = jax.jit(rollout_module.rollout, static_argnames="setup")
    grouped = run(state, ensemble, prompts, trainer.setup, families, *keys)
    for group in range(2):
        own = run(
            state,
            ensemble,
            jax.tree.map(lambda x: x[group], prompts),
            trainer.setup,
            families.reshape(2, -1)[group],
            *(jax.random.split(key, 2)[group] for key in keys),
        )
        rows = slice(4 * group, 4 * group + 4)
        np.testing.assert_array_equal(grouped.union_ids[rows], own.union_ids)
        np.testing.assert_allclose(grouped.span_weights[rows], own.span_weights, atol=1e-6)
        np.testing.assert_array_equal(grouped.lengths[rows], own.lengths)
