"""GSM8K: grade-school maths word problems, scored on the final number.

JSONL schema, one object a line: {"question": str, "answer": str, "id": str (optional)}, where
"answer" is either GSM8K's worked solution ending "#### <number>" (the hub format) or just the
number.
Hub: ("openai/gsm8k", "main"), splits train / test.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rlae_jax.tasks.base import Example, Task, optional_id, require
from rlae_jax.tasks.rewards import NUMBER, number_reward

INSTRUCTION = (
    'Solve the problem step by step, then finish with "The answer is N." where N is a number.'
)


@dataclasses.dataclass(frozen=True)
class GSM8KTask(Task):
    """Final-number maths task; `Example.answer` is the number without thousands commas ("1234")."""

    def example_from_record(self, record: Mapping[str, Any], default_id: str) -> Example:
        question = require(record, "question", str)
        solution = require(record, "answer", str)
        final = NUMBER.search(solution.rsplit("####", 1)[-1])
        if final is None:
            raise ValueError(f"field 'answer' has no final number: {solution[-60:]!r}")
        answer = ("-" if final["sign"] else "") + final["digits"].replace(",", "")
        return Example(
            id=optional_id(record, default_id),
            prompt=f"Question: {question}\n{INSTRUCTION}",
            answer=answer,
            aliases=(answer,),
        )

    def reward(self, completion: str, example: Example) -> float:
        return number_reward(completion, example.answer)


def gsm8k_hub_record(row: Mapping[str, Any]) -> dict:
    """openai/gsm8k row (question, answer) → JSONL record."""
    return {"question": row["question"], "answer": row["answer"]}


GSM8K = GSM8KTask("gsm8k", "openai/gsm8k", "main", gsm8k_hub_record)
