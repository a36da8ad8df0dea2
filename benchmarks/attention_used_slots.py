"""Decode attention over only the cache slots in use, against `cached_attention` over every slot, on
a long generation's cache: the ensemble reserves `expansion_budget` slots per union token, so late
in a 256-token decode at ~100M its members attend over 527 slots while they use ~300
(benchmarks/RESULTS.md). Two ways to skip the unused slots, each checked against the full attention:
- "slice": `cached_attention` over a static prefix `keys[:, :n]` of the cache (n = the used slots
  rounded up to 64), one compiled program per n as `lax.switch` branches would be;
- "blocked": a `lax.while_loop` over blocks of the used slots with an online softmax (flash-decoding
  style), one compiled program for any fill.

    python benchmarks/attention_used_slots.py
"""

from __future__ import annotations

import argparse
import datetime
import math

import jax
import jax.numpy as jnp
import numpy as np

import common
from rlae_jax.models.layers import cached_attention

SHAPES = {  # name: (B, H, D, S cache slots, slots in use)
    "100m MHA B=16, 300 of 527 slots used": (16, 12, 64, 527, 300),
    "100m MHA B=1, 300 of 527 slots used": (1, 12, 64, 527, 300),
    "100m MHA B=16, 527 of 527 slots used": (16, 12, 64, 527, 527),
}


def blocked_attention(q, keys, values, query_positions, slot_positions, used, block):
    """`cached_attention` (no window) over the first `used` (int32 []) slots only, `block` slots at
    a time with an online softmax: `q [B, L, H, D]`, `keys/values [B·H, S, D]` (MHA) →
    `[B, L, H, D]`."""
    batch, queries, heads, dim = q.shape
    slots = keys.shape[1]
    q = q.transpose(0, 2, 1, 3).reshape(batch * heads, queries, dim) / math.sqrt(dim)

    def body(carry):
        index, running_max, total, out = carry
        # the last block may overlap the one before it
        start = jnp.minimum(index * block, slots - block)
        key_block, value_block = (
            jax.lax.dynamic_slice_in_dim(x, start, block, axis=1) for x in (keys, values)
        )
        positions = jax.lax.dynamic_slice_in_dim(slot_positions, start, block, axis=1)[:, None, :]
        fresh = start + jnp.arange(block) >= index * block  # not seen in an earlier block
        visible = (positions >= 0) & (positions <= query_positions[:, :, None]) & fresh
        visible = jnp.repeat(visible, heads, axis=0)  # [B·H, L, block]
        scores = jnp.where(visible, jnp.einsum("nqd,nsd->nqs", q, key_block), -jnp.inf)
        new_max = jnp.maximum(running_max, scores.max(-1))
        shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        probs = jnp.exp(scores - shift[..., None])
        rescale = jnp.exp(running_max - shift)
        out = out * rescale[..., None] + jnp.einsum("nqs,nsd->nqd", probs, value_block)
        return index + 1, new_max, total * rescale + probs.sum(-1), out

    init = (
        jnp.int32(0),
        jnp.full(q.shape[:2], -jnp.inf),
        jnp.zeros(q.shape[:2]),
        jnp.zeros(q.shape),
    )
    _, _, total, out = jax.lax.while_loop(lambda c: c[0] * block < used, body, init)
    out = jnp.where(total[..., None] > 0, out / jnp.maximum(total, 1e-30)[..., None], 0.0)
    return out.reshape(batch, heads, queries, dim).transpose(0, 2, 1, 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    opts = parser.parse_args()
    print(f"# attention_used_slots  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# {common.machine_info()}")
    print(
        f"# ms per decode attention call (one query per row), fastest of {opts.repeats}; max "
        "|difference| from attending over every slot"
    )
    rng = np.random.default_rng(0)
    for name, (batch, heads, dim, slots, used) in SHAPES.items():
        q = jnp.asarray(rng.normal(size=(batch, 1, heads, dim)), jnp.float32)
        keys, values = (
            jnp.asarray(rng.normal(size=(batch * heads, slots, dim)), jnp.float32) for _ in range(2)
        )
        fill = rng.integers(used - 40, used + 1, size=batch)  # rows fill their caches unevenly
        slot_positions = jnp.asarray(
            np.where(np.arange(slots) < fill[:, None], np.arange(slots), -1), jnp.int32
        )
        query_positions = jnp.asarray(fill[:, None] - 1, jnp.int32)
        args = (q, keys, values, query_positions, slot_positions)
        prefix = min(slots, -(-int(fill.max()) // 64) * 64)
        variants = {
            "all slots": jax.jit(lambda q, k, v, qp, sp: cached_attention(q, k, v, qp, sp, None)),
            f"slice {prefix}": jax.jit(
                lambda q, k, v, qp, sp: cached_attention(
                    q, k[:, :prefix], v[:, :prefix], qp, sp[:, :prefix], None
                )
            ),
            **{
                f"blocked {block}": jax.jit(
                    lambda q, k, v, qp, sp, block=block: blocked_attention(
                        q, k, v, qp, sp, jnp.int32(fill.max()), block
                    )
                )
                for block in (64, 128)
            },
        }
        reference = variants["all slots"](*args)
        cells = []
        for label, fn in variants.items():
            difference = float(jnp.abs(fn(*args) - reference).max())
            ms = (
                common.best_time(lambda fn=fn: jax.block_until_ready(fn(*args)), opts.repeats) * 1e3
            )
            cells.append(f"{label} {ms:.3f} ms ({difference:.0e})")
        print(f"{name:38s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
