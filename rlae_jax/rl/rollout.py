"""RLAE rollouts inside the compiled decode, rewards, and the one-jit train step.

The agent is a weight_fn of the ensemble engine: every span it turns the engine's features into an
observation and samples the mixing weights. One generation per batch records every span, so an
episode's transitions come out of a single `engine.decode`; the train step then scores the answers
(in-graph, or one `jax.pure_callback` per batch), runs GAE and the PPO/MAPPO epochs — all one
compiled function.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from rlae_jax.align import Alignment
from rlae_jax.runtime.compile_options import decode_loop_options
from rlae_jax.engine.loop import DecodeConfig, DecodeResult, PromptBatch, decode
from rlae_jax.engine.strategies import Selection
from rlae_jax.rl import ppo
from rlae_jax.rl.gae import informative_share
from rlae_jax.rl.networks import check_eval_action
from rlae_jax.rl.normalization import RunningStats, normalize
from rlae_jax.rl.observations import engine_features, observation
from rlae_jax.tasks.synthetic import SyntheticTask, reward_in_graph


TRACES: collections.Counter = collections.Counter()  # RLSetup → times `train_step` was traced


@struct.dataclass
class PolicyWeightFn:
    """The agent as an engine weight_fn. Its inputs are normalised with `obs_stats` (None: raw).
    Training (`eval_action` None) samples the weights and keeps every span's action in the carry
    (key, actions `[B, S, N]`) for the PPO update (log-probs and values are recomputed from them);
    evaluation takes the policy's `eval_action` ("mean", "mode" or "sample", `EVAL_ACTIONS`).
    `families`: the family_feature agent's family of each row, `[B]` int32 or one index `[]` for
    every row (its one-hot of width `num_families` is appended to the raw observation, before the
    normalisation); None for an agent that does not observe the family. `selection`: how the union
    token is chosen from the mixture (default: the full union)."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    params: nnx.State
    obs_stats: RunningStats | None
    key: jax.Array
    kind: str = struct.field(pytree_node=False)
    feature_set: str = struct.field(pytree_node=False)
    hidden_width: int = struct.field(pytree_node=False)
    num_members: int = struct.field(pytree_node=False)
    eval_action: str | None = struct.field(pytree_node=False, default=None)
    optional_features: tuple[str, ...] = struct.field(pytree_node=False, default=("js_divergence",))
    families: jax.Array | None = None
    num_families: int = struct.field(pytree_node=False, default=1)
    selection: Selection = struct.field(pytree_node=False, default=Selection())

    def init_carry(self, batch: int, num_spans: int):
        return self.key, jnp.zeros((batch, num_spans, self.num_members), jnp.float32)

    def __call__(self, features, carry):
        key, actions = carry
        key, sample_key = jax.random.split(key)
        agent = nnx.merge(self.graphdef, self.params)
        families = (
            None
            if self.families is None
            else jnp.broadcast_to(self.families, features.span_index.shape)
        )
        raw = observation(
            features, self.kind, self.feature_set, self.hidden_width, families, self.num_families
        )
        obs = normalize(self.obs_stats, raw)
        if self.eval_action is not None:
            weights = agent.eval_weights(obs, features.span_index, self.eval_action, sample_key)
            return weights, (key, actions)
        action, _, _ = agent.act(obs, features.span_index, sample_key)
        return agent.weights(action), (key, actions.at[:, features.span_index[0]].set(action))


@dataclasses.dataclass(frozen=True)
class RLSetup:
    """Static description of the RL problem: agent kind, features, decoding, reward shaping, the
    evaluation action, the number of rows per question (`samples_per_question`, question-major)
    that the group statistics read, the task's `num_families` (the per-family diagnostics) and
    whether the agent observes each row's family (`family_feature`)."""

    kind: str
    num_members: int
    feature_set: str
    hidden_width: int
    decode: DecodeConfig
    length_penalty: float = 0.0
    eval_action: str = "mean"
    samples_per_question: int = 1
    num_families: int = 1
    family_feature: bool = False

    @property
    def evaluation_decode(self) -> DecodeConfig:
        """The decode an evaluation of the agent takes: one answer per prompt, no span records."""
        return dataclasses.replace(self.decode, samples_per_prompt=1, record_features=False)


def policy_weight_fn(
    train_state: ppo.TrainState,
    setup: RLSetup,
    key: jax.Array,
    evaluation: bool = False,
    family=None,
) -> PolicyWeightFn:
    """The agent of `train_state` as a weight_fn: sampling and recording its actions (training),
    or with `evaluation` taking `setup.eval_action`. `family`: the family of the rows it serves, one
    index (an int or `[]` int32: every row) or `[B]` int32 per row; required by an agent that
    observes it (`setup.family_feature`: one-line ValueError without it, or for an index outside
    `[0, num_families)`), ignored by any other."""
    families = None
    if setup.family_feature:
        if family is None:
            raise ValueError(
                f"this agent observes the task family (family_feature, {setup.num_families} "
                "families): pass family=<index> (evaluate each family's split separately)"
            )
        if isinstance(family, (int, np.integer)) and not 0 <= family < setup.num_families:
            raise ValueError(f"family {family} is outside [0, {setup.num_families})")
        families = jnp.asarray(family, jnp.int32)
    return PolicyWeightFn(
        train_state.graphdef,
        train_state.params,
        train_state.input_stats(),
        key,
        setup.kind,
        setup.feature_set,
        setup.hidden_width,
        setup.num_members,
        check_eval_action(setup.eval_action) if evaluation else None,
        engine_features(setup.feature_set),
        families,
        setup.num_families,
    )


# ---- rewards ---------------------------------------------------------------------------------


REWARDS = ("correctness", "char_accuracy")


@struct.dataclass
class InGraphReward:
    """The synthetic task's reward, computed on device from union ids: exact match (0/1, `exact`)
    or char accuracy (partial credit). Batch data: target bytes `[B, Lt]`
    (`tasks.synthetic.target_bytes`)."""

    byte_table: jax.Array
    byte_lengths: jax.Array
    exact: bool = struct.field(pytree_node=False, default=True)

    @classmethod
    def for_alignment(cls, alignment: Alignment, exact: bool = True) -> "InGraphReward":
        table, lengths = alignment.byte_table()
        return cls(jnp.asarray(table), jnp.asarray(lengths), exact)

    def __call__(self, result: DecodeResult, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
        """→ (reward `[B]`, exact-match accuracy `[B]`)."""
        chars, exact = reward_in_graph(
            result.union_ids, targets, self.byte_table, self.byte_lengths
        )
        return (exact if self.exact else chars), exact


@struct.dataclass
class CallbackReward:
    """A Python task reward reached once per batch through `jax.pure_callback`: union ids are turned
    into text on the host and scored by `task.rewards` (the task's 0/1 correctness).
    Batch data: example indices `[B]`."""

    task: Any = struct.field(pytree_node=False)
    examples: tuple = struct.field(pytree_node=False)
    alignment_vocab: Any = struct.field(pytree_node=False)
    decode_text: Any = struct.field(pytree_node=False)

    @classmethod
    def for_task(cls, task, examples: Sequence, alignment: Alignment) -> "CallbackReward":
        return cls(task, tuple(examples), alignment.vocab, alignment.decode)

    def host_rewards(
        self, union_ids: np.ndarray, lengths: np.ndarray, indices: np.ndarray
    ) -> np.ndarray:
        texts = [self.decode_text(ids[:length].tolist()) for ids, length in zip(union_ids, lengths)]
        examples = [self.examples[int(i)] for i in indices]
        return self.task.rewards(texts, examples).astype(np.float32)

    def __call__(self, result: DecodeResult, indices: jax.Array) -> tuple[jax.Array, jax.Array]:
        shape = jax.ShapeDtypeStruct(result.lengths.shape, jnp.float32)
        rewards = jax.pure_callback(
            self.host_rewards,
            shape,
            result.union_ids,
            result.lengths,
            indices,
            vmap_method="sequential",
        )
        return rewards, (rewards >= 1.0).astype(jnp.float32)


def make_reward(name: str, task, examples: Sequence, alignment: Alignment):
    """The reward called `name` (one of REWARDS) for `task`: "correctness" is 0/1 (exact match on
    the synthetic task, the task's own reward otherwise); "char_accuracy" is the synthetic task's
    per-character partial credit."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(REWARDS)}")
    if isinstance(task, SyntheticTask):
        return InGraphReward.for_alignment(alignment, exact=name == "correctness")
    if name != "correctness":
        raise ValueError(
            f"reward {name!r} exists only for the synthetic tasks; {task.name!r} has 'correctness'"
        )
    return CallbackReward.for_task(task, examples, alignment)


# ---- transitions and the train step -----------------------------------------------------------


def time_major(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1)


def episode_transitions(
    train_state: ppo.TrainState,
    setup: RLSetup,
    result: DecodeResult,
    actions: jax.Array,
    episode_rewards: jax.Array,
    families: jax.Array,
) -> ppo.Transitions:
    """`[S, B]` transitions of a batch of episodes: raw observations rebuilt from the recorded span
    features (and each row's family `families [B]` int32 for a family_feature agent), the sampled
    actions, behaviour log-probs and values under the current parameters (and observation stats),
    and the episode reward on each row's last span."""
    batch, spans = result.span_valid.shape
    flat_features = jax.tree.map(
        lambda x: x.reshape((batch * spans,) + x.shape[2:]), result.span_features
    )
    flat_obs = observation(
        flat_features,
        setup.kind,
        setup.feature_set,
        setup.hidden_width,
        jnp.repeat(families, spans) if setup.family_feature else None,
        setup.num_families,
    )
    flat_actions = actions.reshape(batch * spans, -1)
    agent = nnx.merge(train_state.graphdef, train_state.params)
    log_probs, _, values = agent.evaluate(
        normalize(train_state.input_stats(), flat_obs), flat_features.span_index, flat_actions
    )
    unflatten = lambda x: time_major(x.reshape((batch, spans) + x.shape[1:]))
    valid = time_major(result.span_valid)
    last = jnp.maximum(valid.sum(0) - 1, 0)
    dones = jax.nn.one_hot(last, spans, dtype=jnp.float32).T
    return ppo.Transitions(
        obs=jax.tree.map(unflatten, flat_obs),
        span_index=unflatten(flat_features.span_index),
        actions=time_major(actions),
        log_probs=unflatten(log_probs),
        values=unflatten(values),
        rewards=dones * episode_rewards[None, :],
        dones=dones,
        valid=valid.astype(jnp.float32),
    )


def row_mean_weights(result: DecodeResult) -> jax.Array:
    """`[B, N]` each row's mean weights over its valid spans (0 for a row with none)."""
    valid = result.span_valid[..., None]
    masked = jnp.where(valid, result.span_weights, 0.0)
    return masked.sum(1) / jnp.maximum(valid.sum(1), 1)


def weight_statistics(result: DecodeResult) -> dict[str, jax.Array]:
    """Mean weights per span `[S, N]` over the rows that reached it; each row's mean weight over its
    spans (`row_mean_weights`), averaged over rows (`weight_mean [N]`) and its std across rows
    (`weight_spread [N]`): whether the agent gives different questions different weights."""
    valid = result.span_valid[..., None]
    masked = jnp.where(valid, result.span_weights, 0.0)
    per_span = masked.sum(0) / jnp.maximum(valid.sum(0), 1)
    per_row = row_mean_weights(result)
    return {
        "mean_weights_per_span": per_span,
        "weight_mean": per_row.mean(0),
        "weight_spread": per_row.std(0),
    }


def family_statistics(
    result: DecodeResult, rewards: jax.Array, families: jax.Array, num_families: int
) -> dict[str, jax.Array]:
    """Per family f < `num_families` (static F) over the batch rows whose family `families [B]`
    (int32) is f: `family_rows [F]` int32 (how many), `family_reward [F]` (their mean episode
    reward, `rewards [B]`) and `family_weight_mean [F, N]` (their `row_mean_weights` averaged over
    the rows: `weight_mean` within the family, so the families' row-weighted average is
    `weight_mean`). A family with no row in the batch has NaN in both means. Segment means as
    one-hot matmuls (static shapes, one compile)."""
    one_hot = jax.nn.one_hot(families, num_families, dtype=jnp.float32)  # [B, F]
    rows = one_hot.sum(0)
    present = rows > 0

    def segment_mean(values):  # [B, ...] → [F, ...]: the mean of each family's rows (NaN: none)
        sums = jnp.tensordot(one_hot, values, axes=(0, 0), precision=jax.lax.Precision.HIGHEST)
        shape = (num_families,) + (1,) * (values.ndim - 1)
        means = sums / jnp.maximum(rows, 1.0).reshape(shape)
        return jnp.where(present.reshape(shape), means, jnp.nan)

    return {
        "family_rows": rows.astype(jnp.int32),
        "family_reward": segment_mean(rewards.astype(jnp.float32)),
        "family_weight_mean": segment_mean(row_mean_weights(result)),
    }


def rollout(
    train_state: ppo.TrainState,
    ensemble,
    prompts: PromptBatch,
    setup: RLSetup,
    families: jax.Array,
    policy_key: jax.Array,
    decode_key: jax.Array,
) -> DecodeResult:
    """The batch's episodes under the sampling policy. Grouped prompts (every leaf with a leading
    group axis G, `engine.state.stack_groups`: one group per task family, each starting from its
    own prefilled prefix) decode one group after another in a `lax.map` (one compiled decode), and
    their rows are concatenated group-major; `families [B]` follow that order."""

    def episodes(prompts, families, policy_key, decode_key):
        weight_fn = policy_weight_fn(train_state, setup, policy_key, family=families)
        greedy, top_p = jnp.float32(0.0), jnp.float32(1.0)  # the weights are what is sampled
        return decode(ensemble, prompts, weight_fn, decode_key, greedy, top_p, setup.decode)

    if prompts.input_ids[0].ndim == 2:
        return episodes(prompts, families, policy_key, decode_key)
    groups = prompts.input_ids[0].shape[0]
    results = jax.lax.map(
        lambda group: episodes(*group),
        (
            prompts,
            families.reshape(groups, -1),
            jax.random.split(policy_key, groups),
            jax.random.split(decode_key, groups),
        ),
    )
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), results)


def train_step(
    train_state: ppo.TrainState,
    ensemble,
    prompts: PromptBatch,
    reward_fn,
    reward_data,
    setup: RLSetup,
    families: jax.Array | None = None,
) -> tuple[ppo.TrainState, dict[str, jax.Array]]:
    """One RLAE update: rollout (policy sets weights every span), reward, advantages, PPO/MAPPO
    epochs. `prompts` hold one row per question; the engine decodes each
    `setup.samples_per_question` times from one prefill (rows question-major). `families`: each
    decoded row's family `[B]` int32 (question-major, K rows per question), observed by a
    family_feature agent and read by the per-family diagnostics (`family_statistics`); None: every
    row is family 0 (a task of one family)."""
    TRACES[setup] += 1  # counts compiles: this line runs once per trace
    if families is None:
        rows = math.prod(prompts.input_ids[0].shape[:-1]) * setup.decode.samples_per_prompt
        families = jnp.zeros((rows,), jnp.int32)
    key, policy_key, decode_key = jax.random.split(train_state.key, 3)
    result = rollout(train_state, ensemble, prompts, setup, families, policy_key, decode_key)
    rewards, accuracy = reward_fn(result, reward_data)
    shaped = rewards - setup.length_penalty * result.lengths / setup.decode.max_new_tokens
    actions = result.weight_carry[1]
    transitions = episode_transitions(train_state, setup, result, actions, shaped, families)
    train_state, metrics = ppo.update(train_state.replace(key=key), transitions)
    metrics.update(
        **weight_statistics(result),
        **family_statistics(result, rewards, families, setup.num_families),
        reward=rewards.mean(),
        accuracy=accuracy.mean(),
        informative_share=informative_share(rewards, setup.samples_per_question),
        episode_tokens=result.lengths.mean(),
        weight_fallback=result.weight_fallback.any(),
    )
    return train_state, metrics


# JAX takes compile options only on a top-level jit: inside your own jit (or vmap), call
# `train_step`.
train_step_jit = jax.jit(
    train_step, static_argnames=("setup",), compiler_options=decode_loop_options()
)
