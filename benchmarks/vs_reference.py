"""Our compiled ensemble (`rlae_jax.engine.generate`) against a PyTorch re-implementation of the
reference GaC-style loop, on identical weights and prompts, batch 1, greedy, uniform weights.

Reference per token: each HF transformers model's next-token softmax (KV cache via past_key_values)
→ projected into the union vocabulary with a torch sparse [V_i, U] matrix built from our alignment
→ uniform mix → argmax → the chosen token's text re-tokenised with each member's
`tokenizer.encode(text, add_special_tokens=False)` and fed to it. A second reference variant feeds
our alignment's exact re-spelling instead of `encode`, to separate algorithm from re-tokenisation.

    python benchmarks/vs_reference.py                          # tiny and 100m, default lengths
    python benchmarks/vs_reference.py --sizes 100m --new-tokens 64 --prompts 4
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
from rlae_jax.align import build_alignment
from rlae_jax.engine import generate
from rlae_jax.models import from_pretrained
from rlae_jax.models.presets import PRESETS

PROMPTS = common.PROMPTS[:6]
GOALS = {
    "tiny": 3.0,
    "100m": 1.0,
}  # on CPU; with the reference on a GPU and ours on one too: GPU_GOAL
GPU_GOAL = 5.0


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
    from tiny_models import hf_config

    return hf_config("gpt2", len(gpt2_tok), gpt2_tok.eos_token_id), hf_config(
        "llama", len(llama_tok), llama_tok.eos_token_id
    )


def save_members(size: str, folder: pathlib.Path, device: str):
    """Random torch models + tokenizers saved with save_pretrained. → (torch models on `device`,
    tokenizers, note)."""
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
    return models, tokenizers, note


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
def reference_generate(
    models, tokenizers, alignment, projections, prompt: str, new_tokens: int, respell: str
):
    """Reference per-token loop for one prompt. respell: 'encode' (tokenizer.encode of the token
    text) or 'table' (our alignment's exact member ids). → union ids."""
    device = projections[0].device
    complete = torch.as_tensor(np.array(alignment.union_complete), device=device)
    caches, logits = [], []
    for model, tokenizer in zip(models, tokenizers):
        out = model(
            input_ids=torch.tensor([tokenizer.encode(prompt)], device=device), use_cache=True
        )
        caches.append(out.past_key_values)
        logits.append(out.logits[0, -1])
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
            logits[index] = out.logits[0, -1]
    return chosen


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run_size(size: str, prompts, new_tokens: int, folder: pathlib.Path, device: str):
    """Compare one size (the reference's torch models on `device`); prints per-prompt agreement and
    returns (ours tok/s, ref tok/s)."""
    models, tokenizers, note = save_members(size, folder, device)
    members = [
        from_pretrained(str(folder / f"member{i}"), tokenizer=tok)
        for i, tok in enumerate(tokenizers)
    ]
    alignment = build_alignment(tokenizers, vocab_sizes=[m.config.vocab_size for m in members])
    projections = sparse_projections(alignment, device)
    print(
        f"# {size}: {note}; params {[f'{m.num_params / 1e6:.1f}M' for m in members]}; union "
        f"{alignment.num_union}; {new_tokens} new tokens, {len(prompts)} prompts"
    )
    for prompt in prompts:  # compile every length bucket the prompts fall in
        generate(members, alignment, [prompt], max_new_tokens=new_tokens)
    # warm torch up
    reference_generate(models, tokenizers, alignment, projections, prompts[0], 2, "encode")
    ours_tokens = ref_tokens = 0
    ours_time = ref_time = 0.0
    for prompt in tqdm(prompts, desc=size, leave=False):
        out, seconds = timed(
            lambda: generate(members, alignment, [prompt], max_new_tokens=new_tokens)
        )
        ours_tokens, ours_time = ours_tokens + len(out.union_ids[0]), ours_time + seconds
        ref_ids, seconds = timed(
            lambda: reference_generate(
                models, tokenizers, alignment, projections, prompt, new_tokens, "encode"
            )
        )
        ref_tokens, ref_time = ref_tokens + len(ref_ids), ref_time + seconds
        exact_ids = reference_generate(
            models, tokenizers, alignment, projections, prompt, new_tokens, "table"
        )
        ours, ref, exact = out.texts[0], alignment.decode(ref_ids), alignment.decode(exact_ids)
        verdict = "same" if ours == ref else f"DIFFERENT from char {first_difference(ours, ref)}"
        print(
            f"  prompt {prompt!r}: reference(encode) {verdict}; reference(table) "
            f"{'same' if ours == exact else f'DIFFERENT from char {first_difference(ours, exact)}'}"
        )
        if ours != ref:
            print(f"    ours:       {ours!r}\n    ref/encode: {ref!r}")
    return ours_tokens / ours_time, ref_tokens / ref_time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,100m", help="comma list of tiny, 100m")
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=None,
        help="new tokens per prompt (default 32 tiny, 16 100m)",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=None,
        help=f"prompts to run (≤ {len(PROMPTS)}; default 6 tiny, 3 100m)",
    )
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
        "# batch 1, greedy, uniform weights; tokens/s include prefill; ours measured after "
        "compiling each prompt bucket"
    )
    verdicts = []
    for size in opts.sizes.split(","):
        new_tokens = opts.new_tokens or (32 if size == "tiny" else 16)
        prompts = PROMPTS[: opts.prompts or (6 if size == "tiny" else 3)]
        with tempfile.TemporaryDirectory() as folder:
            ours, ref = run_size(size, prompts, new_tokens, pathlib.Path(folder), opts.torch_device)
        speedup = ours / ref
        goal = GPU_GOAL if on_gpu else GOALS[size]
        verdicts.append(
            f"{size:5s} ours {ours:8.1f} tok/s  reference {ref:8.1f} tok/s  speed-up "
            f"{speedup:5.2f}x  (goal ≥ {goal}x: {'PASS' if speedup >= goal else 'MISS'})"
        )
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
