"""A member's prompt for chat messages, in that member's own format, so an ensemble can ask every
member the same question: the tokenizer's chat template when it has one (instruction-tuned models;
a GGUF's `tokenizer.chat_template`), else the plain documented format of
`rlae_jax.prompts.plain_prompt` (base models): e.g. "What is 2+2?\\nAnswer:".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rlae_jax.prompts import plain_prompt


def chat_prompt(
    tokenizer,
    messages: str | Sequence[Mapping[str, str]],
    template: bool | None = None,
    who: str = "this tokenizer",
) -> str:
    """Prompt text asking for the next assistant turn after `messages` (dicts with "role" and
    "content"; a str is one user turn).

    template: None uses the chat template when the tokenizer has one, else the plain format;
      True requires the template (ValueError naming `who` when there is none); False forces the
      plain format. Templated text holds its own special tokens: encode it with
      `add_special_tokens=False` to get `apply_chat_template`'s ids.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    own = getattr(tokenizer, "chat_template", None)
    if template and not own:
        raise ValueError(
            f"{who} has no chat template (base model); pass template=None or False "
            "for the plain 'question\\nAnswer:' format"
        )
    if own and template is not False:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    return plain_prompt(messages)
