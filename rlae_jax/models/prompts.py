"""Host-side prompt preparation: each member's prompt text from a task's chat messages, tokenise
once, left-pad to a length bucket (so jitted loops see few distinct shapes), and check the result
fits the model's context.

Messages are dicts {"role": "system" | "user" | "assistant", "content": str} ending with a user
turn. A tokenizer with a chat template formats them itself (`add_generation_prompt=True`); without
one (base models) they take the plain format of `plain_prompt`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

MIN_BUCKET = 16


def bucket_length(length: int, minimum: int = MIN_BUCKET) -> int:
    """Smallest power of two >= length (and >= minimum)."""
    bucket = minimum
    while bucket < length:
        bucket *= 2
    return bucket


def left_pad(
    token_lists: Sequence[Sequence[int]], pad_id: int, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id lists to `length` (default: their bucket). Returns ids and mask, int32
    `[B, T]`."""
    longest = max(len(t) for t in token_lists)
    length = length or bucket_length(longest)
    ids = np.full((len(token_lists), length), pad_id, np.int32)
    mask = np.zeros((len(token_lists), length), np.int32)
    for row, tokens in enumerate(token_lists):
        if len(tokens):
            ids[row, length - len(tokens) :] = tokens
            mask[row, length - len(tokens) :] = 1
    return ids, mask


def plain_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """The plain format for models without a chat template: blocks separated by a blank line — a
    system turn as its text, a user turn as "text\\nAnswer:", an assistant turn appended to the
    user block before it after one space. The last turn must be the user's question:

        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "The answer is 4."},
         {"role": "user", "content": "3+3?"}]
        →  "2+2?\\nAnswer: The answer is 4.\\n\\n3+3?\\nAnswer:"
    """
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("messages must end with a user turn (the question)")
    blocks = []
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        previous = messages[index - 1]["role"] if index else None
        if role == "system" and index == 0:
            blocks.append(content)
        elif role == "user" and previous != "user":
            blocks.append(f"{content}\nAnswer:")
        elif role == "assistant" and previous == "user":
            blocks[-1] += f" {content}"
        else:
            raise ValueError(
                f"message {index} ({role!r}) breaks the plain format: one optional "
                "system turn first, then user/assistant pairs, ending with a user "
                "turn"
            )
    return "\n\n".join(blocks)


def chat_prompt(
    messages: str | Sequence[Mapping[str, str]],
    tokenizer=None,
    template: bool | None = None,
    who: str = "this tokenizer",
) -> str:
    """Prompt text asking for the next assistant turn after `messages` (dicts with "role" and
    "content"; a str is one user turn), so an ensemble can ask every member in its own format.

    template: None uses the tokenizer's chat template when it has one (instruction-tuned models; a
      GGUF's `tokenizer.chat_template`), else `plain_prompt` (base models); True requires the
      template (ValueError naming `who` when there is none); False forces the plain format.
      Templated text holds its own special tokens: encode it with `add_special_tokens=False` to
      get `apply_chat_template`'s ids.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
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


def member_prompts(
    members: Sequence,
    task,
    examples: Sequence,
    shots: Sequence = (),
    formats: Sequence[bool | None] | None = None,
) -> list[list[str]]:
    """Each member's prompt texts for `examples`, `[N][B]`: the task's messages formatted by the
    member's own `chat_prompt(messages, formats[n])` when it has one (`formats[n]`: None its
    template when it has one, True require it, False the plain format), else by `chat_prompt`
    with its tokenizer."""
    formats = formats if formats is not None else (None,) * len(members)
    prompts = []
    for member, form in zip(members, formats):
        own = getattr(member, "chat_prompt", None)
        if not callable(own):
            own = lambda messages, form=None, tokenizer=member.tokenizer: chat_prompt(
                messages, tokenizer, form
            )

        def formatter(messages, own=own, form=form):
            return own(messages) if form is None else own(messages, form)

        prompts.append(
            [task.render(example, shots=shots, formatter=formatter) for example in examples]
        )
    return prompts


def encode_prompts(
    tokenizer, prompts: Sequence[str], add_special_tokens: bool = True
) -> list[list[int]]:
    """Token ids of every prompt; raises on an empty prompt list or a prompt that encodes to
    nothing. A prompt that already starts with the tokenizer's BOS text (chat templates that write
    it) gets no special tokens added, so it holds one BOS, not two."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if len(prompts) == 0:
        raise ValueError("empty prompt list: give at least one prompt")
    bos = getattr(tokenizer, "bos_token", None)
    token_lists = [
        tokenizer.encode(
            p, add_special_tokens=add_special_tokens and not (bos and p.startswith(bos))
        )
        for p in prompts
    ]
    for row, tokens in enumerate(token_lists):
        if not tokens:
            raise ValueError(f"prompt {row} ({prompts[row]!r}) encodes to no tokens")
    return token_lists


def check_context(longest_prompt: int, max_new_tokens: int, context: int, who: str) -> None:
    """Raise a clear error when prompt + generation cannot fit the model's context window."""
    if longest_prompt + max_new_tokens > context:
        raise ValueError(
            f"{who}: longest prompt has {longest_prompt} tokens; with "
            f"max_new_tokens={max_new_tokens} that needs "
            f"{longest_prompt + max_new_tokens} positions but the model's context is {context}. "
            "Shorten the prompt or lower max_new_tokens."
        )


def pad_id_of(tokenizer) -> int:
    """The id used for left padding (never attended to): pad, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
