"""Attention's probabilities · values product on XLA:CPU, written two ways side by side: the einsum
asking for the output layout `blhgd` against the dot's own order `bhgld` plus a transpose of the
small result, on a `[B, H_kv, S, D]` cache. `cached_attention` keeps to the dot's own order (its
cache is now `[B·H_kv, S, D]`, the same product with B and H_kv merged). Shapes: decode (L=1) and
prefill blocks for the benchmark members, a ~100M MHA member and a Llama-3-style GQA member;
each product runs 20 times inside one compiled `fori_loop`, fastest of --repeats.

    python benchmarks/attention_einsum.py
"""

from __future__ import annotations

import argparse
import datetime

import jax
import jax.numpy as jnp
import numpy as np

import common

ITERATIONS = 20
SHAPES = {  # name: (B, H_kv, G query heads per kv head, S cache slots, D head dim, L queries)
    "tiny llama decode B=16": (16, 2, 2, 271, 16, 1),
    "tiny llama decode B=1": (1, 2, 2, 271, 16, 1),
    "100m MHA decode B=16": (16, 12, 1, 300, 64, 1),
    "100m MHA decode B=1": (1, 12, 1, 300, 64, 1),
    "GQA 8x4 decode B=16": (16, 8, 4, 300, 64, 1),
    "GQA 8x4 decode B=1": (1, 8, 4, 300, 64, 1),
    "100m MHA prefill 128": (4, 12, 1, 128, 64, 128),
    "GQA 8x4 prefill 128": (4, 8, 4, 128, 64, 128),
}


def output_layout(probs, values):
    return jnp.einsum("bhgls,bhsd->blhgd", probs, values)


def dot_order(probs, values):
    return jnp.einsum("bhgls,bhsd->bhgld", probs, values).transpose(0, 3, 1, 2, 4)


def per_call_ms(product, probs, values, repeats):
    @jax.jit
    def loop(probs, values):
        def body(_, total):
            return total + product(probs + total[0, 0, 0, 0, 0] * 0, values)

        return jax.lax.fori_loop(0, ITERATIONS, body, jnp.zeros_like(output_layout(probs, values)))

    jax.block_until_ready(loop(probs, values))
    return (
        common.best_time(lambda: jax.block_until_ready(loop(probs, values)), repeats)
        / ITERATIONS
        * 1e3
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    opts = parser.parse_args()
    print(f"# attention_einsum  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# {common.machine_info()}")
    print(f"# ms per probs·values product, fastest of {opts.repeats}; shape (B, H_kv, G, S, D, L)")
    for name, (batch, heads, group, slots, dim, queries) in SHAPES.items():
        keys = jax.random.split(jax.random.key(0))
        probs = jax.random.uniform(keys[0], (batch, heads, group, queries, slots))
        values = jax.random.normal(keys[1], (batch, heads, slots, dim))
        np.testing.assert_allclose(
            dot_order(probs, values), output_layout(probs, values), rtol=1e-4, atol=1e-4
        )
        before = per_call_ms(output_layout, probs, values, opts.repeats)
        after = per_call_ms(dot_order, probs, values, opts.repeats)
        print(
            f"{name:24s} {str((batch, heads, group, slots, dim, queries)):24s} 'blhgd' "
            f"{before:7.4f} ms  'bhgld' + transpose {after:7.4f} ms  ratio {before / after:5.2f}"
        )


if __name__ == "__main__":
    main()
