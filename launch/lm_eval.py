"""Evaluate rlae_jax members, ensembles and trained agents with the LM Evaluation Harness
(`pip install -e '.[harness]'`): registers the model "rlae_jax" and runs lm-eval's own command line,
so every harness flag works, `--model rlae_jax` being the default.

    python -m launch.lm_eval --model_args 'members=A|B,strategy=uniform' \
        --tasks rlae_qa_gen,rlae_mc --include_path tests/data/harness --batch_size 8 --limit 16 \
        --output_path outputs/lm_eval

model_args (rlae_jax.harness.backend.RlaeLM): members (`|`-separated paths or presets), strategy
(uniform, fixed + weights=0.3|0.7, single + primary, threshold, topk, packllm) or
checkpoint=RUN_DIR, max_batch, max_length, dtype, seed, span_length, expansion_budget, and
ensemble_ll: how an ensemble scores log-likelihoods, `token` (default: the token-level mixture the
engine generates with, teacher-forced) or `sequence` (a mixture of the members' own string
probabilities).
"""

import sys

from lm_eval.__main__ import cli_evaluate

import rlae_jax.harness  # noqa: F401  (registers the model)


def main(argv: list[str]) -> None:
    """Run lm-eval's CLI on `argv` (without the program name); a run gets `--model rlae_jax` unless
    it names a model."""
    if argv[:1] not in (["ls"], ["validate"]):
        argv = argv[1:] if argv[:1] == ["run"] else argv
        named = any(arg == "--model" or arg.startswith("--model=") for arg in argv)
        argv = ["run", *([] if named else ["--model", "rlae_jax"]), *argv]
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main(sys.argv[1:])
