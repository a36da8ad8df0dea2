"""`Ensemble`: the members, their byte-exact alignment and each member's prompt format — the one
value the trainer, evaluation, baselines, study and harness take.

It formats and encodes a task's problems once per split (`encode`: each member in its own format,
the prefix every problem shares found once and prefilled once, `engine.prefix`), and hands out
batches of that encoding (`batch`). In compiled code it is a pytree of its members and alignment.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from rlae_jax.align import Alignment, build_alignment
from rlae_jax.engine.api import EnsembleOutput, generate_from_batch, prompts_per_member
from rlae_jax.engine.prefix import (
    EncodedPrompts,
    PrefixStates,
    encode_prompts_once,
    encode_splits,
)
from rlae_jax.engine.room import check_members
from rlae_jax.engine.state import PromptBatch
from rlae_jax.models import from_pretrained
from rlae_jax.models.member import Member
from rlae_jax.models.prompts import encode_prompts, member_prompts


@jax.tree_util.register_pytree_node_class
class Ensemble:
    """`members` (Member, with different tokenizers), their `alignment` (built, or loaded from its
    cache, when not given) and `formats[n]`: member n's prompt format for `Member.chat_prompt`
    (None: its chat template when it has one, else the plain "question\\nAnswer:" format; True:
    require the template; False: force the plain format)."""

    def __init__(
        self,
        members: Sequence[Member],
        alignment: Alignment | None = None,
        formats: Sequence[bool | None] | None = None,
    ):
        members = tuple(members)
        if not members or not all(isinstance(m, Member) for m in members):
            raise TypeError(
                f"Ensemble needs Member objects, got {[type(m).__name__ for m in members]}"
            )
        if alignment is None:
            alignment = build_alignment(
                [m.tokenizer for m in members], vocab_sizes=[m.config.vocab_size for m in members]
            )
        formats = tuple(formats) if formats is not None else (None,) * len(members)
        if len(formats) != len(members):
            raise ValueError(f"{len(formats)} formats for {len(members)} members")
        self.members, self.formats, self.alignment = members, formats, alignment
        check_members(self)
        self.prefixes = PrefixStates(members)
        self.encodings = 0  # splits encoded so far (a study encodes each split once)

    @classmethod
    def from_pretrained(cls, names: Sequence[str], formats=None, **load_options) -> "Ensemble":
        """Members by preset name, GGUF file, HF folder or hub id (`rlae_jax.from_pretrained`)."""
        return cls([from_pretrained(name, **load_options) for name in names], formats=formats)

    def tree_flatten(self):
        return (self.members, self.alignment), self.formats

    @classmethod
    def tree_unflatten(cls, formats, children):
        ensemble = object.__new__(cls)  # inside jit: no checks, no prefix states
        ensemble.members, ensemble.alignment = tuple(children[0]), children[1]
        ensemble.formats = formats
        return ensemble

    def __len__(self) -> int:
        return len(self.members)

    @property
    def names(self) -> list[str]:
        return [m.name or m.config.model_type for m in self.members]

    def prompts(self, task, examples: Sequence, shots: Sequence = ()) -> list[list[str]]:
        """Each member's prompt texts `[N][E]`: the task's messages (after `shots`) in the
        member's format."""
        return member_prompts(self.members, task, examples, shots, self.formats)

    def encode(
        self,
        task,
        examples: Sequence,
        shots: Sequence = (),
        max_new_tokens: int = 64,
        shared_prefix: bool = True,
    ) -> EncodedPrompts:
        """A split formatted and tokenised once for every member (`engine.prefix`): batches of it
        share one compiled shape and start from its prefilled shared prefix (`shared_prefix=False`:
        every row holds its whole prompt, for comparisons)."""
        texts = self.prompts(task, examples, shots)
        return self.encode_texts(texts, max_new_tokens, shared_prefix)

    def encode_texts(
        self,
        prompts: Sequence[str] | Sequence[Sequence[str]],
        max_new_tokens: int = 64,
        shared_prefix: bool = True,
    ) -> EncodedPrompts:
        """Prompt texts (B strings for every member, or one list per member) → EncodedPrompts."""
        caps = None if shared_prefix else [0] * len(self.members)
        return encode_prompts_once(self.members, self.token_lists(prompts), max_new_tokens, caps)

    def encode_splits(self, splits: Sequence[tuple], max_new_tokens: int = 64) -> list:
        """Several splits, each `(task, examples, shots)`, encoded once each to one compiled shape
        (`engine.prefix.encode_splits`): e.g. every family's test split of a study."""
        token_lists = [self.token_lists(self.prompts(*split)) for split in splits]
        return encode_splits(self.members, token_lists, max_new_tokens)

    def token_lists(self, prompts: Sequence[str] | Sequence[Sequence[str]]) -> list[list]:
        """Each member's token ids of its prompts `[N][E]` (counted in `encodings`)."""
        self.encodings += 1
        own = prompts_per_member(prompts, len(self.members))
        return [encode_prompts(m.tokenizer, p) for m, p in zip(self.members, own)]

    def batch(self, encoded: EncodedPrompts, indices: Sequence[int]) -> PromptBatch:
        """Rows `indices` of an encoded split, starting from its prefilled shared prefix."""
        return self.prefixes.batch(encoded, indices)

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[str]],
        strategy: Any = "uniform",
        max_new_tokens: int = 64,
        **options,
    ) -> EnsembleOutput:
        """Ensemble-generate continuations of `prompts` (B strings for every member, or one list
        per member): `rlae_jax.engine.generate`'s strategies and options."""
        encoded = self.encode_texts(prompts, max_new_tokens)
        batch = self.batch(encoded, range(len(encoded)))
        return generate_from_batch(self, batch, strategy, max_new_tokens, **options)
