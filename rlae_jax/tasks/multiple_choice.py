"""Multiple-choice tasks scored on the choice letter: ARC-Challenge, MMLU, PIQA.

JSONL schema, one object a line: {"question": str, "choices": [str, ...] (2 to 26),
"answer": "B" (a choice letter, any case) or 1 (0-based index), "id": str (optional)}.
Hub: ("allenai/ai2_arc", "ARC-Challenge") train/validation/test; ("cais/mmlu", "all")
auxiliary_train/dev/validation/test; ("ybisk/piqa", None) train/validation (test has no labels).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rlae_jax.tasks.base import Example, Task, optional_id, require, require_strings
from rlae_jax.tasks.rewards import choice_letters, choice_reward

INSTRUCTION = 'Answer with the letter of the correct choice, as "The answer is X."'


@dataclasses.dataclass(frozen=True)
class MultipleChoiceTask(Task):
    """Choice-letter task; `Example.answer` is the letter ("A".."Z"), `Example.choices` the option
    texts."""

    def example_from_record(self, record: Mapping[str, Any], default_id: str) -> Example:
        question = require(record, "question", str)
        choices = require_strings(record, "choices", minimum=2)
        letters = choice_letters(len(choices))
        answer = require(record, "answer", (str, int))
        if isinstance(answer, int):
            if not 0 <= answer < len(choices):
                raise ValueError(f"field 'answer' index {answer} is outside 0..{len(choices) - 1}")
            answer = letters[answer]
        elif len(answer) != 1 or answer.upper() not in letters:
            raise ValueError(
                f"field 'answer' {answer!r} is not one of the letters {', '.join(letters)}"
            )
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, choices))
        return Example(
            id=optional_id(record, default_id),
            prompt=f"Question: {question}\n{options}\n{INSTRUCTION}",
            answer=answer.upper(),
            aliases=(answer.upper(),),
            choices=choices,
        )

    def reward(self, completion: str, example: Example) -> float:
        return choice_reward(completion, example.answer, example.choices)


def arc_hub_record(row: Mapping[str, Any]) -> dict:
    """allenai/ai2_arc row (id, question, choices{text, label}, answerKey) → JSONL record."""
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise ValueError(f"answerKey {row['answerKey']!r} is not among the labels {labels}")
    return {
        "id": row["id"],
        "question": row["question"],
        "choices": list(row["choices"]["text"]),
        "answer": labels.index(row["answerKey"]),
    }


def mmlu_hub_record(row: Mapping[str, Any]) -> dict:
    """cais/mmlu row (question, choices, answer index) → JSONL record."""
    return {"question": row["question"], "choices": list(row["choices"]), "answer": row["answer"]}


def piqa_hub_record(row: Mapping[str, Any]) -> dict:
    """PIQA row (goal, sol1, sol2, label index) → JSONL record."""
    return {"question": row["goal"], "choices": [row["sol1"], row["sol2"]], "answer": row["label"]}


ARC_CHALLENGE = MultipleChoiceTask(
    "arc_challenge", "allenai/ai2_arc", "ARC-Challenge", arc_hub_record
)
MMLU = MultipleChoiceTask(
    "mmlu", "cais/mmlu", "all", mmlu_hub_record, train_split="auxiliary_train"
)
PIQA = MultipleChoiceTask("piqa", "ybisk/piqa", None, piqa_hub_record)
