"""What the harness backend serves — one `Ensemble` (members, their alignment, prompt formats) and a
weight_fn (a named strategy or a trained RLAE agent) — and the compiled calls it makes: the
engine's `decode_growing` (a compiled prefill and loop; caches grow only when a member needs room)
for generation and for a strategy's first-span weights, `mixture.token_mixture_scores` for an
ensemble's log-likelihoods and `scoring.continuation_scores` for a member's. Every batch is padded
to `max_batch` rows and each member's prompts to their power-of-two length bucket, so the compiles
are bounded by the buckets met: a prefill and a loop per bucket (and per cache growth, and per
distinct `max_gen_toks`: a harness task has one) for generation, one program per context bucket,
continuation bucket and cache room for an ensemble's scoring, one per bucket and member for a
member's (`compile_count` counts them)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.engine import DecodeConfig, PromptBatch, batch_of_token_lists, to_host
from rlae_jax.engine.loop import DecodeContext, decode_growing, prefill_jit, run_jit
from rlae_jax.engine.state import Sampling
from rlae_jax.engine.strategies import FixedWeights, resolve_strategy
from rlae_jax.ensemble import Ensemble
from rlae_jax.harness.mixture import fed_tokens, spell, token_mixture_scores
from rlae_jax.harness.scoring import check_scorable, continuation_scores
from rlae_jax.models.prompts import bucket_length
from rlae_jax.runtime.compile_options import decode_loop_options
from rlae_jax.models import Member, from_pretrained


class CountingJit:
    """`jax.jit(fn, **options)` that counts its traces: one per new input signature, i.e. per
    compile (a hit in jax's persistent cache still traces first)."""

    def __init__(self, fn, **options):
        self.traces = 0

        def traced(*args, **kwargs):
            self.traces += 1
            return fn(*args, **kwargs)

        self.compiled = jax.jit(traced, **options)

    def __call__(self, *args, **kwargs):
        return self.compiled(*args, **kwargs)


# shared by every backend: same members, same programs
SCORE = CountingJit(continuation_scores)
TOKEN_SCORE = CountingJit(
    token_mixture_scores,
    static_argnames=("cache_lengths",),
    compiler_options=decode_loop_options(),
)


def compiles_so_far() -> int:
    """Programs compiled in this process by the harness's scoring and the engine's prefill and
    loop (`jax.clear_caches` empties the engine's counts)."""
    return SCORE.traces + TOKEN_SCORE.traces + prefill_jit._cache_size() + run_jit._cache_size()


LOADED: dict[tuple[str, str], Member] = {}


def load_ensemble(specs: Sequence[Any], dtype: str = "float32") -> Ensemble:
    """The Ensemble of Member objects, local paths (HF folder, .gguf) or names `from_pretrained`
    knows, its alignment built or loaded from its cache (`Ensemble`). Loaded members are kept for
    the process (`LOADED`): a compiled program is keyed on a member's tokenizer object, so models
    built again on the same members reuse the programs already compiled."""
    if not specs:
        raise ValueError("no members given: pass members=PATH_OR_PRESET|PATH_OR_PRESET")
    members = []
    for spec in specs:
        if not isinstance(spec, Member):
            key = (str(spec), str(dtype))
            if key not in LOADED:
                LOADED[key] = from_pretrained(str(spec), dtype=dtype)
            spec = LOADED[key]
        members.append(spec)
    return Ensemble(members)


def load_agent(workdir: str | pathlib.Path, ensemble: Ensemble) -> tuple[Any, DecodeConfig]:
    """A trained RLAE agent (the newest checkpoint of a `launch.train` / demo run folder) as a
    deterministic weight_fn (its mean weights), with the run's decode settings. `load_agent_state`
    decides which members it may serve (those it was trained with, or others where its features
    transfer)."""
    from rlae_jax.rl.rollout import policy_weight_fn
    from rlae_jax.rl.trainer import RLConfig, load_agent_state

    members, path = ensemble.members, pathlib.Path(workdir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not an RLAE training run folder")
    saved = json.loads((path / "config.json").read_text())
    if len(saved["members"]) != len(members):
        raise ValueError(
            f"the agent in {path} was trained with {len(saved['members'])} members, "
            f"{len(members)} were given"
        )
    config = RLConfig.from_dict(saved["rl"])
    state = load_agent_state(path, config, members)
    setup = config.setup(members)
    weight_fn = policy_weight_fn(state, setup, jax.random.key(0), evaluation=True)
    return weight_fn, setup.evaluation_decode


@dataclasses.dataclass
class HarnessEnsemble:
    """An Ensemble (one member or more), the weight_fn (with its selection) and decode settings.
    `static_weights [N]`: the weights when they never depend on the input (uniform, fixed, single,
    top-k), else None (threshold, PackLLM, an agent)."""

    ensemble: Ensemble
    weight_fn: Any
    span_length: int
    expansion_budget: int
    max_batch: int
    seed: int = 0

    def __post_init__(self):
        self.compiles_before = compiles_so_far()

    @classmethod
    def build(
        cls,
        ensemble: Ensemble,
        strategy: str | None = None,
        weights=None,
        checkpoint=None,
        max_batch: int = 8,
        span_length: int = 1,
        expansion_budget: int = 2,
        seed: int = 0,
        **strategy_options,
    ) -> "HarnessEnsemble":
        """From an Ensemble and a strategy name of `rlae_jax.engine.generate` (default: "uniform";
        with one member, that member alone) or an agent `checkpoint` folder (then no strategy)."""
        if checkpoint:
            if strategy is not None:
                raise ValueError(
                    f"give either a strategy ({strategy!r}) or an agent checkpoint, not both"
                )
            weight_fn, run_decode = load_agent(checkpoint, ensemble)
            span_length, expansion_budget = run_decode.span_length, run_decode.expansion_budget
        else:
            weight_fn = resolve_strategy(
                strategy or "uniform", len(ensemble), weights, **strategy_options
            )
        return cls(ensemble, weight_fn, span_length, expansion_budget, max_batch, seed)

    @property
    def static_weights(self) -> np.ndarray | None:
        return (
            np.asarray(self.weight_fn.weights) if isinstance(self.weight_fn, FixedWeights) else None
        )

    @property
    def compile_count(self) -> int:
        """Programs compiled since this ensemble was built (`compiles_so_far`): one per new
        shape."""
        return compiles_so_far() - self.compiles_before

    def decode_config(self, max_new_tokens: int) -> DecodeConfig:
        return DecodeConfig(
            max_new_tokens=max_new_tokens,
            span_length=self.span_length,
            expansion_budget=self.expansion_budget,
            record_features=False,
        )

    def prompt_batch(
        self, token_lists: Sequence[Sequence[list[int]]], max_new_tokens: int
    ) -> PromptBatch:
        """`token_lists[n][b]`: member n's prompt ids of row b (≤ max_batch rows) → a PromptBatch
        padded to `max_batch` rows (repeating the last) and each member's length bucket."""
        padded = [list(rows) + [rows[-1]] * (self.max_batch - len(rows)) for rows in token_lists]
        return batch_of_token_lists(self.ensemble.members, padded, max_new_tokens)

    def run_decode(
        self,
        batch: PromptBatch,
        config: DecodeConfig,
        temperature: float = 0.0,
        top_p: float = 1.0,
        key_index: int = 0,
    ):
        """One compiled decode of a padded batch, sampling (if at all) with key (seed,
        key_index)."""
        key = jax.random.fold_in(jax.random.key(self.seed), key_index)
        return decode_growing(
            self.ensemble,
            batch,
            self.weight_fn,
            key,
            jnp.float32(temperature),
            jnp.float32(top_p),
            config=config,
        )

    def generate(
        self,
        token_lists: Sequence[Sequence[list[int]]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        key_index: int = 0,
    ) -> list[str]:
        """Texts (special tokens dropped) generated for ≤ max_batch rows of each member's prompt
        ids; sampling draws with key (seed, key_index)."""
        rows = len(token_lists[0])
        config = self.decode_config(max_new_tokens)
        result = self.run_decode(
            self.prompt_batch(token_lists, max_new_tokens), config, temperature, top_p, key_index
        )
        return to_host(result, self.ensemble.alignment, config).texts[:rows]

    def first_span_weights(self, token_lists: Sequence[Sequence[list[int]]]) -> np.ndarray:
        """The weights `[R, N]` the strategy picks for its first span after each of R contexts
        (member n's ids `token_lists[n][r]`): static weights broadcast, else one compiled one-token
        decode."""
        rows = len(token_lists[0])
        if self.static_weights is not None:
            return np.broadcast_to(self.static_weights, (rows, len(self.ensemble))).astype(
                np.float64
            )
        config = dataclasses.replace(self.decode_config(1), span_length=1)
        out = []
        for start in range(0, rows, self.max_batch):
            chunk = [lists[start : start + self.max_batch] for lists in token_lists]
            result = self.run_decode(self.prompt_batch(chunk, 1), config)
            out.append(np.asarray(result.span_weights[: len(chunk[0]), 0], np.float64))
        weights = np.concatenate(out)
        return weights / weights.sum(axis=1, keepdims=True)

    def token_loglikelihoods(
        self, pairs: Sequence[Sequence[tuple[list[int], list[int]]]], max_lengths: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The token-level mixture's log-probs and greedy flags `[R]` (`mixture`) of R requests:
        `pairs[n][r]` member n's (context ids, continuation ids) of request r, batched `max_batch`
        at a time in order of context length. `max_lengths[n]`: positions member n may use (its
        context plus the tokens every member's spelling would feed it)."""
        count, alignment = len(pairs[0]), self.ensemble.alignment
        spellings = [spell(alignment, [p[r][1] for p in pairs]) for r in range(count)]
        for n, member in enumerate(self.ensemble.members):
            for r in range(count):
                fed = max(int(fed_tokens(alignment, s)[n]) for s in spellings[r])
                check_scorable(member.name, r, *map(len, pairs[n][r]), fed, max_lengths[n])
        order = sorted(range(count), key=lambda r: [len(p[r][0]) for p in pairs])
        log_probs, greedy = np.zeros(count, np.float64), np.zeros(count, bool)
        for start in range(0, count, self.max_batch):
            chunk = order[start : start + self.max_batch]
            log_probs[chunk], greedy[chunk] = self.score_tokens(
                [[p[r][0] for r in chunk] for p in pairs], [spellings[r] for r in chunk]
            )
        return log_probs, greedy

    def score_tokens(
        self, contexts: Sequence[Sequence[list[int]]], spellings: Sequence[Sequence[list[int]]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One compiled `token_mixture_scores` of ≤ max_batch rows (`contexts[n][b]`: member n's
        context ids; `spellings[b][n]`: the continuation in union ids as member n spells it), padded
        to `max_batch` rows, the spellings to a power-of-two width and each member's cache room to
        one. → (log-probs, greedy flags) of the rows."""
        rows, members = len(spellings), len(self.ensemble)
        spellings = list(spellings) + [spellings[-1]] * (self.max_batch - rows)
        width = bucket_length(max(len(s) for row in spellings for s in row), 8)
        table = np.zeros((self.max_batch, members, width), np.int32)
        lengths = np.array([[len(s) for s in row] for row in spellings], np.int32)
        for b, row in enumerate(spellings):
            for n, union_ids in enumerate(row):
                table[b, n, : len(union_ids)] = union_ids
        alignment = self.ensemble.alignment
        fed = np.max([fed_tokens(alignment, s) for row in spellings for s in row], axis=0)
        prompts = self.prompt_batch(contexts, 0)
        cache_lengths = tuple(
            ids.shape[1] + bucket_length(int(f), 8) for ids, f in zip(prompts.input_ids, fed)
        )
        sampling = Sampling(jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0))  # unused
        context = DecodeContext.start(
            self.ensemble, self.weight_fn, sampling, self.decode_config(width)
        )
        log_probs, greedy = TOKEN_SCORE(
            context, prompts, jnp.asarray(table), jnp.asarray(lengths), cache_lengths=cache_lengths
        )
        return np.asarray(log_probs)[:rows], np.asarray(greedy)[:rows]
