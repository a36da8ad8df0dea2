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

    def forward(
        self, tokens: jax.Array, valid: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """Append a block `tokens [B, L]` (validity `valid [B, L]`) to `cache`; hidden
        `[B, L, H]`."""
        return self.model(tokens, valid, cache)

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
        self, input_ids: jax.Array, attention_mask: jax.Array, cache_length: int
    ) -> tuple[StepOutput, jax.Array, KVCache]:
        """Prefill a LEFT-padded batch `[B, T]` into a fresh cache of `cache_length` slots.
        Returns the next-token StepOutput, the prompt summary (mean of valid hidden states,
        `[B, H]`) and the cache."""
        model = self.model
        valid = attention_mask.astype(bool)
        hidden, cache = model(input_ids, valid, self.init_cache(input_ids.shape[0], cache_length))
        weights = valid[..., None].astype(jnp.float32)
        summary = (hidden.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        last = hidden[:, -1]
        return StepOutput(self.next_token_logits(last), last), summary, cache

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
