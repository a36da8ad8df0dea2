"""Throughput of the LM Evaluation Harness backend on `generate_until` requests: N requests (default
200) of distinct prompts of several lengths, run through `RlaeLM.generate_until` as the harness
would send them; prints requests/s of a cold pass (compiles included) and of a warm pass (same
requests again), and the number of compiles (bounded by the prompt-length buckets met).

    python benchmarks/harness_throughput.py                                    # two tiny members
    python benchmarks/harness_throughput.py --members 'smollm2-135m-instruct|gemma-3-270m' \
        --max-gen-toks 32 --max-batch 8
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import common
from lm_eval.api.instance import Instance

from rlae_jax.harness import RlaeLM
from rlae_jax.harness.scoring import encode
from rlae_jax.models.prompts import bucket_length


def tiny_members(folder: pathlib.Path) -> str:
    """Two tiny random members with different tokenizers (a Llama, a GPT-2), saved in `folder`."""
    from tiny_models import save_tiny_model, train_byte_level_tokenizer

    for name, family, vocab in (("llama", "llama", 384), ("gpt2", "gpt2", 320)):
        save_tiny_model(family, folder / name, train_byte_level_tokenizer(vocab), seed=vocab)
    return f"{folder / 'llama'}|{folder / 'gpt2'}"


def prompts(count: int) -> list[str]:
    """`count` distinct prompts: the benchmark prompts, each repeated 1-4 times with a number."""
    return [
        " ".join([common.PROMPTS[i % len(common.PROMPTS)]] * (1 + (i // 7) % 4)) + f" ({i})"
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="tiny", help="'tiny' or |-separated paths / presets")
    parser.add_argument("--strategy", default="uniform")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-gen-toks", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        members = tiny_members(pathlib.Path(tmp)) if args.members == "tiny" else args.members
        lm = RlaeLM(
            members=members, strategy=args.strategy, max_batch=args.max_batch, dtype=args.dtype
        )
    texts = prompts(args.requests)
    settings = {"until": ["\n\n"], "max_gen_toks": args.max_gen_toks, "do_sample": False}
    requests = [Instance("generate_until", {}, (t, settings), i) for i, t in enumerate(texts)]
    lengths = sorted(tuple(len(encode(m.tokenizer, t)) for m in lm.members) for t in texts)
    batches = [lengths[i : i + args.max_batch] for i in range(0, len(texts), args.max_batch)]
    buckets = {tuple(bucket_length(max(col)) for col in zip(*batch)) for batch in batches}
    print(common.machine_info())
    print(
        f"members {members} | strategy {args.strategy} | {len(texts)} requests | max_gen_toks "
        f"{args.max_gen_toks} | max_batch {args.max_batch} | length buckets {sorted(buckets)}"
    )
    for name in ("cold (compiles included)", "warm"):
        began = time.perf_counter()
        lm.generate_until(requests)
        elapsed = time.perf_counter() - began
        print(
            f"{name}: {len(texts) / elapsed:.2f} requests/s ({elapsed:.1f} s), compiles so far "
            f"{lm.compile_count}"
        )


if __name__ == "__main__":
    main()
