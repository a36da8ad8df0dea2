"""A training mixture of task families, each with its own worked examples: one task to the trainer.

The study trains one agent on problems from several families (`MixtureTask`); each problem is
rendered after its own family's shots and scored by its own family's reward. A mixture example's
id is "<family index>|<the family's own id>", so `family_of` needs no lookup table and two
families can never collide.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rlae_jax.tasks.base import BaseTask, Example, accuracy_of

SEPARATOR = "|"


@dataclasses.dataclass(frozen=True)
class MixtureTask(BaseTask):
    """`families[f]` with its worked examples `shots[f]`. `load` interleaves the families' splits
    (problem i of every family, then i + 1, ...), so any prefix of a split is balanced."""

    families: tuple[BaseTask, ...] = ()
    shots: tuple[tuple[Example, ...], ...] = ()

    def __post_init__(self):
        if not self.families or len(self.shots) != len(self.families):
            raise ValueError(
                f"a mixture needs ≥ 1 family and one shot tuple per family, got "
                f"{len(self.families)} families and {len(self.shots)} shot tuples"
            )

    @classmethod
    def of(cls, families: Sequence[BaseTask], shots: Sequence[Sequence[Example]]) -> "MixtureTask":
        name = " + ".join(task.name for task in families)
        return cls(name, tuple(families), tuple(tuple(s) for s in shots))

    def load(self, split: str, source=None, limit: int | None = None) -> list[Example]:
        """`limit` problems (default: each family's default count) of every family's `split`,
        interleaved; `limit` counts per family."""
        per_family = [task.load(split, source, limit) for task in self.families]
        return self.interleave(per_family)

    def interleave(self, per_family: Sequence[Sequence[Example]]) -> list[Example]:
        """One mixture split from each family's examples (families in order), round-robin."""
        if len(per_family) != len(self.families):
            raise ValueError(f"{len(per_family)} splits for {len(self.families)} families")
        tagged = [self.tag(f, examples) for f, examples in enumerate(per_family)]
        longest = max(len(examples) for examples in tagged)
        return [examples[i] for i in range(longest) for examples in tagged if i < len(examples)]

    def tag(self, family: int, examples: Sequence[Example]) -> list[Example]:
        """Family `family`'s own examples as examples of the mixture."""
        return [dataclasses.replace(e, id=f"{family}{SEPARATOR}{e.id}") for e in examples]

    def family_of(self, example: Example) -> int:
        """The index of `example`'s family; ValueError for an example that is not a mixture's."""
        head, separator, _ = example.id.partition(SEPARATOR)
        if not separator or not head.isdigit() or int(head) >= len(self.families):
            raise ValueError(f"{example.id!r} is not an example of the mixture {self.name!r}")
        return int(head)

    def families_of(self, examples: Sequence[Example]) -> np.ndarray:
        """`[E]` int32 family index of each example."""
        return np.array([self.family_of(e) for e in examples], np.int32)

    def member(self, example: Example) -> tuple[BaseTask, Example]:
        """(its family's task, the example with the family's own id)."""
        family = self.family_of(example)
        return self.families[family], dataclasses.replace(
            example, id=example.id.partition(SEPARATOR)[2]
        )

    def render(self, example: Example, tokenizer=None, shots=(), formatter=None) -> str:
        """Its family's rendering after the family's own shots (`shots` must be empty: each family
        brings its own)."""
        if shots:
            raise ValueError(f"{self.name}: a mixture renders each family's own shots; pass none")
        task, own = self.member(example)
        return task.render(own, tokenizer, self.shots[self.family_of(example)], formatter)

    def reward(self, completion: str, example: Example) -> float:
        """0/1: its family's accuracy (exact match where a family's own reward is partial)."""
        task, own = self.member(example)
        return accuracy_of(task, completion, own)
