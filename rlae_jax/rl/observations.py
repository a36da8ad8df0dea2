"""From the engine's per-span features to agent observations (the RL state).

The state is the prompt summary and the generation state of every member (its current hidden
state, entropy and max-prob), the members' agreement (top-1 match, JS divergence) and the previous
weights; the span index goes to the agent's own encoding. `feature_set` picks which parts:

- "full": everything, hidden states included (widths follow the members' hidden sizes);
- "no_hidden": the distribution statistics only;
- "portable": the distribution statistics plus a member-independent context summary — each
  member's prompt perplexity (mean prompt NLL) and the cosine similarity of its current hidden
  state to its prompt summary. Every part is a number per member or per row, so an agent trained
  on one set of members can be evaluated on any other set of the same size.

With `RLConfig.family_feature` the observation also shows each row's task family, a one-hot of
width `num_families` appended last (`with_family`): the oracle-feature ablation of a mixture.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from rlae_jax.engine.features import SpanFeatures
from rlae_jax.rl.networks import MultiAgentObs

FEATURE_SETS = {
    "full": (
        "hidden",
        "prompt_summary",
        "entropy",
        "max_prob",
        "top1_agreement",
        "js_divergence",
        "previous_weights",
    ),
    "no_hidden": ("entropy", "max_prob", "top1_agreement", "js_divergence", "previous_weights"),
    "portable": (
        "entropy",
        "max_prob",
        "prompt_nll",
        "context_similarity",
        "top1_agreement",
        "js_divergence",
        "previous_weights",
    ),
}
PER_MEMBER = (
    "hidden",
    "prompt_summary",
    "entropy",
    "max_prob",
    "prompt_nll",
    "context_similarity",
    "previous_weights",
)
SHARED = ("top1_agreement", "js_divergence")
WIDE = ("hidden", "prompt_summary")  # one block of the member's hidden size
ENGINE_OPTIONAL = ("js_divergence", "prompt_nll")  # computed by the engine only when asked for


def check_feature_set(feature_set: str) -> tuple[str, ...]:
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature_set {feature_set!r}; known: {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def engine_features(feature_set: str) -> tuple[str, ...]:
    """The optional engine features (a weight_fn's `optional_features`) that `feature_set` reads."""
    return tuple(name for name in ENGINE_OPTIONAL if name in check_feature_set(feature_set))


def context_similarity(features: SpanFeatures) -> jax.Array:
    """`[B, N]` cosine similarity of each member's current hidden state to its prompt summary: how
    far the answer has moved from the question, in the member's own space (0 for a zero vector)."""
    columns = []
    for hidden, summary in zip(features.hidden, features.prompt_summary):
        hidden, summary = hidden.astype(jnp.float32), summary.astype(jnp.float32)
        norms = jnp.linalg.norm(hidden, axis=-1) * jnp.linalg.norm(summary, axis=-1)
        columns.append(jnp.sum(hidden * summary, axis=-1) / jnp.maximum(norms, 1e-12))
    return jnp.stack(columns, axis=1)


def member_parts(features: SpanFeatures, name: str) -> list[jax.Array]:
    """Per-member `[B, d_n]` blocks of one feature."""
    if name == "context_similarity":
        value = context_similarity(features)
    else:
        value = getattr(features, name)
    if isinstance(value, tuple):
        return [v.astype(jnp.float32) for v in value]
    return [value[:, i : i + 1].astype(jnp.float32) for i in range(value.shape[1])]


def global_observation(features: SpanFeatures, feature_set: str) -> jax.Array:
    """The centralised state `[B, F]`: every chosen feature of every member, concatenated."""
    blocks = []
    for name in check_feature_set(feature_set):
        blocks += (
            member_parts(features, name)
            if name in PER_MEMBER
            else [getattr(features, name)[:, None]]
        )
    return jnp.concatenate(blocks, axis=-1)


def agent_observations(features: SpanFeatures, feature_set: str, hidden_width: int) -> jax.Array:
    """Per-member observations `[B, N, F_a]`: the member's own features (hidden vectors zero-padded
    to `hidden_width`) and the shared agreement features."""
    names = check_feature_set(feature_set)
    members = features.entropy.shape[1]
    per_member = [[] for _ in range(members)]
    for name in names:
        if name in PER_MEMBER:
            for index, block in enumerate(member_parts(features, name)):
                width = hidden_width if name in WIDE else block.shape[1]
                per_member[index].append(jnp.pad(block, ((0, 0), (0, width - block.shape[1]))))
    shared = [getattr(features, name)[:, None] for name in names if name in SHARED]
    return jnp.stack([jnp.concatenate(blocks + shared, axis=-1) for blocks in per_member], axis=1)


def with_family(obs, families: jax.Array, num_families: int):
    """`obs` with the one-hot `[..., num_families]` of each row's family `families [...]` (int32)
    appended as its last columns: to the PPO observation `[..., F]`, or to MAPPO's central `state
    [..., F]` and to every agent's `agent_obs [..., N, F_a]` (the same one-hot for each agent)."""
    one_hot = jax.nn.one_hot(families, num_families, dtype=jnp.float32)
    if not isinstance(obs, MultiAgentObs):
        return jnp.concatenate([obs, one_hot], axis=-1)
    members = obs.agent_obs.shape[-2]
    per_agent = jnp.broadcast_to(
        one_hot[..., None, :], one_hot.shape[:-1] + (members, num_families)
    )
    return MultiAgentObs(
        state=jnp.concatenate([obs.state, one_hot], axis=-1),
        agent_obs=jnp.concatenate([obs.agent_obs, per_agent], axis=-1),
    )


def observation(
    features: SpanFeatures,
    kind: str,
    feature_set: str,
    hidden_width: int,
    families: jax.Array | None = None,
    num_families: int = 1,
):
    """The agent's raw observation: `[B, F]` for PPO, MultiAgentObs for MAPPO. With `families`
    (`[B]` int32, the family_feature agent) each row's family one-hot of width `num_families` is
    appended (`with_family`)."""
    state = global_observation(features, feature_set)
    obs = (
        state
        if kind == "ppo"
        else MultiAgentObs(
            state=state, agent_obs=agent_observations(features, feature_set, hidden_width)
        )
    )
    return obs if families is None else with_family(obs, families, num_families)


def observation_dims(
    hidden_sizes: Sequence[int], feature_set: str, family_width: int = 0
) -> tuple[int, int]:
    """(F, F_a) for members with the given hidden sizes, each with `family_width` one-hot columns of
    the row's family appended (`with_family`; 0 without the family feature)."""
    names = check_feature_set(feature_set)
    members = len(hidden_sizes)
    width = max(hidden_sizes)
    global_dim = agent_dim = 0
    for name in names:
        if name in WIDE:
            global_dim += sum(hidden_sizes)
            agent_dim += width
        elif name in PER_MEMBER:
            global_dim += members
            agent_dim += 1
        else:
            global_dim += 1
            agent_dim += 1
    return global_dim + family_width, agent_dim + family_width
