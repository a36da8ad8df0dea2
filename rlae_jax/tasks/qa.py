"""Open-domain QA scored by normalised exact match over aliases: TriviaQA, Natural Questions (open).

JSONL schema, one object a line: {"question": str, "answers": [str, ...] (at least one; the first is
the canonical answer), "id": str (optional)}.
Hub: ("mandarjoshi/trivia_qa", "rc.nocontext") train/validation (test has no answers);
("google-research-datasets/nq_open", None) train/validation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rlae_jax.tasks.base import Example, Task, optional_id, require, require_strings
from rlae_jax.tasks.rewards import exact_match_reward

INSTRUCTION = 'Answer with a short phrase, as "The answer is X."'


@dataclasses.dataclass(frozen=True)
class QATask(Task):
    """Short-answer task; `Example.aliases`: every accepted answer, `Example.answer` the first."""

    def example_from_record(self, record: Mapping[str, Any], default_id: str) -> Example:
        question = require(record, "question", str)
        answers = require_strings(record, "answers", minimum=1)
        return Example(
            id=optional_id(record, default_id),
            prompt=f"Question: {question}\n{INSTRUCTION}",
            answer=answers[0],
            aliases=answers,
        )

    def reward(self, completion: str, example: Example) -> float:
        return exact_match_reward(completion, example.aliases)


def triviaqa_hub_record(row: Mapping[str, Any]) -> dict:
    """mandarjoshi/trivia_qa row (question_id, question, answer{value, aliases}) → record."""
    answer = row["answer"]
    answers = [answer["value"]] + [alias for alias in answer["aliases"] if alias != answer["value"]]
    return {"id": row["question_id"], "question": row["question"], "answers": answers}


def nq_open_hub_record(row: Mapping[str, Any]) -> dict:
    """google-research-datasets/nq_open row (question, answer list) → JSONL record."""
    return {"question": row["question"], "answers": list(row["answer"])}


TRIVIAQA = QATask("triviaqa", "mandarjoshi/trivia_qa", "rc.nocontext", triviaqa_hub_record)
NATURAL_QUESTIONS = QATask("nq_open", "google-research-datasets/nq_open", None, nq_open_hub_record)
