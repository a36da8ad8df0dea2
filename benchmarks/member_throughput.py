"""One real member decoding alone: ours against transformers on the *same* GGUF file, side by side.

Each side runs in its own fresh process (so load time and peak resident memory are its own): load
the GGUF (ours: `rlae_jax.models.from_pretrained`; transformers: `AutoModelForCausalLM` with
`gguf_file=`, which dequantizes through the `gguf` package too), then greedy float32 decoding of
exactly `--new-tokens` (and 8) tokens (EOS ignored on both sides) for batches of real task prompts
(`common.task_prompts`), left-padded; a decode step is the time difference of the two runs over the
extra tokens, so prefill cancels (the whole call's time per token is printed too). Ours is timed
after one compile run with the same shapes (the compile time is printed); transformers after one
warm-up run.

    python benchmarks/member_throughput.py                       # both real members, batch 1 and 8
    python benchmarks/member_throughput.py --members smollm2-135m-instruct --batches 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import common

MEMBERS = ("smollm2-135m-instruct", "gemma-3-270m")
GOALS = {1: 1.0, 8: 1.3}  # ours / transformers tokens per second, by batch
LOAD_GOAL = 0.5  # ours / transformers load seconds
SHORT = 8  # new tokens of the short run whose time is subtracted (prefill cancels)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timings(run, new_tokens: int) -> tuple[float, float]:
    """(seconds per decode step, prefill excluded: the time difference of a `new_tokens` and a
    `SHORT`-token run over the extra steps; seconds of the whole `new_tokens` call per token)."""
    full = common.best_time(run, 2)
    short = common.best_time(lambda: run(SHORT), 2)
    return (full - short) / (new_tokens - SHORT), full / new_tokens


def run_ours(name: str, batches: list[int], new_tokens: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlae_jax.models.generate import generate_ids_jit
    from rlae_jax.models import from_pretrained
    from rlae_jax.models.prompts import encode_prompts, left_pad, pad_id_of

    start = time.perf_counter()
    member = from_pretrained(name, dtype="float32")
    common.block(member.state)
    result = {"load_s": time.perf_counter() - start, "steps": {}, "calls": {}, "compile_s": {}}
    no_eos = jnp.asarray(np.array([-1], np.int32))
    for batch in batches:
        prompts = common.task_prompts(batch)
        ids, mask = left_pad(
            encode_prompts(member.tokenizer, prompts, True), pad_id_of(member.tokenizer)
        )

        def run(n=new_tokens):
            return common.block(
                generate_ids_jit(
                    member,
                    jnp.asarray(ids),
                    jnp.asarray(mask),
                    jax.random.key(0),
                    jnp.float32(0.0),
                    jnp.float32(1.0),
                    no_eos,
                    jnp.int32(0),
                    max_new_tokens=n,
                )
            )

        start = time.perf_counter()
        tokens, _ = run()
        result["compile_s"][batch] = time.perf_counter() - start
        run(SHORT)  # compiles the short run's program
        result["steps"][batch], result["calls"][batch] = timings(run, new_tokens)
        result.setdefault("first_row", {})[batch] = np.asarray(tokens)[0, :16].tolist()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def run_transformers(name: str, batches: list[int], new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlae_jax.models.installed import installed_gguf

    path = installed_gguf(name)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    result = {
        "load_s": time.perf_counter() - start,
        "steps": {},
        "calls": {},
        "threads": torch.get_num_threads(),
    }
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for batch in batches:
        prompts = common.task_prompts(batch)
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)

        def run(n=new_tokens):
            with torch.inference_mode():
                return model.generate(
                    **inputs,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )

        out = run()  # warm-up, as ours gets its compile run
        result["steps"][batch], result["calls"][batch] = timings(run, new_tokens)
        width = inputs["input_ids"].shape[1]
        result.setdefault("first_row", {})[batch] = out[0, width : width + 16].tolist()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def side(kind: str, name: str, batches: list[int], new_tokens: int) -> dict:
    """Run one side in a fresh process and return its JSON result."""
    command = [
        sys.executable,
        __file__,
        "--side",
        kind,
        "--members",
        name,
        "--batches",
        ",".join(map(str, batches)),
        "--new-tokens",
        str(new_tokens),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} side failed for {name}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(name: str, ours: dict, theirs: dict, batches: list[int]) -> list[str]:
    lines = [
        f"\n## {name}",
        f"load: ours {ours['load_s']:.1f} s, transformers {theirs['load_s']:.1f} s -> "
        f"{ours['load_s'] / theirs['load_s']:.2f}x (goal <= {LOAD_GOAL}) "
        f"{'PASS' if ours['load_s'] <= LOAD_GOAL * theirs['load_s'] else 'FAIL'}",
        f"peak resident memory: ours {ours['peak_rss_mb']:.0f} MB, transformers "
        f"{theirs['peak_rss_mb']:.0f} MB (torch threads {theirs['threads']})",
        "| batch | ours ms/step | transformers ms/step | ours tok/s | transformers tok/s | "
        "ratio | goal | whole call ms/token ours / theirs | compile s | same first 16 ids |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in batches:
        key = str(batch)
        mine, ref = ours["steps"][key], theirs["steps"][key]
        ratio = ref / mine
        goal = GOALS.get(batch, 1.0)
        lines.append(
            f"| {batch} | {1e3 * mine:.1f} | {1e3 * ref:.1f} | {batch / mine:.1f} | "
            f"{batch / ref:.1f} | {ratio:.2f}x | >= {goal} {'PASS' if ratio >= goal else 'FAIL'}"
            f" | {1e3 * ours['calls'][key]:.1f} / {1e3 * theirs['calls'][key]:.1f}"
            f" | {ours['compile_s'][key]:.1f} | "
            f"{ours['first_row'][key] == theirs['first_row'][key]} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default=",".join(MEMBERS))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--side", choices=("ours", "transformers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.side:
        run = run_ours if args.side == "ours" else run_transformers
        print(json.dumps(run(args.members, batches, args.new_tokens)))
        return
    print(
        f"# member_throughput: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, float32, "
        f"greedy, {args.new_tokens} new tokens\n# {common.machine_info()}"
    )
    for name in args.members.split(","):
        theirs = side("transformers", name, batches, args.new_tokens)
        ours = side("ours", name, batches, args.new_tokens)
        print("\n".join(report(name, ours, theirs, batches)), flush=True)


if __name__ == "__main__":
    main()
