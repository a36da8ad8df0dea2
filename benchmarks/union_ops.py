"""The union step's primitives on XLA:CPU, side by side: `jnp.argmax` against `first_argmax` (a max
and a min over indices); the union mix as one scatter-add into `[B, U]` against the gathers
`Alignment.mix` uses; the greedy pick as mix + first_argmax against `Alignment.mixed_argmax`
(gathers only the union tokens several member ids spell). Real GPT-2 50k + Llama 2 32k vocabularies
(trained fallbacks without the fixtures); each op runs 50 times inside one compiled `fori_loop`,
fastest of --repeats.

    python benchmarks/union_ops.py
"""

from __future__ import annotations

import argparse
import datetime
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import common
from rlae_jax.align import build_alignment
from rlae_jax.sampling import first_argmax

ITERATIONS = 50


def scatter_mix(probs, weights, alignment):
    """The union mix as one scatter-add of every member's weighted probabilities `[B, N·V]` into
    `[B, U]`."""
    batch = probs[0].shape[0]
    weighted = jnp.concatenate([w[:, None] * p for w, p in zip(weights.T, probs)], axis=1)
    index = jnp.concatenate(
        [alignment.member_to_union[n, : p.shape[1]] for n, p in enumerate(probs)]
    )
    return (
        jnp.zeros((batch, alignment.num_union), weighted.dtype)
        .at[:, index]
        .add(weighted, mode="drop")
    )


def per_call_ms(op, inputs, repeats):
    """Fastest milliseconds of one `op(*inputs)` call, from a compiled loop of ITERATIONS calls
    whose inputs change every iteration (so nothing is hoisted)."""

    @jax.jit
    def loop(inputs):
        def body(_, carry):
            total, shift = carry
            moved = jax.tree.map(
                lambda x: x + shift * 1e-7 if x.dtype == jnp.float32 else x, inputs
            )
            out = op(*moved).astype(jnp.float32)
            return total + out.sum(), shift + 1.0

        return jax.lax.fori_loop(0, ITERATIONS, body, (jnp.float32(0), jnp.float32(0)))

    jax.block_until_ready(loop(inputs))
    return common.best_time(lambda: jax.block_until_ready(loop(inputs)), repeats) / ITERATIONS * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    warnings.filterwarnings("ignore", message="union tokens left out")
    *tokenizers, note = common.real_tokenizers()
    alignment = build_alignment(tokenizers)
    sizes = alignment.vocab_sizes
    print(f"# union_ops  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# {common.machine_info()}")
    print(
        f"# {note}; V={list(sizes)}, union {alignment.num_union}; ms per call, fastest of "
        f"{opts.repeats}"
    )
    for batch in (int(b) for b in opts.batches.split(",")):
        keys = jax.random.split(jax.random.key(batch), len(sizes))
        probs = [
            jax.nn.softmax(jax.random.normal(k, (batch, v)), axis=-1) for k, v in zip(keys, sizes)
        ]
        weights = jnp.full((batch, len(sizes)), 1.0 / len(sizes))
        union = alignment.mix(probs, weights)
        np.testing.assert_allclose(
            scatter_mix(probs, weights, alignment), union, rtol=1e-5, atol=1e-9
        )
        np.testing.assert_array_equal(first_argmax(union), jnp.argmax(union, axis=-1))
        argmax = per_call_ms(lambda x: jnp.argmax(x, axis=-1), (union,), opts.repeats)
        first = per_call_ms(first_argmax, (union,), opts.repeats)
        scatter = per_call_ms(
            lambda p, w: scatter_mix(p, w, alignment), (probs, weights), opts.repeats
        )
        gather = per_call_ms(alignment.mix, (probs, weights), opts.repeats)
        complete = alignment.union_complete
        np.testing.assert_array_equal(
            alignment.mixed_argmax(probs, weights), first_argmax(jnp.where(complete, union, -1.0))
        )
        mix_then_argmax = per_call_ms(
            lambda p, w: first_argmax(jnp.where(complete, alignment.mix(p, w), -1.0)),
            (probs, weights),
            opts.repeats,
        )
        split_pick = per_call_ms(alignment.mixed_argmax, (probs, weights), opts.repeats)
        print(
            f"B={batch:<3d} argmax over [B, U]: jnp.argmax {argmax:7.3f} ms  first_argmax "
            f"{first:7.3f} ms  ratio {argmax / first:5.2f}"
        )
        print(
            f"B={batch:<3d} union mix:          scatter-add {scatter:6.3f} ms  gathers      "
            f"{gather:7.3f} ms  ratio {scatter / gather:5.2f}"
        )
        print(
            f"B={batch:<3d} greedy pick:        mix+argmax  {mix_then_argmax:6.3f} ms  "
            f"mixed_argmax {split_pick:7.3f} ms  ratio {mix_then_argmax / split_pick:5.2f}"
        )


if __name__ == "__main__":
    main()
