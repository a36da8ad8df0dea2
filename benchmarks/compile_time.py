"""Seconds to trace and compile the ensemble's decode and each member's own decode, per size and
number of new tokens (from 64 new tokens on, the ensemble compiles its step twice: first-phase and
full caches). The members' layers are Python-unrolled, so every call site of a layer compiles it
again.

    python benchmarks/compile_time.py --sizes 100m --new-tokens 20,128
    python benchmarks/compile_time.py --sizes real --new-tokens 64 --batch 8   # the real pair
"""

from __future__ import annotations

import argparse
import time
import warnings

import common
import decode_throughput
from rlae_jax.ensemble import Ensemble
from rlae_jax.engine import decode_jit
from rlae_jax.models.generate import generate_ids_jit


def seconds_to_compile(jitted, args, **static) -> tuple[float, float, int]:
    """(trace + lower seconds, compile seconds, lines of the lowered program)."""
    start = time.perf_counter()
    lowered = jitted.lower(*args, **static)
    lowered_at = time.perf_counter()
    lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at, len(lowered.as_text().splitlines())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default="tiny-real,100m",
        help="comma list of tiny-trained, tiny-real, 100m, real (the installed pair, task prompts)",
    )
    parser.add_argument("--new-tokens", default="20,128", help="comma list of max_new_tokens")
    parser.add_argument("--batch", type=int, default=1, help="prompts per decode")
    opts = parser.parse_args()
    warnings.filterwarnings("ignore", message="union tokens left out")
    print(f"# compile_time  {common.machine_info()}; batch {opts.batch}")
    widths = [13, 6, 10, 8, 9, 9]
    print(
        common.fmt_row(["size", "tokens", "program", "lower s", "compile s", "HLO lines"], widths)
    )
    for size in opts.sizes.split(","):
        members, _ = decode_throughput.make_members(size, 1.0)
        ensemble = Ensemble(members)
        prompts = (
            common.task_prompts(opts.batch) if size == "real" else common.batch_prompts(opts.batch)
        )
        for new_tokens in map(int, opts.new_tokens.split(",")):
            programs = [
                (
                    "ensemble",
                    decode_jit,
                    decode_throughput.ensemble_args(ensemble, prompts, new_tokens),
                    dict(config=decode_throughput.ensemble_config(new_tokens)),
                )
            ]
            programs += [
                (
                    member.name,
                    generate_ids_jit,
                    decode_throughput.member_runner_args(member, prompts),
                    dict(max_new_tokens=new_tokens),
                )
                for member in members
            ]
            for name, jitted, args, static in programs:
                lower_s, compile_s, lines = seconds_to_compile(jitted, args, **static)
                print(
                    common.fmt_row(
                        [size, new_tokens, name, f"{lower_s:.1f}", f"{compile_s:.1f}", lines],
                        widths,
                    )
                )


if __name__ == "__main__":
    main()
