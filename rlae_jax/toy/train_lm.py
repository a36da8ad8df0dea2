"""A small JAX language-model trainer over the project's own model code (used to train the demo's
members on CPU in minutes): next-token cross-entropy on completions given prompts."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from rlae_jax.models.member import Member


def encode_pairs(
    tokenizer, pairs: Sequence[tuple[str, str]], length: int
) -> tuple[np.ndarray, ...]:
    """Right-padded ids, attention mask and loss mask (1 on completion tokens and the final EOS),
    int32 `[M, T]`. Raises if a prompt is not a token prefix of prompt + completion, or a text
    exceeds `length`."""
    eos = tokenizer.eos_token_id
    ids = np.full((len(pairs), length), eos, np.int32)
    attention = np.zeros_like(ids)
    loss = np.zeros_like(ids)
    for row, (prompt, completion) in enumerate(pairs):
        prompt_ids = tokenizer.encode(prompt)
        full = tokenizer.encode(prompt + completion) + [eos]
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                f"tokenizer splits {prompt!r} differently inside {prompt + completion!r}; "
                "completions must start at a token boundary (e.g. with a space)"
            )
        if len(full) > length:
            raise ValueError(
                f"pair {row} has {len(full)} tokens, more than the training length {length}"
            )
        ids[row, : len(full)] = full
        attention[row, : len(full)] = 1
        loss[row, len(prompt_ids) : len(full)] = 1
    return ids, attention, loss


def completion_loss(
    member: Member, ids: jax.Array, attention: jax.Array, loss_mask: jax.Array
) -> jax.Array:
    """Mean cross-entropy of the loss-masked tokens given everything before them."""
    logits = member.logits(ids, attention)[:, :-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_log_probs = jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
    weights = loss_mask[:, 1:].astype(jnp.float32)
    return -(token_log_probs * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def train_lm(
    member: Member,
    pairs: Sequence[tuple[str, str]],
    steps: int = 500,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    length: int = 48,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Member, list[float]]:
    """Train all of `member`'s parameters on (prompt, completion) pairs with AdamW (warm-up +
    cosine). Returns the trained member and the loss of every step."""
    ids, attention, loss_mask = encode_pairs(member.tokenizer, pairs, length)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(steps // 20, 1), steps)
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01)
    )

    @jax.jit
    def step(state, opt_state, batch):
        loss, grads = jax.value_and_grad(
            lambda s: completion_loss(member.replace(state=s), *batch)
        )(state)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    state, opt_state = member.state, optimizer.init(member.state)
    rng = np.random.default_rng(seed)
    losses = []
    bar = tqdm(
        range(steps),
        desc=f"training {member.name or member.config.model_type}",
        disable=not progress,
    )
    for _ in bar:
        rows = rng.integers(0, len(pairs), batch_size)
        state, opt_state, loss = step(
            state, opt_state, (ids[rows], attention[rows], loss_mask[rows])
        )
        losses.append(float(loss))
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(
                f"loss became {losses[-1]} at step {len(losses)} while training {member.name}"
            )
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return member.replace(state=state), losses
