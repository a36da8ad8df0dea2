"""Throughput of the LM Evaluation Harness backend: N requests (default 200) of distinct prompts of
several lengths, run through `RlaeLM.generate_until` (or `loglikelihood`, each prompt with a short
continuation, scored by the ensemble's token- or sequence-level mixture) as the harness would send
them; prints requests/s of a cold pass (compiles included) and of a warm pass (same requests
again), and the number of compiles (bounded by the prompt-length buckets met).

    python benchmarks/harness_throughput.py                                    # two tiny members
    python benchmarks/harness_throughput.py --members 'smollm2-135m-instruct|gemma-3-270m' \
        --max-gen-toks 32 --max-batch 8
    python benchmarks/harness_throughput.py --request-type loglikelihood --ensemble-ll sequence
"""

from __future__ import annotations

import argparse
import time

import common
from lm_eval.api.instance import Instance

from rlae_jax.harness import RlaeLM
from rlae_jax.harness.scoring import encode
from rlae_jax.models import Member, build_model
from rlae_jax.models.prompts import bucket_length


def tiny_members() -> list[Member]:
    """Two tiny random members with different tokenizers, built in process: a GPT-2 with a
    byte-level BPE and a Llama with a metaspace Unigram (`common.trained_tokenizers`)."""
    kinds = ("gpt2", "llama")
    return [
        Member.from_model(
            build_model(common.tiny_config(kind, len(t), t.eos_token_id), seed=i), t, name=kind
        )
        for i, (kind, t) in enumerate(zip(kinds, common.trained_tokenizers()))
    ]


def prompts(count: int) -> list[str]:
    """`count` distinct prompts: the benchmark prompts, each repeated 1-4 times with a number."""
    return [
        " ".join([common.PROMPTS[i % len(common.PROMPTS)]] * (1 + (i // 7) % 4)) + f" ({i})"
        for i in range(count)
    ]


CONTINUATIONS = (" and then", " the end.", " 42", " a little robot that counts")


def harness_requests(kind: str, texts: list[str], max_gen_toks: int) -> list[Instance]:
    """`generate_until` requests of `texts` (greedy, `max_gen_toks`, stop at a blank line), or
    `loglikelihood` requests of each text with one of CONTINUATIONS."""
    if kind == "generate_until":
        settings = {"until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False}
        return [Instance(kind, {}, (t, settings), i) for i, t in enumerate(texts)]
    pairs = [(t, CONTINUATIONS[i % len(CONTINUATIONS)]) for i, t in enumerate(texts)]
    return [Instance(kind, {}, pair, i) for i, pair in enumerate(pairs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="tiny", help="'tiny' or |-separated paths / presets")
    parser.add_argument("--strategy", default="uniform")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-gen-toks", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--request-type", choices=("generate_until", "loglikelihood"), default="generate_until"
    )
    parser.add_argument("--ensemble-ll", choices=("token", "sequence"), default="token")
    args = parser.parse_args()
    members = tiny_members() if args.members == "tiny" else args.members
    lm = RlaeLM(
        members=members,
        strategy=args.strategy,
        max_batch=args.max_batch,
        dtype=args.dtype,
        ensemble_ll=args.ensemble_ll,
    )
    texts = prompts(args.requests)
    requests = harness_requests(args.request_type, texts, args.max_gen_toks)
    lengths = sorted(tuple(len(encode(m.tokenizer, t)) for m in lm.members) for t in texts)
    batches = [lengths[i : i + args.max_batch] for i in range(0, len(texts), args.max_batch)]
    buckets = {tuple(bucket_length(max(col)) for col in zip(*batch)) for batch in batches}
    print(common.machine_info())
    print(
        f"members {args.members} | strategy {args.strategy} | {len(texts)} {args.request_type} "
        f"requests | max_gen_toks {args.max_gen_toks} | ensemble_ll {args.ensemble_ll} | "
        f"max_batch {args.max_batch} | length buckets {sorted(buckets)}"
    )
    for name in ("cold (compiles included)", "warm"):
        began = time.perf_counter()
        getattr(lm, args.request_type)(requests)
        elapsed = time.perf_counter() - began
        print(
            f"{name}: {len(texts) / elapsed:.2f} requests/s ({elapsed:.1f} s), compiles so far "
            f"{lm.compile_count}"
        )


if __name__ == "__main__":
    main()
