"""Per-step decode cost of each member alone and of the uniform greedy ensemble.

Seconds per generated token = (time of an N2-token run − time of an N1-token run) / (N2 − N1), so
prefill cancels out; every program is compiled before timing; each time is the fastest of --repeats
runs, interleaved across the members and the ensemble. With --candidates, also counts how often the
certified-candidate shortcut of `choose_union_tokens` is taken (untimed run with a host callback in
the full-union fallback branch). Besides ensemble / Σ member steps, prints ensemble / Σ ingest_n ·
member_n: members that take in several tokens per union token (ingest/step > 1, e.g. a random GPT-2
member re-spelling Llama-only pieces) do real extra member work that a single member step does not
count; the second ratio is the engine's own overhead. "together" runs both members in one compiled
loop, each greedy on its own tokens with its own-size cache and no union work: the floor of any
engine that steps the members in one loop (on a CPU their weights and caches then share the caches
and cores); ensemble / together is what the union work and re-spelling add on top. "together+Z" is
`together` with each member also taking its softmax normaliser every step (`jax.nn.logsumexp` of its
logits, the cheapest form measured): the least any exact mixing of the members' probabilities adds
(a member alone only takes an argmax of its logits), so (together+Z) / Σ member steps is a floor for
the ensemble's ratio (`--no-floors` skips both, two compiles fewer each). `--command-buffers
loops,xla` compiles every program twice, with the library's decode-loop options (on a GPU: loops and
conditionals inside command buffers) and with XLA's default command buffers, and times all of them
interleaved.

    python benchmarks/decode_throughput.py                    # tiny (trained + real vocabs), 100m
    python benchmarks/decode_throughput.py --sizes real --batches 1,8   # the installed real pair
    python benchmarks/decode_throughput.py --sizes 100m --batches 1,16 --tokens 8,40 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import common
from rlae_jax.runtime.compile_options import XLA_DEFAULT_COMMAND_BUFFERS, decode_loop_options
from rlae_jax.models.generate import generate_ids_jit
from rlae_jax.engine import (
    CallableWeightFn,
    DecodeConfig,
    decode,
    decode_jit,
    mixing,
    resolve_strategy,
    tokenize_for_members,
)
from rlae_jax.ensemble import Ensemble
from rlae_jax.models import Member, build_model
from rlae_jax.models.prompts import encode_prompts, left_pad, pad_id_of
from rlae_jax.models.sampling import first_argmax

GOALS = {"tiny": 1.3, "100m": 1.15, "real": 1.15, "real-batch": 1.25}
DEFAULT_TOKENS = {"tiny-trained": "16,128", "tiny-real": "16,128", "100m": "4,20", "real": "4,20"}
# --command-buffers: compile options of every program of a variant (None: the jit's own)
COMMAND_BUFFERS = {
    # the library's decode_loop_options(): on a GPU, loops and conditionals in command buffers
    "loops": None,
    # XLA's default command buffers
    "xla": {"xla_gpu_enable_command_buffer": XLA_DEFAULT_COMMAND_BUFFERS},
}


def sharpen(member: Member, factor: float) -> Member:
    """Scale the final norm (hence the logits) by `factor`: peaked, trained-like distributions."""
    if factor == 1.0:
        return member
    state = jax.tree_util.tree_map_with_path(
        lambda path, x: x * factor if jax.tree_util.keystr(path).startswith("['norm']") else x,
        member.state,
    )
    return member.replace(state=state)


def make_members(size: str, head_scale: float):
    """(members, tokenizer note) for a size: tiny-trained, tiny-real, 100m (random weights) or real
    (the installed SmolLM2-135M-Instruct and Gemma-3-270M, not sharpened)."""
    if size == "real":
        from rlae_jax.models import from_pretrained

        names = ("smollm2-135m-instruct", "gemma-3-270m")
        return [from_pretrained(n, name=n) for n in names], "real members " + " + ".join(names)
    if size == "tiny-trained":
        tokenizers, note = (
            common.trained_tokenizers(),
            "trained byte-level BPE 384 + metaspace Unigram 200",
        )
        configs = [
            common.tiny_config(t, len(tok), tok.eos_token_id)
            for t, tok in zip(("gpt2", "llama"), tokenizers)
        ]
    else:
        *tokenizers, note = common.real_tokenizers()
        if size == "tiny-real":
            configs = [
                common.tiny_config(t, len(tok), tok.eos_token_id)
                for t, tok in zip(("gpt2", "llama"), tokenizers)
            ]
        else:
            configs = [
                common.gpt2_124m_config(),
                common.llama_100m_config(len(tokenizers[1]), tokenizers[1].eos_token_id),
            ]
    members = [
        sharpen(Member.from_model(build_model(c, seed=i), tok, name=c.model_type), head_scale)
        for i, (c, tok) in enumerate(zip(configs, tokenizers))
    ]
    return members, note


@contextlib.contextmanager
def counting_fallbacks(counter: list):
    """Patch the engine's full-union branch to count its executions on the host."""
    original = mixing.choose_from_full_union

    def counted(*args):
        jax.debug.callback(lambda: counter.append(1))
        return original(*args)

    mixing.choose_from_full_union = counted
    try:
        yield
    finally:
        mixing.choose_from_full_union = original


class Program(NamedTuple):
    """One benchmarked program, compiled ahead of its timed runs."""

    compiled: jax.stages.Compiled
    args: tuple

    def __call__(self):
        return common.block(self.compiled(*self.args))

    @property
    def working_bytes(self) -> int:
        """Bytes XLA allocates beyond the run's inputs and outputs (KV caches, activations)."""
        return self.compiled.memory_analysis().temp_size_in_bytes


def compile_program(jitted, args, options=None, **static) -> Program:
    """`jitted` compiled for `args`, with `options` (XLA compile options) over the jit's own."""
    return Program(jitted.lower(*args, **static).compile(options), args)


FEATURE_USES = {  # --features: what the decode does with the per-span features
    "none": "uniform weights, nothing recorded (XLA drops the features)",
    "recorded": "uniform weights, every span's features recorded",
    "agent": "features recorded and read, JS divergence included, as an RL agent's weight_fn does "
    "(weights stay uniform)",
}


def ensemble_config(new_tokens, candidates=0, expansion_budget=2, features="none") -> DecodeConfig:
    """The benchmarked decode: greedy full-union selection (uniform weights), all new_tokens."""
    return DecodeConfig(
        max_new_tokens=new_tokens,
        stop_at_eos=False,
        record_features=features != "none",
        candidates_per_member=candidates,
        expansion_budget=expansion_budget,
    )


def reads_every_feature(features) -> jax.Array:
    """Uniform `[B, N]` weights depending on every feature (0 × their sum): none compiled away."""
    total = sum(
        jnp.sum(leaf.astype(jnp.float32).reshape(leaf.shape[0], -1), axis=1)
        for leaf in jax.tree.leaves(features)
    )
    return features.previous_weights + 0.0 * total[:, None]


def ensemble_args(ensemble, prompts, new_tokens, features="none") -> tuple:
    if features == "agent":
        weight_fn = CallableWeightFn(reads_every_feature, optional_features=("js_divergence",))
    else:
        weight_fn = resolve_strategy("uniform", len(ensemble))
    batch = tokenize_for_members(ensemble.members, prompts, new_tokens)
    return (
        ensemble,
        batch,
        weight_fn,
        jax.random.key(0),
        jnp.float32(0.0),
        jnp.float32(1.0),
    )


def ensemble_runner(ensemble, prompts, new_tokens, options=None, **settings) -> Program:
    config = ensemble_config(new_tokens, **settings)
    args = ensemble_args(ensemble, prompts, new_tokens, settings.get("features", "none"))
    return compile_program(decode_jit, args, options, config=config)


def member_runner_args(member, prompts) -> tuple:
    """`generate_ids` arguments: greedy decoding of `prompts` by `member` alone, no EOS stop."""
    ids, mask = left_pad(encode_prompts(member.tokenizer, prompts), pad_id_of(member.tokenizer))
    return (
        member,
        jnp.asarray(ids),
        jnp.asarray(mask),
        jax.random.key(0),
        jnp.float32(0.0),
        jnp.float32(1.0),
        jnp.asarray([-1], jnp.int32),
        jnp.int32(pad_id_of(member.tokenizer)),
    )


def member_runner(member, prompts, new_tokens, options=None) -> Program:
    return compile_program(
        generate_ids_jit, member_runner_args(member, prompts), options, max_new_tokens=new_tokens
    )


@functools.partial(
    jax.jit, static_argnames=("new_tokens", "normalisers"), compiler_options=decode_loop_options()
)
def members_together(members, input_ids, attention_masks, new_tokens, normalisers=False):
    """Prefill every member on its own prompt `[B, T_n]` and step each greedily on its own tokens in
    one `while_loop` for new_tokens steps (caches of T_n + new_tokens slots, as alone); with
    `normalisers`, each step also takes each member's logsumexp (added to the result, so it is
    computed). → sum of tokens `[B]` (float32)."""
    logits, caches = [], []
    for member, ids, mask in zip(members, input_ids, attention_masks):
        filled = member.prefill(ids, mask, ids.shape[1] + new_tokens)
        out, cache = filled.step, filled.cache
        logits.append(out.logits)
        caches.append(cache)

    def body(carry):
        step, logits, caches, total = carry
        tokens = [first_argmax(member_logits) for member_logits in logits]
        if normalisers:
            total += sum(jax.nn.logsumexp(x, axis=-1) for x in logits)
        outputs = [
            member.step(cache, token) for member, cache, token in zip(members, caches, tokens)
        ]
        return (
            step + 1,
            tuple(out.logits for out, _ in outputs),
            tuple(cache for _, cache in outputs),
            total + sum(tokens),
        )

    carry = (
        jnp.int32(0),
        tuple(logits),
        tuple(caches),
        jnp.zeros(input_ids[0].shape[0], jnp.float32),
    )
    return jax.lax.while_loop(lambda c: c[0] < new_tokens, body, carry)[-1]


def together_runner(members, prompts, new_tokens, normalisers=False, options=None) -> Program:
    batch = tokenize_for_members(members, prompts, new_tokens)
    return compile_program(
        members_together,
        (members, batch.input_ids, batch.attention_mask),
        options,
        new_tokens=new_tokens,
        normalisers=normalisers,
    )


def step_seconds(make_runners, tokens, repeats) -> tuple[list[float], list[int], list]:
    """Per-token seconds of each runner from the N2 − N1 difference, the working bytes of its
    N2-token program and that program's result. Every program is compiled and run once first; then
    the runs are interleaved (each repeat times every runner once) and each keeps its fastest, so a
    slow phase of the shared machine hits all of them alike."""
    n1, n2 = tokens
    runs = [(make(n1), make(n2)) for make in make_runners]
    best = [[float("inf"), float("inf")] for _ in runs]
    results = [[run() for run in run_pair][1] for run_pair in runs]
    for _ in range(repeats):
        for pair_best, run_pair in zip(best, runs):
            for index, run in enumerate(run_pair):
                pair_best[index] = min(pair_best[index], common.best_time(run, 1))
    seconds = [(t2 - t1) / (n2 - n1) for t1, t2 in best]
    return seconds, [long.working_bytes for _, long in runs], results


def shortcut_share(ensemble, prompts, new_tokens, **settings) -> float:
    """Fraction of steps that took the certified-candidate shortcut: an untimed decode with a host
    callback counting the full-union fallbacks."""
    args = ensemble_args(ensemble, prompts, new_tokens, settings.get("features", "none"))
    config = ensemble_config(new_tokens, **settings)
    fallbacks = []
    # a fresh function: jax.jit(decode) would reuse decode's earlier trace
    with counting_fallbacks(fallbacks):
        common.block(jax.jit(lambda *decode_args: decode(*decode_args, config=config))(*args))
        jax.effects_barrier()
    return 1.0 - len(fallbacks) / new_tokens


def ensemble_stats(result, alignment, new_tokens, expansion_budget):
    """(mean member tokens ingested per step [N], per member (rows per step re-spelling their union
    token in several tokens, fraction of steps with such a row, least / median / most tokens the
    member took in a step over all rows)) of the timed N2-token decode. Raises when a row stopped
    before new_tokens: the timing would then be of less work."""
    if not (np.asarray(result.lengths) == new_tokens).all():
        raise SystemExit(
            f"rows stopped early ({np.asarray(result.stop_reason).tolist()}): the ensemble timing "
            f"is invalid; raise --expansion-budget (now {expansion_budget})"
        )
    ingested = np.asarray(result.ingested).mean(0) / new_tokens
    lengths = np.asarray(alignment.union_to_member_len)[:, np.asarray(result.union_ids)]  # [N,B,T]
    respelled = [
        (
            (rows > 1).sum(0).mean(),
            (rows > 1).any(0).mean(),
            np.percentile(rows.sum(0), [0, 50, 100]),
        )
        for rows in lengths
    ]
    return ingested, respelled


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default="tiny-trained,tiny-real,100m",
        help="comma list of tiny-trained, tiny-real, 100m, real (the installed pair, task prompts)",
    )
    parser.add_argument("--batches", default="1,16", help="comma list of batch sizes")
    parser.add_argument(
        "--tokens",
        default=None,
        help="N1,N2 new tokens, step = time difference / (N2-N1) (default 16,128 tiny; 4,20 100m)",
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed runs per measurement (fastest)"
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=0,
        help="candidates_per_member: 0 = full-union selection (default), k > 0 = certified top-k",
    )
    parser.add_argument(
        "--expansion-budget",
        type=int,
        default=3,
        help="DecodeConfig.expansion_budget: member cache slots per generated union token (3, not "
        "the library's 2: with distinct prompts some row of the random ~100M GPT-2 member takes "
        "more than 2 tokens per union token over 20 steps)",
    )
    parser.add_argument(
        "--features",
        choices=FEATURE_USES,
        default="none",
        help="; ".join(f"{name}: {what}" for name, what in FEATURE_USES.items()),
    )
    parser.add_argument(
        "--command-buffers",
        default="loops",
        help="comma list of compile-option variants, each timed with its own members: loops = the "
        "library's (on a GPU: loops and conditionals in command buffers), xla = XLA's default",
    )
    parser.add_argument(
        "--prompts",
        choices=("distinct", "same"),
        default="distinct",
        help="batch rows: distinct prompts of different lengths (as in a dataset batch, rows "
        "diverge and re-spell at different steps) or one prompt repeated (rows in lockstep)",
    )
    parser.add_argument(
        "--head-scale",
        type=float,
        default=1.0,
        help="multiply the final norm by this (>1: peaked, trained-like distributions)",
    )
    parser.add_argument(
        "--no-floors",
        action="store_true",
        help="skip the 'together' and 'together+Z' floors (four compiles fewer)",
    )
    opts = parser.parse_args()
    unknown = set(opts.command_buffers.split(",")) - set(COMMAND_BUFFERS)
    if unknown:
        parser.error(
            f"--command-buffers: unknown {sorted(unknown)}; choose from {list(COMMAND_BUFFERS)}"
        )
    return opts


def variant_runners(ensemble, prompts, options, settings, floors: bool) -> list:
    """Program makers `n -> Program` of one compile-option variant: each member alone, the floors
    (unless not `floors`), the ensemble last."""
    members = ensemble.members
    runners = [lambda n, m=m: member_runner(m, prompts, n, options) for m in members]
    if floors:
        runners.append(lambda n: together_runner(members, prompts, n, options=options))
        runners.append(
            lambda n: together_runner(members, prompts, n, normalisers=True, options=options)
        )
    runners.append(lambda n: ensemble_runner(ensemble, prompts, n, options, **settings))
    return runners


def verdict(size, batch, label, seconds, members, stats, shortcut) -> str:
    """One line: ensemble / Σ member steps against its goal, and the other ratios."""
    steps, ensemble = seconds[: len(members)], seconds[-1]
    ingested, respelled = stats
    ratio = ensemble / sum(steps)
    per_ingested = ensemble / sum(n * s for n, s in zip(ingested, steps))
    goal = GOALS["real-batch" if size == "real" and batch > 1 else size.split("-")[0]]
    line = (
        f"{size:13s} B={batch:<3d} {'ensemble' + label + '/Σmembers':30s} = {ratio:.2f}  "
        f"(goal ≤ {goal}: {'PASS' if ratio <= goal else 'MISS'});  "
        f"ensemble/Σ(ingest·member) = {per_ingested:.2f}"
    )
    if len(seconds) > len(members) + 1:
        together, normalised = seconds[len(members)], seconds[len(members) + 1]
        line += (
            f";  ensemble/together = {ensemble / together:.2f}  (together/Σmembers = "
            f"{together / sum(steps):.2f}, together+Z/Σmembers = {normalised / sum(steps):.2f})"
        )
    if shortcut is not None:
        line += f"  certified shortcut on {shortcut:.0%} of steps"
    return line + "".join(
        f"  {m.name}: {rows:.1f} rows/step re-spell in several tokens ({share:.0%} "
        f"of steps; {least:.0f}–{most:.0f} tokens a step, median {median:.0f})"
        for m, (rows, share, (least, median, most)) in zip(members, respelled)
        if share > 0
    )


def table_rows(size, batch, label, seconds, work, members, ingested, floors) -> list[list]:
    names = [m.name + label for m in members]
    names += [name + label for name in ("together", "together+Z")] * floors + ["ensemble" + label]
    params = [f"{m.num_params / 1e6:.1f}M" for m in members] + [""] * (len(names) - len(members))
    ingest = ["1.00"] * len(members) + ["/".join(["1.00"] * len(members))] * 2 * floors
    ingest.append("/".join(f"{x:.2f}" for x in ingested))
    return [
        [size, batch, name, par, f"{s * 1e3:.2f}", f"{batch / s:.0f}", ing, f"{b / 2**20:.1f}"]
        for name, par, s, ing, b in zip(names, params, seconds, ingest, work)
    ]


def main():
    opts = parse_args()
    batches = [int(b) for b in opts.batches.split(",")]
    variants = opts.command_buffers.split(",")
    warnings.filterwarnings("ignore", message="union tokens left out")
    print(f"# decode_throughput  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# {common.machine_info()}")
    selection = (
        f"certified top-{opts.candidates} shortcut" if opts.candidates else "full-union selection"
    )
    print(
        f"# repeats={opts.repeats}, greedy, uniform weights, {selection}, expansion budget "
        f"{opts.expansion_budget}, head scale {opts.head_scale}, features: "
        f"{FEATURE_USES[opts.features]}, command buffers: {opts.command_buffers}, {opts.prompts} "
        "prompts"
    )
    header = ["size", "B", "member", "params", "ms/step", "tok/s", "ingest/step", "work MB"]
    settings = dict(
        candidates=opts.candidates,
        expansion_budget=opts.expansion_budget,
        features=opts.features,
    )
    widths = [13, 3, 21 + (0 if len(variants) == 1 else 9), 8, 9, 9, 11, 8]
    verdicts = []
    print(common.fmt_row(header, widths))
    for size in opts.sizes.split(","):
        members, note = make_members(size, opts.head_scale)
        ensemble = Ensemble(members)
        alignment = ensemble.alignment
        tokens = tuple(int(t) for t in (opts.tokens or DEFAULT_TOKENS[size]).split(","))
        print(
            f"# {size}: {note}; union {alignment.num_union} tokens "
            f"(V={[m.config.vocab_size for m in members]}); N1,N2={tokens}"
        )
        for batch in tqdm(batches, desc=size, leave=False):
            prompts = (
                common.task_prompts(batch)
                if size == "real"
                else common.batch_prompts(batch, opts.prompts == "distinct")
            )
            runners = []
            for variant in variants:
                options = COMMAND_BUFFERS[variant]
                floors = not opts.no_floors
                runners += variant_runners(ensemble, prompts, options, settings, floors)
            all_seconds, all_work, results = step_seconds(runners, tokens, opts.repeats)
            shortcut = (
                shortcut_share(ensemble, prompts, tokens[1], **settings)
                if opts.candidates
                else None
            )
            per_variant = len(runners) // len(variants)
            for index, variant in enumerate(variants):
                part = slice(index * per_variant, (index + 1) * per_variant)
                label = "" if len(variants) == 1 else f" [{variant}]"
                stats = ensemble_stats(
                    results[part][-1], alignment, tokens[1], opts.expansion_budget
                )
                seconds, work = all_seconds[part], all_work[part]
                floors = not opts.no_floors
                rows = table_rows(size, batch, label, seconds, work, members, stats[0], floors)
                verdicts.append(verdict(size, batch, label, seconds, members, stats, shortcut))
                # a cut-off run keeps them
                tqdm.write("\n".join(common.fmt_row(row, widths) for row in rows))
                tqdm.write(verdicts[-1])
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
