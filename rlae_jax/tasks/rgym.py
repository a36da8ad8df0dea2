"""reasoning-gym datasets as tasks: procedural problems with their own verifiers.

`reasoning_gym_task(name, **config)` wraps any dataset of `reasoning_gym.create_dataset(name,
size=, seed=, **config)`; `get_task("rg/<name>")` gives its default config, `"rg/<name>:easy"` the
EASY preset (sized for 100M-class members), `'rg/<name>:{"max_terms": 2}'` a JSON config and
`'rg/<name>:easy{"train_size": 8000}'` the preset with fields changed, and
`'rg/<name>:{"answer_format": "bare"}'` answers without the closing sentence (ANSWER_FORMATS).

Splits: item i of a split is generated from seed `seed + SPLIT_INDEX[split] * SEED_STRIDE + i`
(reasoning-gym seeds item i with `seed + i`), so the splits' random streams never meet. Small
problem spaces still repeat questions, so a split other than train keeps only the problems whose
question is not among the `train_size` training problems, and is then checked like every task.

Reward: `rewards.extract_answer` takes the completion's answer text; it scores 1.0 when the
dataset's `score_answer` gives it full credit (partial credit scores 0), or, for an answer that is a
single number, when `math_verify` finds the answer text's first number (or LaTeX expression)
equal to it ("1,000" = "1000", "1/2" = "0.5", "−3 degrees" = "-3").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import threading
import warnings
from typing import Any, Mapping

from rlae_jax.tasks.base import BaseTask, Example, check_disjoint
from rlae_jax.tasks.rewards import NUMBER, extract_answer

INSTRUCTION = 'Finish with "The answer is X." where X is the answer.'
# answer format → the instruction after the question; "bare": a worked example's answer is the
# answer alone, so a base member's next tokens after "Answer:" are the answer, scored on its first
# line (the plain format's continuation runs on into new questions)
ANSWER_FORMATS = {"sentence": INSTRUCTION, "bare": "Reply with only the answer."}
SPLIT_INDEX = {"train": 0, "validation": 1, "test": 2}
SEED_STRIDE = 10**9
# reasoning-gym 0.1.25 datasets whose problems change with Python's hash seed even after
# `with_sorted_sets` (found by generating every dataset under two PYTHONHASHSEED values)
HASH_SEEDED = frozenset({"knight_swap", "polynomial_multiplication", "word_ladder"})
NUMERIC_ANSWER = re.compile(r"[-−]?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?")
FRACTION = re.compile(r"(?<![\w.])[-−]?\d+\s*/\s*\d+(?![\d.])")
EASY = {  # configs a 100M-class instruct model can answer in a few tokens
    "basic_arithmetic": dict(
        min_terms=2,
        max_terms=2,
        min_digits=1,
        max_digits=2,
        operators=("+", "-"),
        allow_parentheses=False,
        allow_negation=False,
    ),
    "chain_sum": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2),
    "products": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2),
    "gcd": dict(max_value=100),
    "leg_counting": dict(min_animals=1, max_animals=2, max_instances=3),
    "letter_counting": dict(min_words=3, max_words=5),
    "spell_backward": dict(min_word_len=3, max_word_len=5),
    "gsm_symbolic": {},
}


def require(module: str):
    """Import an optional package of the `tasks` extra, or ImportError naming the pip command."""
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"reasoning-gym tasks need `{module}`: pip install 'rlae_jax[tasks]' "
            "(or pip install reasoning-gym math-verify)"
        ) from None


@dataclasses.dataclass(frozen=True)
class ReasoningGymTask(BaseTask):
    """A reasoning-gym dataset. `config`: the dataset's config fields as (key, value) pairs;
    `train_size`: problems in the training split (other splits exclude all of them);
    `test_size`: default size of other splits; `system`: optional system message;
    `answer_format`: a key of ANSWER_FORMATS."""

    dataset: str = ""
    config: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    train_size: int = 5000
    test_size: int = 1000
    system: str | None = None
    answer_format: str = "sentence"

    def __post_init__(self):
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"unknown answer_format {self.answer_format!r}; known: {', '.join(ANSWER_FORMATS)}"
            )

    def system_prompt(self) -> str | None:
        return self.system

    def generator(self, split: str, size: int):
        """The reasoning-gym dataset object of `split` (items 0..size-1)."""
        if split not in SPLIT_INDEX:
            raise ValueError(
                f"unknown split {split!r}; {self.name} splits: {', '.join(SPLIT_INDEX)}"
            )
        if size > SEED_STRIDE:
            raise ValueError(f"{self.name}: {size} items exceed the seed stride {SEED_STRIDE}")
        return with_sorted_sets(
            require("reasoning_gym").create_dataset(
                self.dataset,
                size=size,
                seed=self.seed + SPLIT_INDEX[split] * SEED_STRIDE,
                **dict(self.config),
            )
        )

    def example(self, split: str, index: int, entry: Mapping[str, Any]) -> Example:
        return Example(
            id=f"{self.name}/{split}/{index}",
            prompt=f"{entry['question'].strip()}\n{ANSWER_FORMATS[self.answer_format]}",
            answer=str(entry["answer"]),
            aliases=(str(entry["answer"]),),
            entry=entry,
        )

    def load(self, split: str, source=None, limit: int | None = None) -> list[Example]:
        """`limit` problems of `split` (default: train_size for train, else test_size)."""
        if source is not None:
            raise ValueError(f"{self.name} generates its problems; source must be None")
        count = (
            limit if limit is not None else self.train_size if split == "train" else self.test_size
        )
        if count == 0 and split in SPLIT_INDEX:  # no worked examples, say
            return []
        if split == "train":
            if count > self.train_size:
                raise ValueError(
                    f"{self.name}: the training split has {self.train_size} problems, "
                    f"{count} were asked for; raise train_size"
                )
            return [self.example(split, i, e) for i, e in enumerate(self.generator(split, count))]
        training = [
            self.example("train", i, e)
            for i, e in enumerate(self.generator("train", self.train_size))
        ]
        examples = self.held_out(split, count, {" ".join(e.prompt.split()) for e in training})
        check_disjoint(self.name, split, examples, (e.prompt for e in training))
        return examples

    def held_out(self, split: str, count: int, training: set[str]) -> list[Example]:
        """The first `count` problems of `split` whose prompt is not in `training`."""
        draws = 10 * count + 1000
        examples = []
        for index, entry in enumerate(self.generator(split, draws)):
            example = self.example(split, index, entry)
            if " ".join(example.prompt.split()) not in training:
                examples.append(example)
                if len(examples) == count:
                    return examples
        raise ValueError(
            f"{self.name}: only {len(examples)} of {draws} {split} problems are not in the "
            f"{self.train_size}-problem training split, {count} were asked for; the config's "
            "problem space is too small: lower train_size or widen the config"
        )

    def target(self, example: Example) -> str:
        return example.answer if self.answer_format == "bare" else super().target(example)

    def answer_of(self, completion: str) -> str | None:
        """The answer text `reward` scores: `extract_answer` of the completion (of its first
        non-blank line in the "bare" format)."""
        if self.answer_format == "bare":
            completion = next((line for line in completion.splitlines() if line.strip()), "")
        return extract_answer(completion)

    def reward(self, completion: str, example: Example) -> float:
        answer = self.answer_of(completion)
        if answer is None:
            return 0.0
        if scorer(self.dataset, self.config)(answer, example.entry) >= 1.0:
            return 1.0
        return float(same_number(example.answer, answer))


class SortedSet(set):
    """A set that iterates in sorted order, and whose differences, unions and intersections are
    SortedSets: `rng.choice(list(s))` then draws the same element under every PYTHONHASHSEED."""

    def __iter__(self):
        return iter(sorted(set.__iter__(self)))

    def __sub__(self, other):
        return SortedSet(set.__sub__(self, other))

    def __or__(self, other):
        return SortedSet(set.__or__(self, other))

    def __and__(self, other):
        return SortedSet(set.__and__(self, other))


def with_sorted_sets(dataset):
    """`dataset` with each set-of-strings attribute made a SortedSet. Why: some generators draw from
    such a set (ransom_note: `rng.choice(list(self.letters))`), whose order — and so the problems —
    changes with Python's per-process hash seed."""
    for key, value in vars(dataset).items():
        if isinstance(value, (set, frozenset)) and all(isinstance(v, str) for v in value):
            setattr(dataset, key, SortedSet(value))
    return dataset


@functools.lru_cache(maxsize=64)
def scorer(dataset: str, config: tuple[tuple[str, Any], ...]):
    """The `score_answer(answer, entry) -> float` of `dataset` under `config`."""
    reasoning_gym = require("reasoning_gym")
    return reasoning_gym.create_dataset(dataset, size=1, seed=0, **dict(config)).score_answer


def same_number(answer: str, predicted: str) -> bool:
    """Whether `answer` is a single number (integer, decimal or fraction) and `math_verify` finds
    the first number (or `$...$`/`\\\\`-LaTeX expression) of `predicted` equal to it."""
    if not NUMERIC_ANSWER.fullmatch(answer.strip()):
        return False
    predicted = predicted.replace("−", "-")
    if "\\" not in predicted:  # not LaTeX: its first fraction or number, without "$" and commas
        matches = [m for m in (FRACTION.search(predicted), NUMBER.search(predicted)) if m]
        if not matches:
            return False
        match = min(matches, key=lambda m: (m.start(), -len(m.group(0))))
        predicted = match.group(0).replace("$", "").replace(",", "")
    math_verify = require("math_verify")
    # math-verify's timeouts use signal.alarm, which works only in the main thread
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = math_verify.parse(answer.replace("−", "-"), parsing_timeout=timeout)
    guess = math_verify.parse(predicted, parsing_timeout=timeout)
    return bool(gold and guess and math_verify.verify(gold, guess, timeout_seconds=timeout))


def reasoning_gym_task(dataset: str, name: str | None = None, **config) -> ReasoningGymTask:
    """A task over `reasoning_gym.create_dataset(dataset, **config)`; task fields (seed, train_size,
    test_size, system) may be passed too. Unknown datasets raise ValueError naming the known
    ones."""
    known = require("reasoning_gym").factory.DATASETS
    if dataset not in known:
        raise ValueError(
            f"unknown reasoning-gym dataset {dataset!r}; known: {', '.join(sorted(known))}"
        )
    if dataset in HASH_SEEDED and os.environ.get("PYTHONHASHSEED", "random") == "random":
        warnings.warn(
            f"reasoning-gym's {dataset} problems change from process to process unless "
            "PYTHONHASHSEED is set (e.g. PYTHONHASHSEED=0)",
            stacklevel=2,
        )
    fields = {f.name for f in dataclasses.fields(ReasoningGymTask)} - {"name", "dataset", "config"}
    task_fields = {key: config.pop(key) for key in list(config) if key in fields}
    config = {
        key: tuple(value) if isinstance(value, list) else value for key, value in config.items()
    }
    return ReasoningGymTask(
        name=name or f"rg/{dataset}",
        dataset=dataset,
        config=tuple(sorted(config.items())),
        **task_fields,
    )


def task_from_spec(spec: str) -> ReasoningGymTask:
    """`rg/<dataset>` (default config), `rg/<dataset>:easy` (the EASY preset),
    `rg/<dataset>:<JSON object>` (config and task fields) or `rg/<dataset>:easy<JSON object>` (the
    preset with those fields changed), e.g. 'rg/chain_sum:easy{"train_size": 8000}'."""
    dataset, _, config = spec.removeprefix("rg/").partition(":")
    fields = {}
    if config.startswith("easy"):
        if dataset not in EASY:
            raise ValueError(f"no easy preset for {dataset!r}; presets: {', '.join(sorted(EASY))}")
        fields, config = dict(EASY[dataset]), config.removeprefix("easy")
    try:
        changes = json.loads(config) if config else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{spec!r}: the config after ':' is not JSON ({err.msg})") from None
    if not isinstance(changes, dict):
        raise ValueError(f"{spec!r}: the config after ':' must be a JSON object")
    return reasoning_gym_task(dataset, name=spec, **{**fields, **changes})
