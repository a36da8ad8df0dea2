"""Where a decode step's time goes: milliseconds per step of each XLA op inside the loop of the
uniform greedy ensemble and of both members stepped together without union work
(decode_throughput.py's "together", the floor), from a `jax.profiler` trace of one compiled run of
each.

Each op that ran more than once (the loop's: prefill ops run once) is named with its jax source
(`op_name` metadata, e.g. `while/body/cond/branch_0_fun/add`: an add inside the greedy-pick branch;
the HLO opcode for ops XLA created), its output shape, its time per step and its calls per step
(below 1 inside loops that run only on some steps, such as the re-spelling passes). Ops of the two
members' layers and heads appear in both programs; what only the ensemble has is the union work.
Op times can overlap (XLA:CPU runs independent ops concurrently on its thread pool), so their sum
may exceed the wall time per step, which is printed first. Tracing slows every op: read shares, not
absolute times. On a GPU, kernels that libraries launch (cuBLAS matmuls) may carry no HLO name and
are then left out: compare the listed sum with the wall time.

    python benchmarks/profile_step.py --size tiny-real --batch 16
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import json
import pathlib
import re
import tempfile
import time
import warnings

import jax

import common
import decode_throughput
from rlae_jax.ensemble import Ensemble

INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(")
OP_NAME = re.compile(r'op_name="([^"]*)"')


def trace_name(name: str) -> str:
    """An op's name as trace events spell it on any backend (GPU: `fusion_3` for `fusion.3`)."""
    return name.replace(".", "_")


def op_table(compiled_text: str) -> dict[str, tuple[str, str]]:
    """trace_name of each instruction of a compiled program → (output shape, jax source): its
    op_name metadata, or its HLO opcode for ops XLA created (e.g. a matrix-vector `dot` after layout
    passes)."""
    table = {}
    for line in compiled_text.splitlines():
        match = INSTRUCTION.match(line)
        if match:
            name, shape, opcode = match.groups()
            op_name = OP_NAME.search(line)
            source = re.sub(r"^jit\([^)]*\)/", "", op_name.group(1)) if op_name else f"({opcode})"
            table.setdefault(trace_name(name), (shape, source))
    return table


def traced_op_times(run, steps: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """(wall ms/step, trace_name → (ms/step, calls/step)) of one traced `run()` after a warm-up."""
    run()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            run()
            wall = time.perf_counter() - start
        trace_file = next(pathlib.Path(folder).rglob("*.trace.json.gz"))
        with gzip.open(trace_file) as handle:
            events = json.load(handle)["traceEvents"]
    total, calls = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            total[trace_name(event["name"])] += event.get("dur", 0)
            calls[trace_name(event["name"])] += 1
    return wall * 1e3 / steps, {
        name: (total[name] / 1e3 / steps, calls[name] / steps) for name in total
    }


def report(label: str, wall_ms: float, times: dict, table: dict, top: int, steps: int) -> None:
    """Print the wall time and the `top` costliest ops of one program that ran more than once (the
    decode loop's; prefill ops run once)."""
    repeated = sorted(
        ((ms, per_step, name) for name, (ms, per_step) in times.items() if per_step * steps > 1.5),
        reverse=True,
    )
    in_loop = [event for event in repeated if event[2] in table]
    print(
        f"\n## {label}: wall {wall_ms:.3f} ms per step (traced run, prefill included); ops that "
        f"ran more than once sum to {sum(ms for ms, _, _ in in_loop):.3f} ms per step in "
        f"{sum(per_step for _, per_step, _ in in_loop):.1f} calls per step"
    )
    print(f"{'ms/step':>8} {'calls':>5}  {'op':30s} {'shape':32s} jax source")
    for ms, per_step, name in in_loop[:top]:
        shape, source = table[name]
        print(f"{ms:8.3f} {per_step:5.1f}  {name[:30]:30s} {shape[:32]:32s} {source[-80:]}")
    others = [event for event in repeated if event[2] not in table and not event[2].startswith("$")]
    print(
        "other trace events (not Python) that ran more than once: runtime work such as copies, "
        "host syncs, library kernels"
    )
    for ms, per_step, name in others[:8]:
        print(f"{ms:8.3f} {per_step:5.1f}  {name[:100]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny-real", help="tiny-trained, tiny-real or 100m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128, help="new tokens of the traced run")
    parser.add_argument("--top", type=int, default=20, help="ops listed per program")
    parser.add_argument(
        "--features",
        choices=decode_throughput.FEATURE_USES,
        default="none",
        help="what the ensemble does with the span features, as in decode_throughput.py",
    )
    parser.add_argument(
        "--prompts",
        choices=("distinct", "same"),
        default="distinct",
        help="batch rows: distinct prompts or one prompt repeated, as in decode_throughput.py",
    )
    opts = parser.parse_args()
    warnings.filterwarnings("ignore", message="union tokens left out")
    members, note = decode_throughput.make_members(opts.size, 1.0)
    ensemble = Ensemble(members)
    prompts = common.batch_prompts(opts.batch, opts.prompts == "distinct")
    print(f"# profile_step  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# {common.machine_info()}")
    print(
        f"# {opts.size}: {note}; union {ensemble.alignment.num_union}; batch {opts.batch} "
        f"({opts.prompts} prompts), {opts.tokens} new tokens, greedy, uniform weights; features: "
        f"{decode_throughput.FEATURE_USES[opts.features]}"
    )

    program = decode_throughput.ensemble_runner(
        ensemble, prompts, opts.tokens, features=opts.features
    )
    report(
        "ensemble",
        *traced_op_times(program, opts.tokens),
        op_table(program.compiled.as_text()),
        opts.top,
        opts.tokens,
    )
    together = decode_throughput.together_runner(members, prompts, opts.tokens)
    report(
        "together",
        *traced_op_times(together, opts.tokens),
        op_table(together.compiled.as_text()),
        opts.top,
        opts.tokens,
    )


if __name__ == "__main__":
    main()
