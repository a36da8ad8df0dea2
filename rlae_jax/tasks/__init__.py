"""Evaluation tasks: loaders (HF hub, local JSONL or reasoning-gym), prompts and rewards.

`get_task(name)` returns one of TASKS: gsm8k, arc_challenge, mmlu, piqa, triviaqa, nq_open,
gsm_symbolic (reasoning-gym), and the embedded demo's synthetic task (plus synthetic_two_part, a
shifted variant for transfer, and its one-operation families synthetic_reverse and
synthetic_capitalize); or any reasoning-gym dataset as "rg/<dataset>", "rg/<dataset>:easy"
or 'rg/<dataset>:{"json": "config"}' (rlae_jax/tasks/rgym.py).
JSONL schemas are in each task module's docstring and in rlae_jax/tasks/README.md.
"""

from rlae_jax.tasks.base import BaseTask, Example, Task, check_disjoint
from rlae_jax.tasks.gsm8k import GSM8K, GSM8KTask
from rlae_jax.tasks.multiple_choice import ARC_CHALLENGE, MMLU, PIQA, MultipleChoiceTask
from rlae_jax.tasks.qa import NATURAL_QUESTIONS, TRIVIAQA, QATask
from rlae_jax.tasks.rgym import ReasoningGymTask, reasoning_gym_task, task_from_spec
from rlae_jax.tasks.synthetic import (
    SYNTHETIC,
    SYNTHETIC_CAPITALIZE,
    SYNTHETIC_REVERSE,
    SYNTHETIC_TWO_PART,
)

GSM_SYMBOLIC = ReasoningGymTask(name="gsm_symbolic", dataset="gsm_symbolic")
TASKS = {
    task.name: task
    for task in (
        GSM8K,
        ARC_CHALLENGE,
        MMLU,
        PIQA,
        TRIVIAQA,
        NATURAL_QUESTIONS,
        GSM_SYMBOLIC,
        SYNTHETIC,
        SYNTHETIC_TWO_PART,
        SYNTHETIC_REVERSE,
        SYNTHETIC_CAPITALIZE,
    )
}


def get_task(name: str) -> BaseTask:
    """The registered task called `name`, or a reasoning-gym task for "rg/..." names; KeyError
    listing the known names otherwise."""
    if name.startswith("rg/"):
        return task_from_spec(name)
    if name not in TASKS:
        raise KeyError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}, "
            "or rg/<reasoning-gym dataset>[:easy]"
        )
    return TASKS[name]


__all__ = [
    "BaseTask",
    "Example",
    "Task",
    "GSM8KTask",
    "MultipleChoiceTask",
    "QATask",
    "ReasoningGymTask",
    "TASKS",
    "check_disjoint",
    "get_task",
    "reasoning_gym_task",
]
