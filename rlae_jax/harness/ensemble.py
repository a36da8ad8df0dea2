"""What the harness backend serves — members, their alignment and a weight_fn (a named strategy or a
trained RLAE agent) — and the compiled calls it makes: the engine's `decode_growing` (a compiled
prefill and loop; caches grow only when a member needs room) for generation and for a strategy's
first-span weights, and `scoring.continuation_scores` for log-likelihoods. Every batch is padded to
`max_batch` rows and each member's prompts to their power-of-two length bucket, so the compiles are
bounded by the buckets met: a prefill and a loop per bucket (and per cache growth, and per distinct
`max_gen_toks`: a harness task has one) for generation, one program per bucket and member for
scoring (`compile_count` counts them)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.align import Alignment, build_alignment
from rlae_jax.engine import DecodeConfig, PromptBatch, batch_of_token_lists, to_host
from rlae_jax.engine.loop import decode_growing, prefill_jit, run_jit
from rlae_jax.engine.strategies import FixedWeights, Selection, resolve_strategy
from rlae_jax.harness.scoring import continuation_scores
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


SCORE = CountingJit(continuation_scores)  # shared by every backend: same members, same programs


def compiles_so_far() -> int:
    """Programs compiled in this process by the harness's scoring and the engine's prefill and
    loop (`jax.clear_caches` empties the engine's counts)."""
    return SCORE.traces + prefill_jit._cache_size() + run_jit._cache_size()


LOADED: dict[tuple[str, str], Member] = {}


def load_members(specs: Sequence[Any], dtype: str = "float32") -> list[Member]:
    """Members from Member objects, local paths (HF folder, .gguf) or names `from_pretrained` knows.
    Loaded members are kept for the process (`LOADED`): a compiled program is keyed on a member's
    tokenizer object, so models built again on the same members reuse the programs already
    compiled."""
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
    return members


def load_agent(workdir: str | pathlib.Path, members: Sequence[Member]) -> tuple[Any, DecodeConfig]:
    """A trained RLAE agent (the newest checkpoint of a `launch.train` / demo run folder) as a
    deterministic weight_fn (its mean weights), with the run's decode settings. `load_agent_state`
    decides which members it may serve (those it was trained with, or others where its features
    transfer)."""
    from rlae_jax.rl.rollout import policy_weight_fn
    from rlae_jax.rl.trainer import RLConfig, load_agent_state

    path = pathlib.Path(workdir)
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
    return policy_weight_fn(state, setup, jax.random.key(0), deterministic=True), setup.decode


@dataclasses.dataclass
class HarnessEnsemble:
    """Members (one or more), their alignment, the weight_fn and selection, and decode settings.
    `static_weights [N]`: the weights when they never depend on the input (uniform, fixed, single,
    top-k), else None (threshold, PackLLM, an agent)."""

    members: list[Member]
    alignment: Alignment
    weight_fn: Any
    selection: Selection
    span_length: int
    expansion_budget: int
    max_batch: int
    seed: int = 0

    def __post_init__(self):
        self.compiles_before = compiles_so_far()

    @classmethod
    def build(
        cls,
        members: Sequence[Member],
        strategy: str | None = None,
        weights=None,
        checkpoint=None,
        max_batch: int = 8,
        span_length: int = 1,
        expansion_budget: int = 2,
        seed: int = 0,
        **strategy_options,
    ) -> "HarnessEnsemble":
        """From members and a strategy name of `rlae_jax.engine.generate` (default: "uniform"; with
        one member, that member alone) or an agent `checkpoint` folder (then no strategy)."""
        members = list(members)
        alignment = build_alignment(
            [m.tokenizer for m in members], vocab_sizes=[m.config.vocab_size for m in members]
        )
        if checkpoint:
            if strategy is not None:
                raise ValueError(
                    f"give either a strategy ({strategy!r}) or an agent checkpoint, not both"
                )
            weight_fn, run_decode = load_agent(checkpoint, members)
            return cls(
                members,
                alignment,
                weight_fn,
                Selection(),
                run_decode.span_length,
                run_decode.expansion_budget,
                max_batch,
                seed,
            )
        weight_fn, selection = resolve_strategy(
            strategy or "uniform", len(members), weights, **strategy_options
        )
        return cls(
            members, alignment, weight_fn, selection, span_length, expansion_budget, max_batch, seed
        )

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
            selection=self.selection,
            expansion_budget=self.expansion_budget,
            record_features=False,
        )

    def prompt_batch(
        self, token_lists: Sequence[Sequence[list[int]]], max_new_tokens: int
    ) -> PromptBatch:
        """`token_lists[n][b]`: member n's prompt ids of row b (≤ max_batch rows) → a PromptBatch
        padded to `max_batch` rows (repeating the last) and each member's length bucket."""
        padded = [list(rows) + [rows[-1]] * (self.max_batch - len(rows)) for rows in token_lists]
        return batch_of_token_lists(self.members, padded, max_new_tokens)

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
            self.members,
            self.alignment,
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
        return to_host(result, self.alignment, config).texts[:rows]

    def first_span_weights(self, token_lists: Sequence[Sequence[list[int]]]) -> np.ndarray:
        """The weights `[R, N]` the strategy picks for its first span after each of R contexts
        (member n's ids `token_lists[n][r]`): static weights broadcast, else one compiled one-token
        decode."""
        rows = len(token_lists[0])
        if self.static_weights is not None:
            return np.broadcast_to(self.static_weights, (rows, len(self.members))).astype(
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
