"""Evaluation tasks: loaders (HF hub or local JSONL), prompt templates and rewards.

`get_task(name)` returns one of TASKS: gsm8k, arc_challenge, mmlu, piqa, triviaqa, nq_open, and the
embedded demo's synthetic task (plus synthetic_two_part, a shifted variant for transfer).
JSONL schemas are in each task module's docstring and in rlae_jax/tasks/README.md.
"""
from rlae_jax.tasks.base import Example, Task
from rlae_jax.tasks.gsm8k import GSM8K, GSM8KTask
from rlae_jax.tasks.multiple_choice import ARC_CHALLENGE, MMLU, PIQA, MultipleChoiceTask
from rlae_jax.tasks.qa import NATURAL_QUESTIONS, TRIVIAQA, QATask
from rlae_jax.tasks.synthetic import SYNTHETIC, SYNTHETIC_TWO_PART

TASKS = {task.name: task for task in (GSM8K, ARC_CHALLENGE, MMLU, PIQA, TRIVIAQA, NATURAL_QUESTIONS, SYNTHETIC,
                                     SYNTHETIC_TWO_PART)}


def get_task(name: str) -> Task:
    """The registered task called `name`; KeyError listing the known names otherwise."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["Example", "Task", "GSM8KTask", "MultipleChoiceTask", "QATask", "TASKS", "get_task"]
