"""Our compiled ensemble (`rlae_jax.engine.generate`) against a PyTorch re-implementation of the
reference GaC-style loop, on identical weights and prompts, greedy, uniform weights.

Reference per token, one prompt at a time: each HF transformers model's next-token softmax (KV cache
via past_key_values) → projected into the union vocabulary with a torch sparse [V_i, U] matrix built
from our alignment → uniform mix → argmax → the chosen token fed to each member, re-spelled with our
alignment's exact member ids ('table': the same algorithm as ours, identical texts expected) or
re-tokenised with `tokenizer.encode(text, add_special_tokens=False)` ('encode', what GaC does). Both
are timed. Ours decodes `--batch` prompts per call (the reference still one at a time).

    python benchmarks/vs_reference.py                          # tiny and 100m, default lengths
    python benchmarks/vs_reference.py --sizes real --batch 8   # SmolLM2-135M + Gemma-3-270M
    python benchmarks/vs_reference.py --torch-device cuda      # on a GPU: reference and ours both
    on it
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import tempfile
import time
import warnings

import jax
import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

import common
from rlae_jax.ensemble import Ensemble
from rlae_jax.engine import generate
from rlae_jax.models import from_pretrained
from rlae_jax.models.presets import PRESETS
from rlae_jax.models.prompts import encode_prompts

PROMPTS = common.PROMPTS[:8]
# ours / reference tokens per second on CPU, by size and batch; with both on a GPU: GPU_GOAL
GOALS = {("tiny", 1): 3.0, ("100m", 1): 1.0, ("real", 1): 1.2, ("real", 8): 3.0}
GPU_GOAL = 5.0
REAL_PAIR = ("smollm2-135m-instruct", "gemma-3-270m")


# the tiny size: 2 layers, hidden 64 (GPT2Config maps these names to n_embd, n_layer, ...)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512)


def hf_configs(size: str, tokenizers):
    """transformers configs (GPT-2 family, Llama family) of a size for the two tokenizers."""
    gpt2_tok, llama_tok = tokenizers
    if size == "100m":
        gpt2 = dict(PRESETS["gpt2"])
        gpt2.pop("model_type")
        return (
            GPT2Config(**gpt2),
            LlamaConfig(
                vocab_size=len(llama_tok),
                hidden_size=768,
                intermediate_size=2048,
                num_hidden_layers=8,
                num_attention_heads=12,
                num_key_value_heads=12,
                max_position_embeddings=2048,
                bos_token_id=llama_tok.bos_token_id,
                eos_token_id=llama_tok.eos_token_id,
            ),
        )
    eos = gpt2_tok.eos_token_id
    return (
        GPT2Config(vocab_size=len(gpt2_tok), bos_token_id=eos, eos_token_id=eos, **TINY),
        LlamaConfig(
            vocab_size=len(llama_tok),
            eos_token_id=llama_tok.eos_token_id,
            intermediate_size=128,
            num_key_value_heads=2,
            **TINY,
        ),
    )


def random_members(size: str, folder: pathlib.Path, device: str):
    """Random torch models + tokenizers saved with save_pretrained and loaded as our members. →
    (torch models on `device`, our members, note)."""
    if size == "tiny":
        tokenizers, note = (
            common.trained_tokenizers(),
            "trained byte-level BPE 384 + metaspace Unigram 200",
        )
    else:
        *tokenizers, note = common.real_tokenizers()
    models = []
    for index, (config, tokenizer) in enumerate(zip(hf_configs(size, tokenizers), tokenizers)):
        torch.manual_seed(index)
        model = AutoModelForCausalLM.from_config(config).eval()
        model.save_pretrained(folder / f"member{index}")
        tokenizer.save_pretrained(folder / f"member{index}")
        models.append(model.to(device))
    members = [
        from_pretrained(str(folder / f"member{i}"), tokenizer=tok)
        for i, tok in enumerate(tokenizers)
    ]
    return models, members, note


def real_members(device: str):
    """The installed real pair: our members and transformers' models of the same GGUF files
    (float32). → (torch models on `device`, our members, note)."""
    from rlae_jax.models.installed import installed_gguf

    models = []
    for name in REAL_PAIR:
        path = installed_gguf(name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        models.append(model.eval().to(device))
    members = [from_pretrained(name, name=name, dtype="float32") for name in REAL_PAIR]
    return models, members, "real members " + " + ".join(REAL_PAIR) + " (GGUF, float32)"


def sparse_projections(alignment, device: str) -> list[torch.Tensor]:
    """Each member's one-hot projection, transposed: torch sparse COO [U, V_i] on `device` (from our
    tables)."""
    matrices = []
    for member, size in enumerate(alignment.vocab_sizes):
        table = alignment.vocab.member_to_union[member, :size]
        rows = np.flatnonzero(table < alignment.num_union)
        indices = torch.as_tensor(np.stack([rows, table[rows]]), dtype=torch.long)
        matrix = torch.sparse_coo_tensor(
            indices, torch.ones(len(rows)), (size, alignment.num_union)
        )
        matrices.append(matrix.t().coalesce().to(device))
    return matrices


@torch.no_grad()
def reference_generate(models, tokenizers, alignment, projections, prompt_ids, new_tokens, respell):
    """Reference per-token loop for one prompt, `prompt_ids[n]` member n's ids. respell: 'encode'
    (tokenizer.encode of the token text) or 'table' (our alignment's exact member ids). → union
    ids."""
    device = projections[0].device
    complete = torch.as_tensor(np.array(alignment.union_complete), device=device)
    caches, logits = [], []
    for model, ids, size in zip(models, prompt_ids, alignment.vocab_sizes):
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
        caches.append(out.past_key_values)
        logits.append(out.logits[0, -1, :size])
    chosen = []
    for _ in range(new_tokens):
        mixed = torch.zeros(alignment.num_union, device=device)
        for projection, member_logits in zip(projections, logits):
            probs = torch.softmax(member_logits, -1)
            mixed += 0.5 * torch.sparse.mm(projection, probs[:, None])[:, 0]
        union_id = int(torch.argmax(torch.where(complete, mixed, -1.0)))
        chosen.append(union_id)
        if union_id == alignment.eos_union_id:
            break
        text = alignment.union_bytes(union_id).decode("utf-8", errors="replace")
        for index, (model, tokenizer) in enumerate(zip(models, tokenizers)):
            ids = (
                tokenizer.encode(text, add_special_tokens=False)
                if respell == "encode"
                else alignment.from_union(index, [union_id])
            )
            if not ids:
                continue
            out = model(
                input_ids=torch.tensor([ids], device=device),
                past_key_values=caches[index],
                use_cache=True,
            )
            caches[index] = out.past_key_values
            logits[index] = out.logits[0, -1, : alignment.vocab_sizes[index]]
    return chosen


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run_size(size, prompts, new_tokens, batch, folder, device):
    """Compare one size (the reference's torch models on `device`); prints per-prompt agreement and
    returns tokens/s of (ours, reference with table re-spelling, reference with encode)."""
    if size == "real":
        models, members, note = real_members(device)
    else:
        models, members, note = random_members(size, folder, device)
    tokenizers = [m.tokenizer for m in members]
    ensemble = Ensemble(members)
    alignment = ensemble.alignment
    projections = sparse_projections(alignment, device)
    print(
        f"# {size}: {note}; params {[f'{m.num_params / 1e6:.1f}M' for m in members]}; union "
        f"{alignment.num_union}; {new_tokens} new tokens, {len(prompts)} prompts, ours at batch "
        f"{batch}"
    )
    chunks = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
    for chunk in chunks:  # compile every length bucket the prompts fall in
        generate(ensemble, chunk, max_new_tokens=new_tokens)
    ids = {p: [encode_prompts(t, [p])[0] for t in tokenizers] for p in prompts}
    reference = {
        respell: lambda p, respell=respell: reference_generate(
            models, tokenizers, alignment, projections, ids[p], new_tokens, respell
        )
        for respell in ("table", "encode")
    }
    reference["table"](prompts[0])  # warm torch up
    ours_texts, tokens, seconds = [], {"ours": 0}, {"ours": 0.0}
    for chunk in tqdm(chunks, desc=size, leave=False):
        out, took = timed(lambda: generate(ensemble, chunk, max_new_tokens=new_tokens))
        tokens["ours"] += sum(map(len, out.union_ids))
        seconds["ours"] += took
        ours_texts += out.texts
    for prompt, ours in zip(prompts, ours_texts):
        texts = {}
        for respell, run in reference.items():
            union_ids, took = timed(lambda: run(prompt))
            tokens[respell] = tokens.get(respell, 0) + len(union_ids)
            seconds[respell] = seconds.get(respell, 0.0) + took
            texts[respell] = alignment.decode(union_ids)
        agreement = [
            f"reference({r}) "
            + ("same" if ours == t else f"DIFFERENT from char {first_difference(ours, t)}")
            for r, t in texts.items()
        ]
        print(f"  prompt {prompt[:40]!r}: " + "; ".join(agreement))
    return tuple(tokens[k] / seconds[k] for k in ("ours", "table", "encode"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,100m", help="comma list of tiny, 100m, real")
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=None,
        help="new tokens per prompt (default 32 tiny, 16 100m and real)",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=None,
        help="prompts to run (default 6 tiny, 3 100m; real: --batch, at least 3; real sizes use "
        "task prompts)",
    )
    parser.add_argument("--batch", type=int, default=1, help="prompts per call of ours")
    parser.add_argument(
        "--torch-device", default="cpu", help="device of the reference's torch models (cpu, cuda)"
    )
    opts = parser.parse_args()
    warnings.filterwarnings("ignore", message="union tokens left out")
    on_gpu = opts.torch_device.startswith("cuda") and jax.default_backend() == "gpu"
    print(f"# vs_reference  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(
        f"# {common.machine_info()} | torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads) on {opts.torch_device}"
    )
    print(
        "# greedy, uniform weights; tokens/s include prefill; ours measured after compiling each "
        "prompt bucket; the reference decodes one prompt at a time"
    )
    verdicts = []
    for size in opts.sizes.split(","):
        new_tokens = opts.new_tokens or (32 if size == "tiny" else 16)
        count = opts.prompts or {"tiny": 6, "100m": 3}.get(size, max(opts.batch, 3))
        prompts = common.task_prompts(count) if size == "real" else PROMPTS[:count]
        with tempfile.TemporaryDirectory() as folder:
            ours, table, encode = run_size(
                size, prompts, new_tokens, opts.batch, pathlib.Path(folder), opts.torch_device
            )
        goal = GPU_GOAL if on_gpu else GOALS.get((size, opts.batch))
        verdict = "no goal"
        if goal is not None:
            verdict = f"goal ≥ {goal}x: {'PASS' if ours / table >= goal else 'MISS'}"
        verdicts.append(
            f"{size:5s} B={opts.batch} ours {ours:8.1f} tok/s  reference(table) {table:8.1f} tok/s"
            f"  speed-up {ours / table:5.2f}x ({verdict});  reference(encode) {encode:8.1f} tok/s"
            f"  speed-up {ours / encode:5.2f}x"
        )
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
