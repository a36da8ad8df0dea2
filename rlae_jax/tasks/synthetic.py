"""The embedded demo task: letter-list problems on which two members have complementary skills.

A problem applies one or two operations to short lists of letters:

    "rev c a t ="            →  " t a c"
    "up d o g ="             →  " D O G"
    "rev c a t ; up d o g =" →  " t a c ; D O G"      (and "up … ; rev …")

The *reverser* member reverses correctly but copies the letters where it should upper-case; the
*capitalizer* upper-cases correctly but copies where it should reverse. Both are confidently wrong
on the other's operation, so any fixed mixing weights get at most one part right (they prefer one
member at every token), while weights that follow the operation — member A on the `rev` part,
member B on the `up` part, switching inside two-part answers — get everything right.

Splits: a problem belongs to train, validation or test by a fixed hash of its prompt (`split_of`),
so no test prompt is ever a training prompt, whatever the splits' sizes.

Rewards: `reward` (host) and `reward_in_graph` (device, over union ids) give the fraction of target
characters reproduced at their position (length mismatches count as errors); `exact_match` is the
accuracy the demo reports.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.tasks.base import BaseTask, Example, check_disjoint

LETTERS = "abcdefghijklmnop"
OPERATIONS = ("rev", "up")
SKILLS = {  # member name → what it does for each operation
    "reverser": {"rev": lambda w: w[::-1], "up": lambda w: w},
    "capitalizer": {"rev": lambda w: w, "up": lambda w: [c.upper() for c in w]},
}
CORRECT = {"rev": lambda w: w[::-1], "up": lambda w: [c.upper() for c in w]}
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
TRAIN_SIZE = 4096  # the demo's training split


@dataclasses.dataclass(frozen=True)
class Problem:
    """Operations and their letter lists, e.g. (("rev", ("c","a","t")), ("up", ("d","o","g")))."""

    parts: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def prompt(self) -> str:
        return " ; ".join(f"{op} {' '.join(word)}" for op, word in self.parts) + " ="

    def answer(self, skills=CORRECT) -> str:
        return " ;".join(" " + " ".join(skills[op](list(word))) for op, word in self.parts)


ALL_KINDS = (("rev",), ("up",), ("rev", "up"), ("up", "rev"))


def sample_problems(
    count: int,
    seed: int,
    min_letters: int = 2,
    max_letters: int = 4,
    kinds: tuple[tuple[str, ...], ...] = ALL_KINDS,
    keep: Callable[[Problem], bool] = lambda problem: True,
) -> list[Problem]:
    """`count` problems, cycling through `kinds` (default: a quarter each of rev, up, rev;up,
    up;rev) and drawing again (same kind) while `keep` rejects a problem."""
    rng = np.random.default_rng(seed)
    problems = []
    while len(problems) < count:
        ops = kinds[len(problems) % len(kinds)]
        parts = tuple(
            (op, tuple(rng.choice(list(LETTERS), rng.integers(min_letters, max_letters + 1))))
            for op in ops
        )
        if keep(Problem(parts)):
            problems.append(Problem(parts))
    order = rng.permutation(count)
    return [problems[i] for i in order]


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, by a fixed hash of its text: 14 of 16 buckets train, one
    validation, one test — so splits never share a prompt, whatever their sizes."""
    bucket = zlib.crc32(prompt.encode()) % 16
    return "test" if bucket == 15 else "validation" if bucket == 14 else "train"


def member_corpus(skill: str, count: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, completion) training pairs for a member with the given skill
    ("reverser"/"capitalizer").

    Besides its own full answers, the member also learns to continue a two-part answer whose first
    part is *correct* (given in the prompt, not trained on) — the context it meets inside an
    ensemble when the other member wrote that part."""
    pairs = []
    for problem in sample_problems(count, seed):
        pairs.append((problem.prompt, problem.answer(SKILLS[skill])))
        if len(problem.parts) == 2:
            first, second = problem.parts
            prefix = problem.prompt + Problem((first,)).answer() + " ;"
            pairs.append((prefix, Problem((second,)).answer(SKILLS[skill])))
    return pairs


def tokenizer_corpus() -> list[str]:
    """Text covering every prompt word, letter and upper-case letter, to train the tokenizers."""
    problems = sample_problems(400, seed=99)
    return [p.prompt + p.answer() for p in problems] + [
        " ".join(LETTERS),
        " ".join(LETTERS.upper()),
    ]


@dataclasses.dataclass(frozen=True)
class SyntheticTask(BaseTask):
    """The demo task, with the dataset tasks' interface (load / render / reward / rewards)."""

    name: str = "synthetic"
    kinds: tuple[tuple[str, ...], ...] = ALL_KINDS

    def load(self, split: str, source=None, limit: int | None = None) -> list[Example]:
        """Deterministic examples of a split ('train', 'validation', 'test'; `source` is unused):
        problems whose prompt `split_of` assigns to the split, so no split shares a prompt. A split
        other than train is checked against the demo's training split (`training_prompts`)."""
        examples = self.sample(split, 256 if limit is None else limit)
        if split != "train":
            check_disjoint(self.name, split, examples, training_prompts())
        return examples

    def sample(self, split: str, count: int) -> list[Example]:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r}; synthetic splits: {', '.join(SPLIT_SEEDS)}")
        problems = sample_problems(
            count,
            seed=1000 + SPLIT_SEEDS[split],
            kinds=self.kinds,
            keep=lambda problem: split_of(problem.prompt) == split,
        )
        return [
            Example(
                id=f"{self.name}/{split}/{i}",
                prompt=p.prompt,
                answer=p.answer(),
                aliases=(p.answer(),),
            )
            for i, p in enumerate(problems)
        ]

    def render(
        self, example: Example, tokenizer=None, shots: Sequence[Example] = (), formatter=None
    ) -> str:
        """The bare prompt for every member: the demo members are small LMs trained on it, with no
        chat format."""
        return example.prompt

    def reward(self, completion: str, example: Example) -> float:
        return char_accuracy(completion.encode(), example.answer.encode())

    def exact_match(self, completion: str, example: Example) -> float:
        return float(completion == example.answer)


@functools.lru_cache(maxsize=1)
def training_prompts() -> frozenset[str]:
    """Prompts of the demo's training split: `TRAIN_SIZE` problems of every kind."""
    return frozenset(e.prompt for e in SyntheticTask().sample("train", TRAIN_SIZE))


def char_accuracy(generated: bytes, target: bytes) -> float:
    """Fraction of positions of the longer string where both have the same byte."""
    longest = max(len(generated), len(target), 1)
    return sum(a == b for a, b in zip(generated, target)) / longest


def target_bytes(examples: Sequence[Example], length: int) -> np.ndarray:
    """Targets as int32 `[B, length]` byte arrays, padded with -1."""
    out = np.full((len(examples), length), -1, np.int32)
    for row, example in enumerate(examples):
        data = example.answer.encode()[:length]
        out[row, : len(data)] = list(data)
    return out


def generated_bytes(
    union_ids: jax.Array, byte_table: jax.Array, byte_lengths: jax.Array, length: int
) -> tuple[jax.Array, jax.Array]:
    """Bytes spelled by union ids `[B, T]` (negative ids = nothing): the first `length` as int32
    `[B, length]` padded with -2, and the full byte count `[B]`.

    byte_table: int32 `[U, Lb]` bytes of every union token; byte_lengths: int32 `[U]`.
    """
    ids = jnp.maximum(union_ids, 0)
    lengths = jnp.where(union_ids >= 0, byte_lengths[ids], 0)  # [B, T]
    starts = jnp.cumsum(lengths, axis=1) - lengths
    within = jnp.arange(byte_table.shape[1])
    positions = starts[..., None] + within  # [B, T, Lb]
    # out of range → dropped
    positions = jnp.where(within < lengths[..., None], positions, length)
    values = byte_table[ids]  # [B, T, Lb]
    rows = jnp.arange(union_ids.shape[0])[:, None, None]
    out = jnp.full((union_ids.shape[0], length), -2, jnp.int32)
    return out.at[rows, positions].set(values, mode="drop"), lengths.sum(axis=1)


def reward_in_graph(
    union_ids: jax.Array, targets: jax.Array, byte_table: jax.Array, byte_lengths: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Device rewards of generated union ids `[B, T]` against `targets [B, Lt]` (from
    `target_bytes`).
    Returns (char accuracy `[B]`, exact match `[B]`), both float32, equal to the host versions."""
    generated, generated_len = generated_bytes(
        union_ids, byte_table, byte_lengths, targets.shape[1]
    )
    target_len = jnp.sum(targets >= 0, axis=1)
    matches = jnp.sum((generated == targets) & (targets >= 0), axis=1)
    longest = jnp.maximum(jnp.maximum(target_len, generated_len), 1)
    exact = (matches == target_len) & (generated_len == target_len)
    return matches / longest, exact.astype(jnp.float32)


SYNTHETIC = SyntheticTask()
# A shifted task for cross-task transfer: only two-part problems, where a member switch is required.
SYNTHETIC_TWO_PART = SyntheticTask(name="synthetic_two_part", kinds=ALL_KINDS[2:])
# one operation each: a family only one demo member solves (the study's positive control)
SYNTHETIC_REVERSE = SyntheticTask(name="synthetic_reverse", kinds=ALL_KINDS[:1])
SYNTHETIC_CAPITALIZE = SyntheticTask(name="synthetic_capitalize", kinds=ALL_KINDS[1:2])
