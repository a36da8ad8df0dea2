"""Shared layers: norms, RoPE (HF rotate-half convention), cached GQA attention, MLPs, and the
`CausalLM` base whose `__call__` runs one block of tokens through any family with a KV cache."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlae_jax.models.config import ModelConfig
from rlae_jax.models.kv_cache import EMPTY, KVCache, write_layer


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU's tanh approximation `x/2 · (1 + tanh(u))`, written as the equal `x · sigmoid(2u)`:
    XLA:CPU's tanh is a coarse rational approximation, and on Gemma 3's large activations it moved
    logits past float32 parity with transformers; the sigmoid form is accurate to ~1e-6 relative."""
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    return x * jax.nn.sigmoid(2 * u)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, computed in float32 like HF's LlamaRMSNorm; with `plus_one` (Gemma) the
    scale is `1 + w` (w starts at 0), applied in float32 before the cast back (Gemma3RMSNorm)."""

    def __init__(self, dim: int, eps: float, *, param_dtype, plus_one: bool = False):
        self.scale = nnx.Param(jnp.full((dim,), 0.0 if plus_one else 1.0, param_dtype))
        self.eps, self.plus_one = eps, plus_one

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.plus_one:
            return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)
        return self.scale[...] * normed.astype(x.dtype)


def rms_norm(config: ModelConfig, dim: int, dtype) -> RMSNorm:
    """The config's RMSNorm over `dim` features."""
    return RMSNorm(dim, config.norm_eps, param_dtype=dtype, plus_one=config.norm_plus_one)


def linear(in_dim: int, out_dim: int, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        in_dim,
        out_dim,
        use_bias=bias,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
        kernel_init=nnx.initializers.normal(0.02),
    )


def rope_inverse_frequencies(config: ModelConfig, layer_index: int) -> np.ndarray:
    """`[D/2]` float32 inverse frequencies of one layer, with HF's 'linear' and 'llama3' scaling."""
    dim = config.head_dim
    rope_type, theta, options = config.layer_rope(layer_index)
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    # float32 as transformers rounds it: the power rounded to float32, then its float32 reciprocal
    # (one float32 numpy pow differs in a few entries by an ulp, visible in logits past ~500 tokens)
    inv_freq = np.float32(1.0) / (theta ** exponents.astype(np.float64)).astype(np.float32)
    if rope_type == "linear":
        return (inv_freq / options["factor"]).astype(np.float32)
    if rope_type == "llama3":
        factor = options["factor"]
        low, high = options["low_freq_factor"], options["high_freq_factor"]
        old_context = options["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate `x [B, L, H, D]` by `positions [B, L]` (rotate-half layout, as in transformers)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, L, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def cached_attention(
    q: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    query_positions: jax.Array,
    slot_positions: jax.Array,
    window: int | None,
    scale: float | None = None,
) -> jax.Array:
    """Causal GQA attention of `q [B, L, Hq, D]` over the cache `keys/values [B·Hkv, S, D]`.

    A query at position p sees slots with 0 <= slot position <= p (and p - slot < window, as in
    transformers' sliding-window mask). Scores are q·k · `scale` (default `D ** -0.5`).
    Softmax runs in float32; rows that see no slot (padding queries) return zeros.
    """
    batch, block, num_heads, head_dim = q.shape
    num_kv = keys.shape[0] // batch
    group = num_heads // num_kv
    slots = keys.shape[1]
    # every (row, kv head) pair attends with its G·L queries: [B·Hkv, G·L, D]
    q = q.reshape(batch, block, num_kv, group, head_dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch * num_kv, group * block, head_dim)
    scale = head_dim**-0.5 if scale is None else scale
    scores = jnp.einsum("nqd,nsd->nqs", q, keys, preferred_element_type=jnp.float32) * scale
    slot = slot_positions[:, None, :]
    query = query_positions[:, :, None]
    visible = (slot >= 0) & (slot <= query)
    if window is not None:
        visible &= query - slot < window
    visible = visible[:, None, None]  # [B, 1, 1, L, S]
    scores = jnp.where(
        visible, scores.reshape(batch, num_kv, group, block, slots), jnp.finfo(jnp.float32).min
    )
    probs = jax.nn.softmax(scores, axis=-1) * visible.any(axis=-1, keepdims=True)
    # the output in dot_general's own order, then a transpose of the small result: asking the einsum
    # for the final layout made XLA:CPU take the cache as the matmul's left operand, up to 14x
    # slower (benchmarks/RESULTS-ARCHIVE.md)
    out = jnp.einsum(
        "nqs,nsd->nqd",
        probs.reshape(batch * num_kv, group * block, slots).astype(values.dtype),
        values,
    )
    out = out.reshape(batch, num_kv, group, block, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, block, num_heads, head_dim)


class CausalLM(nnx.Module):
    """Base for every family. Subclasses set `config`, `embedding` (nnx.Embed), `layers` (each
    called as `layer(x, positions, keys, values, slots, slot_positions) -> (x, keys, values)`),
    `norm`, and `lm_head` unless embeddings are tied; they may override `embed`."""

    config: ModelConfig

    def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        return self.embedding(tokens)

    def lm_head_logits(self, x: jax.Array) -> jax.Array:
        """`[..., H] -> [..., V]` float32 logits (soft-capped when the config says so)."""
        if self.config.tie_word_embeddings:
            logits = self.embedding.attend(x).astype(jnp.float32)
        else:
            logits = self.lm_head(x).astype(jnp.float32)
        cap = self.config.final_logit_softcap
        return logits if cap is None else cap * jnp.tanh(logits / cap)

    def __call__(
        self, tokens: jax.Array, valid: jax.Array, cache: KVCache | None = None
    ) -> tuple[jax.Array, KVCache | None]:
        """Run a block `tokens [B, L]` (validity `valid [B, L]`) through the model, appending it to
        `cache`; with no cache, the block attends only to itself (a full forward: cheaper to
        differentiate). Returns final-normed hidden states `[B, L, H]` and the updated cache."""
        if cache is None:
            positions = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
            slot_positions, slots = jnp.where(valid, positions, EMPTY), None
            layer_caches = [(None, None)] * len(self.layers)
        else:
            positions = cache.block_positions(valid)
            cache = cache.with_block_positions(positions, valid)
            slot_positions, slots = cache.slot_positions, cache.write_slots(tokens.shape[1])
            layer_caches = list(zip(cache.keys, cache.values))
        x, keys, values = self.run_layers(
            self.embed(tokens, positions), positions, layer_caches, slots, slot_positions
        )
        if cache is not None:
            cache = cache.replace(keys=keys, values=values).finish_block(valid)
        return self.norm(x), cache

    def run_layers(self, x, positions, layer_caches, slots, slot_positions):
        """Every layer over `x [B, L, H]` → (x, per-layer cache keys, per-layer cache values)."""
        keys, values = [], []
        for layer, (layer_keys, layer_values) in zip(self.layers, layer_caches):
            x, layer_keys, layer_values = layer(
                x, positions, layer_keys, layer_values, slots, slot_positions
            )
            keys.append(layer_keys)
            values.append(layer_values)
        return x, tuple(keys), tuple(values)


def append_and_attend(
    q, k, v, cache_keys, cache_values, slots, positions, slot_positions, window, scale=None
):
    """Write the block's `k, v [B, L, Hkv, D]` into the layer cache at `slots [B, L]` and attend
    with `q` (with no cache, attend over the block itself; `scale` as in `cached_attention`).
    Returns `(output [B, L, Hq, D], cache keys, cache values)`."""
    if cache_keys is None:
        batch, block, num_kv, head_dim = k.shape

        def rows_first(x):  # [B, L, Hkv, D] -> [B·Hkv, L, D]
            return x.transpose(0, 2, 1, 3).reshape(batch * num_kv, block, head_dim)

        out = cached_attention(
            q, rows_first(k), rows_first(v), positions, slot_positions, window, scale
        )
        return out, None, None
    cache_keys = write_layer(cache_keys, k, slots)
    cache_values = write_layer(cache_values, v, slots)
    out = cached_attention(q, cache_keys, cache_values, positions, slot_positions, window, scale)
    return out, cache_keys, cache_values
