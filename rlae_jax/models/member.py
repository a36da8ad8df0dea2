"""Member: one ensemble member as a pytree — (graphdef, state) plus static config and tokenizer —
with pure compute paths usable inside `jit`, `lax.while_loop` and `lax.scan`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from rlae_jax.models.config import ModelConfig
from rlae_jax.models.decoder import Decoder
from rlae_jax.models.gemma3 import Gemma3
from rlae_jax.models.gpt2 import GPT2
from rlae_jax.models.kv_cache import KVCache
from rlae_jax.models.layers import CausalLM
from rlae_jax.models.prompts import chat_prompt

FAMILIES = {"decoder": Decoder, "gemma3": Gemma3, "gpt2": GPT2}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(dtype) -> Any:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def build_model(config: ModelConfig, dtype="float32", seed: int = 0) -> CausalLM:
    """A randomly initialised model of the config's family (`nnx.eval_shape` avoids allocating)."""
    return FAMILIES[config.family](config, dtype=resolve_dtype(dtype), rngs=nnx.Rngs(seed))


class StepOutput(NamedTuple):
    # [B, V] float32 next-token logits; ids the tokenizer cannot decode are masked
    logits: jax.Array
    hidden: jax.Array  # [B, H] final hidden state of each row's last valid token


class Prefill(NamedTuple):
    """`Member.prefill`'s result: the next-token StepOutput, the prompt summary `[B, H]` (mean of
    the prompt's hidden states), the cache, and the block's final hidden states `[B, T, H]`."""

    step: StepOutput
    summary: jax.Array
    cache: KVCache
    hidden_states: jax.Array


@struct.dataclass
class PrefixState:
    """A prompt prefix that many rows share, prefilled once at batch 1 (`Member.prefill_prefix`):
    its ids `[P]` int32 and `valid [P]` bool (False on the left padding that gives prefixes of
    different lengths one shape), its `cache` (exactly P slots), the float32 sum of its tokens'
    hidden states `[H]` and its last one `[H]` (which predicts a row's first token after it), and
    `nll_sum []`, the negative log-likelihood of its tokens after the first."""

    ids: jax.Array
    valid: jax.Array
    cache: KVCache
    hidden_sum: jax.Array
    last_hidden: jax.Array
    nll_sum: jax.Array

    @property
    def slots(self) -> int:
        """Cache slots it takes (static)."""
        return self.ids.shape[0]

    @property
    def tokens(self) -> jax.Array:
        """int32 [] its tokens (slots less the padding)."""
        return self.valid.sum(dtype=jnp.int32)


@struct.dataclass
class Member:
    """A model's `(graphdef, state)` with its static config and tokenizer.

    `usable_vocab` ids (< V) are the ones the tokenizer can decode; the rest of the embedding rows
    get a masked logit in every decode path (`logits()` returns the raw full-forward logits).
    """

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    state: nnx.State
    config: ModelConfig = struct.field(pytree_node=False)
    tokenizer: Any = struct.field(pytree_node=False, default=None)
    usable_vocab: int = struct.field(pytree_node=False, default=0)
    name: str = struct.field(pytree_node=False, default="")

    @classmethod
    def from_model(cls, model: CausalLM, tokenizer=None, name: str = "") -> "Member":
        graphdef, state = nnx.split(model)
        config = model.config
        usable = (
            config.vocab_size
            if tokenizer is None
            else check_tokenizer_fits(tokenizer, config.vocab_size)
        )
        return cls(
            graphdef=graphdef,
            state=state,
            config=config,
            tokenizer=tokenizer,
            usable_vocab=usable,
            name=name,
        )

    @property
    def model(self) -> CausalLM:
        return nnx.merge(self.graphdef, self.state)

    @property
    def dtype(self):
        return jax.tree.leaves(self.state)[0].dtype

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.state))

    def chat_prompt(self, messages, template: bool | None = None) -> str:
        """This member's prompt text for chat `messages` (a str is one user turn): its tokenizer's
        chat template when it has one, else the plain "question\\nAnswer:" format; `template=True`
        requires the template, False forces the plain format (`models.prompts.chat_prompt`)."""
        return chat_prompt(messages, self.tokenizer, template, who=f"member {self.name!r}")

    def init_cache(self, batch: int, length: int) -> KVCache:
        c = self.config
        return KVCache.init(c.num_layers, batch, length, c.num_kv_heads, c.head_dim, self.dtype)

    def logits(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Full forward of a left- or right-padded batch `[B, T]` → float32 logits `[B, T, V]`.
        Positions count only the mask's real tokens, so padding does not change a row's logits."""
        model = self.model
        hidden, _ = model(input_ids, attention_mask.astype(bool))
        return model.lm_head_logits(hidden)

    def next_token_logits(self, hidden: jax.Array) -> jax.Array:
        """float32 next-token logits `[B, V]` from final hidden states `[B, H]`; ids the tokenizer
        cannot decode get float32 min."""
        logits = self.model.lm_head_logits(hidden)
        if self.usable_vocab < self.config.vocab_size:
            usable = jnp.arange(self.config.vocab_size) < self.usable_vocab
            logits = jnp.where(usable, logits, jnp.finfo(jnp.float32).min)
        return logits

    def prefill(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        cache_length: int,
        prefix: "PrefixState | None" = None,
    ) -> "Prefill":
        """Prefill a LEFT-padded batch `[B, T]` into a fresh cache of `cache_length` slots. With a
        `prefix` (`prefill_prefix`), every row starts from that prefix's cache (copied, not
        recomputed) and `input_ids` hold only what follows it: positions continue after the prefix
        and the left padding sits after it, never inside it. → Prefill (the summary counts the
        prefix's hidden states too)."""
        valid = attention_mask.astype(bool)
        batch = input_ids.shape[0]
        if prefix is None:
            cache, start_sum, start_count = self.init_cache(batch, cache_length), 0.0, 0
        else:
            cache = prefix.cache.repeat_rows(batch).grow(cache_length)
            start_sum, start_count = prefix.hidden_sum, prefix.tokens
        hidden, cache = self.model(input_ids, valid, cache)
        weights = valid[..., None].astype(jnp.float32)
        total = start_sum + (hidden.astype(jnp.float32) * weights).sum(1)
        summary = total / jnp.maximum(weights.sum(1) + start_count, 1.0)
        last = hidden[:, -1]
        return Prefill(StepOutput(self.next_token_logits(last), last), summary, cache, hidden)

    def prefill_prefix(self, ids: jax.Array, valid: jax.Array | None = None) -> "PrefixState":
        """Prefill a prompt prefix `ids [P]` that many rows share, once, at batch 1 → PrefixState
        (its cache of exactly P slots, the sum of its hidden states and its tokens' NLL). `valid
        [P]`: False on left padding (positions and the sums skip it; default: no padding)."""
        valid = jnp.ones(ids.shape, bool) if valid is None else valid.astype(bool)
        out = self.prefill(ids[None], valid[None], ids.shape[0])
        log_probs = self.token_log_probs(out.hidden_states[:, :-1], ids[None, 1:])[0]
        weights = valid[:, None].astype(jnp.float32)
        return PrefixState(
            ids=ids,
            valid=valid,
            cache=out.cache,
            hidden_sum=(out.hidden_states[0].astype(jnp.float32) * weights).sum(0),
            last_hidden=out.step.hidden[0],
            nll_sum=-jnp.where(valid[:-1] & valid[1:], log_probs, 0.0).sum(),
        )

    def token_log_probs(self, hidden: jax.Array, targets: jax.Array, chunk: int = 16):
        """float32 `[B, T]` log-probability of `targets [B, T]` under the next-token distributions
        of final hidden states `hidden [B, T, H]` (`token_scores`)."""
        return self.token_scores(hidden, targets, chunk)[0]

    def token_scores(
        self, hidden: jax.Array, targets: jax.Array, chunk: int = 16
    ) -> tuple[jax.Array, jax.Array]:
        """float32 `[B, T]` log-probability of `targets [B, T]` under the next-token distributions
        of final hidden states `hidden [B, T, H]`, and bool `[B, T]` whether each target is its
        position's argmax (the harness's is_greedy). The vocabulary logits are made `chunk`
        positions at a time: `[B, chunk, V]` at most, since `[B, T, V]` of a 262k vocabulary is
        gigabytes."""
        batch, length = targets.shape
        pad = -length % chunk
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        model = self.model

        def block_scores(block):
            states, ids = block  # [B, chunk, H], [B, chunk]
            logits = model.lm_head_logits(states)
            log_probs = jax.nn.log_softmax(logits, axis=-1)
            picked = jnp.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
            return picked, jnp.argmax(logits, axis=-1) == ids

        blocks = (
            hidden.reshape(batch, -1, chunk, hidden.shape[-1]).swapaxes(0, 1),
            targets.reshape(batch, -1, chunk).swapaxes(0, 1),
        )
        scores = jax.lax.map(block_scores, blocks)
        return tuple(x.swapaxes(0, 1).reshape(batch, -1)[:, :length] for x in scores)

    def step(self, cache: KVCache, tokens: jax.Array) -> tuple[StepOutput, KVCache]:
        """Append one token per row, `tokens [B]`."""
        model = self.model
        hidden, cache = model(tokens[:, None], jnp.ones((tokens.shape[0], 1), bool), cache)
        last = hidden[:, 0]
        return StepOutput(self.next_token_logits(last), last), cache

    def append(
        self, cache: KVCache, tokens: jax.Array, counts: jax.Array
    ) -> tuple[jax.Array, KVCache]:
        """Append the first `counts[b]` (0..L) of `tokens [B, L]` to each row → (final hidden state
        `[B, H]` at each row's last appended token, cache); no logits. Rows with count 0 keep their
        cache and get a meaningless hidden state."""
        valid = jnp.arange(tokens.shape[1])[None, :] < counts[:, None]
        hidden, cache = self.model(tokens, valid, cache)
        index = jnp.clip(counts - 1, 0, tokens.shape[1] - 1)
        return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0], cache


def check_tokenizer_fits(tokenizer, vocab_size: int) -> int:
    """Number of ids the tokenizer can produce; raises if it exceeds the model's embedding size."""
    size = len(tokenizer)
    if size > vocab_size:
        raise ValueError(
            f"tokenizer has {size} tokens but the model embedding has only {vocab_size} rows: "
            "the tokenizer does not belong to this model"
        )
    return size
