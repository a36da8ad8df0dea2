"""Baselines that make the comparison with RLAE fair: do the learned weights need RL at all?

- `tune_fixed_weights`: the best fixed weights on the training split — every point of a grid over
  the simplex (`simplex_grid`) generates with the same engine and is scored by the task's accuracy
  (`evaluation.run_strategy`); the best wins (the first of equals in grid order).
- `train_router`: a supervised span router with the RL agents' observation (`observations`,
  global state) trained on teacher-forced labels. The reference answer sentence (`task.target`, what
  a correct completion says) is cut into chunks of
  `chunk_chars` characters; at every cut the engine computes the features after prompt + the
  reference so far, and the label is the member whose own tokenisation gives the next chunk's text
  the highest probability (`chunk_log_probs`, `teacher_forced_labels`). The router (an MLP,
  softmax over members) is fitted by cross-entropy; deployed, its probabilities are the ensemble
  weights of every span (`RouterWeightFn`). In training its previous weights are those the labels
  would have set (`teacher_forced_previous_weights`). It sees no span position: chunks are
  counted in characters, not spans.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from tqdm import tqdm

from rlae_jax.engine import DecodeConfig, decode_jit, tokenize_for_members
from rlae_jax.engine.strategies import FixedWeights, StatelessWeightFn
from rlae_jax.engine.prefix import EncodedPrompts
from rlae_jax.ensemble import Ensemble
from rlae_jax.experiments.evaluation import run_strategies
from rlae_jax.models.member import Member
from rlae_jax.models.prompts import left_pad, pad_id_of
from rlae_jax.rl.networks import MLP
from rlae_jax.engine.features import token_log_probs
from rlae_jax.rl.observations import engine_features, global_observation


# ---- best fixed weights ----------------------------------------------------------------------


def simplex_grid(num_members: int, resolution: int) -> np.ndarray:
    """Every weight vector `[N]` with entries in {0, 1/r, ..., 1} summing to 1: `[P, N]`,
    P = C(r + N - 1, N - 1), in lexicographic order of the counts."""
    if num_members < 1 or resolution < 1:
        raise ValueError(
            f"need num_members >= 1 and resolution >= 1, got {num_members}, {resolution}"
        )
    counts = [
        c
        for c in itertools.product(range(resolution + 1), repeat=num_members)
        if sum(c) == resolution
    ]
    return np.array(counts, np.float32) / resolution


@dataclasses.dataclass
class FixedWeightsSearch:
    """`weights [N]`: the best grid point; `grid [P, N]` and its `accuracy [P]` on the split."""

    weights: np.ndarray
    grid: np.ndarray
    accuracy: np.ndarray


def tune_fixed_weights(
    ensemble: Ensemble,
    task,
    examples: Sequence,
    config: DecodeConfig,
    resolution: int = 4,
    batch_size: int = 64,
    shots: Sequence = (),
    progress: bool = True,
    encoded: EncodedPrompts | None = None,
) -> FixedWeightsSearch:
    """Score every point of `simplex_grid(len(members), resolution)` on `examples` (the training
    split) with the engine under `config` and the task's accuracy; the first best point wins.
    The weights are an input of one compiled decode, so the grid compiles once, and every grid
    point decodes from the same prefill of each batch (`run_strategies`). `shots`: few-shot
    examples before each question (as in `run_strategy`); `encoded`: the examples already encoded
    (`ensemble.encode`). `progress`: a bar over the batches (every grid point decodes each batch),
    off for quiet callers."""
    grid = simplex_grid(len(ensemble), resolution)
    strategies = {f"fixed {w.tolist()}": (FixedWeights(jnp.asarray(w)), config) for w in grid}
    results = run_strategies(
        strategies, ensemble, task, examples, batch_size, shots, encoded=encoded, progress=progress
    )
    accuracy = np.array([result.accuracy for result in results.values()])
    return FixedWeightsSearch(grid[int(np.argmax(accuracy))], grid, accuracy)


# ---- supervised span router ------------------------------------------------------------------


def reference_chunks(answer: str, chunk_chars: int) -> list[tuple[str, str]]:
    """(answer so far, next chunk) at every cut of `answer` into `chunk_chars`-character chunks."""
    return [
        (answer[:start], answer[start : start + chunk_chars])
        for start in range(0, len(answer), chunk_chars)
    ]


def chunk_log_probs(
    member: Member,
    prompts: Sequence[str],
    answers: Sequence[str],
    chunk_chars: int,
    batch_size: int = 16,
    progress: bool = False,
) -> list[np.ndarray]:
    """Per example, `[K]` log-probabilities the member gives the K `chunk_chars`-character chunks
    of its answer after the prompt and the chunks before: in its own tokenisation of prompt +
    answer, the summed log-probs of the tokens that start inside the chunk (a token running past a
    chunk's end counts with the chunk it starts in, so no member pays for a cut inside its token).
    NaN for a chunk where no token starts. Scored `batch_size` examples at a time (`progress`: a
    bar over the batches)."""
    out = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, f"labels ({member.name})", unit="batch", disable=not progress):
        rows = slice(start, start + batch_size)
        out += chunk_log_probs_batch(member, prompts[rows], answers[rows], chunk_chars)
    return out


def chunk_log_probs_batch(
    member: Member, prompts: Sequence[str], answers: Sequence[str], chunk_chars: int
) -> list[np.ndarray]:
    """`chunk_log_probs` of one batch."""
    bos = getattr(member.tokenizer, "bos_token", None)
    encoded = [
        member.tokenizer(
            p + a, add_special_tokens=not (bos and p.startswith(bos)), return_offsets_mapping=True
        )
        for p, a in zip(prompts, answers)
    ]
    id_lists = [e["input_ids"] for e in encoded]
    ids, mask = left_pad(id_lists, pad_id_of(member.tokenizer))
    scores = np.asarray(token_log_probs_jit(member, jnp.asarray(ids), jnp.asarray(mask)))
    out = []
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        values = np.full(-(-len(answer) // chunk_chars), np.nan)
        offset = ids.shape[1] - len(id_lists[row])
        for position, (begin, _) in enumerate(encoded[row]["offset_mapping"]):
            chunk = (begin - len(prompt)) // chunk_chars
            if position > 0 and begin >= len(prompt) and chunk < len(values):
                score = scores[row, offset + position - 1]
                values[chunk] = score if np.isnan(values[chunk]) else values[chunk] + score
        out.append(values)
    return out


token_log_probs_jit = jax.jit(token_log_probs)


def teacher_forced_labels(
    members: Sequence[Member],
    prompts: Sequence[Sequence[str]],
    answers: Sequence[str],
    chunk_chars: int,
    progress: bool = False,
) -> np.ndarray:
    """int32 `[P]` over every chunk of every answer (`reference_chunks` order): the member giving
    the chunk the highest probability (`chunk_log_probs`; `prompts[n]` are member n's own prompt
    texts); -1 where some member has no token starting in it (no fair comparison)."""
    scores = np.stack(
        [
            np.concatenate(chunk_log_probs(m, own, answers, chunk_chars, progress=progress))
            for m, own in zip(members, prompts)
        ],
        axis=1,
    )
    return np.where(
        np.isnan(scores).any(axis=1), -1, np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1)
    ).astype(np.int32)


@struct.dataclass
class UniformProbe(StatelessWeightFn):
    """Uniform weights, asking the engine for the optional features a feature set reads."""

    optional_features: tuple[str, ...] = struct.field(pytree_node=False, default=())

    def __call__(self, features, carry):
        weights = features.previous_weights
        return jnp.full_like(weights, 1.0 / weights.shape[-1]), carry


@struct.dataclass
class RouterWeightFn(StatelessWeightFn):
    """The router as an engine weight_fn: softmax of its logits on the standardised observation."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    params: nnx.State
    mean: jax.Array
    std: jax.Array
    feature_set: str = struct.field(pytree_node=False)
    optional_features: tuple[str, ...] = struct.field(pytree_node=False, default=())

    def logits(self, obs: jax.Array) -> jax.Array:
        return nnx.merge(self.graphdef, self.params)((obs - self.mean) / self.std)

    def __call__(self, features, carry):
        obs = global_observation(features, self.feature_set)
        return jax.nn.softmax(self.logits(obs), axis=-1), carry


class Router(nnx.Module):
    """tanh MLP `[B, F]` -> member logits `[B, N]`."""

    def __init__(
        self, in_dim: int, hidden_sizes: tuple[int, ...], num_members: int, *, rngs: nnx.Rngs
    ):
        self.torso = MLP(in_dim, hidden_sizes, rngs=rngs)
        self.head = nnx.Linear(hidden_sizes[-1], num_members, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.torso(x))


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    """`chunk_chars`: characters of reference answer per label; the rest sizes the MLP and fit."""

    feature_set: str = "portable"
    chunk_chars: int = 8
    hidden_sizes: tuple[int, ...] = (32,)
    learning_rate: float = 1e-2
    steps: int = 300
    seed: int = 0


def teacher_forced_previous_weights(
    labels: np.ndarray, chunks_per_answer: Sequence[int], num_members: int
) -> np.ndarray:
    """`[P, N]` the weights a router following the labels would have set before each chunk:
    uniform before an answer's first chunk and after an unlabelled one, else the previous label's
    one-hot."""
    weights = np.full((len(labels), num_members), 1.0 / num_members, np.float32)
    first = np.cumsum([0, *chunks_per_answer[:-1]])
    for index in range(len(labels)):
        if index not in first and labels[index - 1] >= 0:
            weights[index] = np.eye(num_members, dtype=np.float32)[labels[index - 1]]
    return weights


def router_dataset(
    ensemble: Ensemble,
    task,
    examples: Sequence,
    config: RouterConfig,
    shots: Sequence = (),
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Observations `[P, F]` (engine features after each member's own prompt + the reference answer
    sentence `task.target` so far) and labels `[P]` of the chunks with a label
    (`teacher_forced_labels`). The prefixes are fed in batches of `batch_size` rows (`progress`:
    a bar over the batches of each phase)."""
    members = ensemble.members
    prompts = ensemble.prompts(task, examples, shots)
    answers = [task.target(example) for example in examples]
    cuts = [reference_chunks(answer, config.chunk_chars) for answer in answers]
    prefixes = [
        [prompt + done for prompt, chunks in zip(own, cuts) for done, _ in chunks]
        for own in prompts
    ]
    features = prefix_features(ensemble, prefixes, config.feature_set, batch_size, progress)
    labels = teacher_forced_labels(members, prompts, answers, config.chunk_chars, progress)
    features = features.replace(
        previous_weights=jnp.asarray(
            teacher_forced_previous_weights(labels, [len(c) for c in cuts], len(members))
        )
    )
    observations = np.asarray(global_observation(features, config.feature_set))
    if not np.any(labels >= 0):
        raise ValueError(
            f"none of the {len(labels)} reference chunks of {len(examples)} examples "
            "has a token of every member starting in it: use a larger chunk_chars"
        )
    return observations[labels >= 0], labels[labels >= 0]


def prefix_features(
    ensemble: Ensemble,
    prefixes: Sequence[Sequence[str]],
    feature_set: str,
    batch_size: int,
    progress: bool = False,
):
    """The engine's span features at the end of every prefix (`prefixes[n]`: member n's texts,
    `[P]` each), in batches of `batch_size` rows (the last filled with repeats) → features `[P,
    ...]`. `progress`: a bar over the batches."""
    recorder = UniformProbe(engine_features(feature_set))
    config = DecodeConfig(max_new_tokens=1, span_length=1, record_features=True)
    total, parts = len(prefixes[0]), []
    starts = range(0, total, batch_size)
    for start in tqdm(starts, "router features", unit="batch", disable=not progress):
        rows = [list(own[start : start + batch_size]) for own in prefixes]
        rows = [own + own[-1:] * (batch_size - len(own)) for own in rows]
        result = decode_jit(
            ensemble,
            tokenize_for_members(ensemble.members, rows, 1),
            recorder,
            jax.random.key(0),
            jnp.float32(0.0),
            jnp.float32(1.0),
            config=config,
        )
        parts.append(jax.tree.map(lambda x: np.asarray(x[:, 0]), result.span_features))
    return jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)[:total]), *parts)


def fit_router(
    observations: np.ndarray, labels: np.ndarray, num_members: int, config: RouterConfig
) -> RouterWeightFn:
    """Full-batch Adam on the cross-entropy of `labels [P]` given standardised observations
    `[P, F]`."""
    mean, std = observations.mean(0), observations.std(0)
    std = np.where(std > 1e-6, std, 1.0)  # a feature constant in training is only centred
    router = Router(
        observations.shape[1], config.hidden_sizes, num_members, rngs=nnx.Rngs(config.seed)
    )
    graphdef, params = nnx.split(router)
    x, y = jnp.asarray((observations - mean) / std), jnp.asarray(labels)
    tx = optax.adam(config.learning_rate)

    def loss(params):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, _):
        params, opt_state = carry
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    fit = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, config.steps))
    (params, _), _ = fit(params)
    return RouterWeightFn(
        graphdef,
        params,
        jnp.asarray(mean),
        jnp.asarray(std),
        config.feature_set,
        engine_features(config.feature_set),
    )


def train_router(
    ensemble: Ensemble,
    task,
    examples: Sequence,
    config: RouterConfig = RouterConfig(),
    shots: Sequence = (),
    progress: bool = True,
) -> RouterWeightFn:
    """A supervised span router fitted on `examples` (the training split; see the module doc), each
    member reading them in its own chat format after `shots`. `progress`: bars over the batches of
    its dataset's features and labels (its minutes; the fit itself takes seconds)."""
    observations, labels = router_dataset(
        ensemble, task, examples, config, shots, progress=progress
    )
    return fit_router(observations, labels, len(ensemble), config)
