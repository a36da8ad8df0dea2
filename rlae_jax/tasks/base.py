"""The common task interface: `Example`, `BaseTask` (load / messages / render / reward), the split
overlap check, and `Task` (hub or JSONL datasets) with JSONL reading and validation.

A task reads rows either from the Hugging Face hub (the optional `datasets` package) or from a local
JSONL file; hub rows are first converted to the task's JSONL schema, so both sources go through the
same validation. Every schema allows an optional string "id" (default: "<task>/<split>/<row>").
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from rlae_jax.models.prompts import chat_prompt


@dataclasses.dataclass(frozen=True)
class Example:
    """One task item. `prompt`: the question rendered as text (no chat template); `answer`:
    canonical answer (a number for GSM8K, a letter for multiple choice, the first alias for QA);
    `aliases`: every accepted answer, `answer` included; `choices`: option texts (multiple choice
    only); `entry`: the generator's item a verifier scores against (reasoning-gym only; not
    compared)."""

    id: str
    prompt: str
    answer: str
    aliases: tuple[str, ...]
    choices: tuple[str, ...] = ()
    entry: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)


def require(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """`record[key]`; ValueError when it is missing or not of `kind` (bool is never an int)."""
    if key not in record:
        raise ValueError(f"missing field {key!r}")
    value, kinds = record[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ValueError(
            f"field {key!r} must be {expected}, got {type(value).__name__} {value!r:.60}"
        )
    return value


def require_strings(record: Mapping[str, Any], key: str, minimum: int) -> tuple[str, ...]:
    """`record[key]` as a tuple of ≥ `minimum` non-empty strings, else ValueError."""
    values = require(record, key, list)
    if len(values) < minimum or not all(isinstance(v, str) and v.strip() for v in values):
        raise ValueError(
            f"field {key!r} must be a list of at least {minimum} non-empty strings, "
            f"got {values!r:.80}"
        )
    return tuple(values)


def read_jsonl(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) per non-blank line; ValueError on bad JSON or a non-object."""
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{line_number}: invalid JSON: {err.msg} (column {err.colno})"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}"
                )
            yield line_number, record


def hub_rows(path: str, config: str | None, split: str) -> Iterable[Mapping[str, Any]]:
    """Rows of a Hugging Face hub dataset split (needs the optional `datasets` and a network)."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"reading {path!r} from the Hugging Face hub needs the `datasets` package: "
            "`pip install datasets`, "
            "or pass source=<local JSONL file> (schemas in rlae_jax/tasks/README.md)"
        ) from None
    return datasets.load_dataset(path, config, split=split)


@dataclasses.dataclass(frozen=True)
class BaseTask:
    """What every task offers: `load` a split, the question as chat `messages`, a rendered prompt
    and 0/1 rewards. Subclasses define `load` and `reward`."""

    name: str

    def load(
        self, split: str, source: str | os.PathLike | None = None, limit: int | None = None
    ) -> list[Example]:
        """Examples of `split` (at most `limit`), checked against the training split."""
        raise NotImplementedError

    def reward(self, completion: str, example: Example) -> float:
        """1.0 when `completion` answers `example` correctly, else 0.0."""
        raise NotImplementedError

    def system_prompt(self) -> str | None:
        """The system message every conversation starts with, if any."""
        return None

    def target(self, example: Example) -> str:
        """The answer sentence a correct completion may end with (used for few-shot turns)."""
        return f"The answer is {example.answer}."

    def messages(self, example: Example, shots: Sequence[Example] = ()) -> list[dict[str, str]]:
        """The conversation for `example`: the system prompt (if any), each shot as a user turn and
        an assistant turn (its `target`), then the question as the last user turn."""
        system = self.system_prompt()
        messages = [{"role": "system", "content": system}] if system else []
        for shot in shots:
            messages += [
                {"role": "user", "content": shot.prompt},
                {"role": "assistant", "content": self.target(shot)},
            ]
        return messages + [{"role": "user", "content": example.prompt}]

    def render(
        self,
        example: Example,
        tokenizer=None,
        shots: Sequence[Example] = (),
        formatter: Callable[[list[dict[str, str]]], str] | None = None,
    ) -> str:
        """Model input text of `messages(example, shots)`: through `formatter` (e.g. a member's own
        chat formatting) when given, else `models.prompts.chat_prompt` with `tokenizer` (its chat
        template if it has one, else the plain format)."""
        messages = self.messages(example, shots)
        return formatter(messages) if formatter else chat_prompt(messages, tokenizer)

    def rewards(self, completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
        """Rewards of a batch, float32 `[B]`."""
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        return np.array([self.reward(c, e) for c, e in zip(completions, examples)], np.float32)


def accuracy_of(task: BaseTask, completion: str, example: Example) -> float:
    """0/1 accuracy: the task's `exact_match` where it has one (the synthetic task, whose reward
    gives partial credit), else its reward."""
    exact = getattr(task, "exact_match", None)
    return exact(completion, example) if exact else task.reward(completion, example)


def check_disjoint(
    task: str, split: str, examples: Sequence[Example], training_prompts: Iterable[str]
) -> None:
    """Raise ValueError naming the count when a prompt of `examples` (whitespace-normalised) also
    occurs among `training_prompts`."""
    seen = {" ".join(prompt.split()) for prompt in training_prompts}
    leaked = sum(" ".join(example.prompt.split()) in seen for example in examples)
    if leaked:
        raise ValueError(
            f"{task}: {leaked} of {len(examples)} {split} prompts also occur in the training split"
        )


@dataclasses.dataclass(frozen=True)
class Task(BaseTask):
    """A dataset read from the hub or a JSONL file. `hub_record` turns a hub row into a record of
    the task's JSONL schema; `train_split` names the split other splits are checked against;
    subclasses (one per answer kind) define `example_from_record` and `reward`."""

    hub_path: str
    hub_config: str | None
    hub_record: Callable[[Mapping[str, Any]], dict]
    train_split: str = "train"

    def example_from_record(self, record: Mapping[str, Any], default_id: str) -> Example:
        """Validated Example from a JSONL-schema record; ValueError naming the problem."""
        raise NotImplementedError

    def load(
        self, split: str, source: str | os.PathLike | None = None, limit: int | None = None
    ) -> list[Example]:
        """Examples of `split`: from the hub when `source` is None, else from the JSONL file
        `source` (or `source/<split>.jsonl` when `source` is a folder). At most `limit` rows.

        A split other than `train_split` is checked against the whole training split (ValueError
        naming the count of shared prompts) when that split is known: on the hub, or as
        `<train_split>.jsonl` in a `source` folder; a single file names no training split."""
        examples = self.read(split, source, limit)
        path = None if source is None else pathlib.Path(source)
        has_training_split = path is None or (
            path.is_dir() and (path / f"{self.train_split}.jsonl").exists()
        )
        if split != self.train_split and has_training_split:
            training = self.read(self.train_split, source, None)
            check_disjoint(self.name, split, examples, (e.prompt for e in training))
        return examples

    def read(
        self, split: str, source: str | os.PathLike | None, limit: int | None
    ) -> list[Example]:
        """`load` without the overlap check."""
        if source is None:
            rows = (
                (f"{self.hub_path} {split} row {index}", row)
                for index, row in enumerate(
                    hub_rows(self.hub_path, self.hub_config, split), start=1
                )
            )
            to_record = self.hub_record
        else:
            path = pathlib.Path(source)
            path = path / f"{split}.jsonl" if path.is_dir() else path
            rows = ((f"{path}:{line_number}", record) for line_number, record in read_jsonl(path))
            to_record = dict
        examples = []
        for index, (where, row) in enumerate(itertools.islice(rows, limit)):
            try:
                examples.append(
                    self.example_from_record(
                        to_record(row), default_id=f"{self.name}/{split}/{index}"
                    )
                )
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        return examples


def optional_id(record: Mapping[str, Any], default_id: str) -> str:
    """The record's "id" (a string) when present, else `default_id`."""
    return require(record, "id", str) if "id" in record else default_id
