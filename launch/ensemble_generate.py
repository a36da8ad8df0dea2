"""Generate with an ensemble of members that may have different tokenizers:
`python -m launch.ensemble_generate --config=configs/ensemble_generate.py --config.members=A,B`."""

from absl import app, logging
from ml_collections import config_flags
from tqdm import tqdm

import rlae_jax
from rlae_jax.align import build_alignment
from rlae_jax.engine import generate
from rlae_jax.models.generate import read_prompts

CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/ensemble_generate.py", "ensemble generation config"
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and jax INFO lines drown the progress bars
    config = CONFIG.value
    paths = [p for p in config.members.split(",") if p]
    if len(paths) < 1:
        raise app.UsageError(
            "--config.members=PATH_A,PATH_B (HF folders, hub ids or .gguf files) is required"
        )
    members = [rlae_jax.from_pretrained(p, dtype=config.dtype) for p in paths]
    ensemble = rlae_jax.Ensemble(
        members,
        build_alignment(
            [m.tokenizer for m in members],
            vocab_sizes=[m.config.vocab_size for m in members],
            cache_dir=config.alignment_cache or None,
        ),
    )
    weights = [float(w) for w in config.weights.split(",")] if config.weights else None
    prompts = read_prompts(config.prompts, config.prompts_file)
    batches = range(0, len(prompts), config.batch_size)
    for start in tqdm(batches, desc="generating", disable=len(batches) == 1):
        chunk = prompts[start : start + config.batch_size]
        out = generate(
            ensemble,
            chunk,
            strategy=config.strategy,
            weights=weights,
            primary=config.primary,
            threshold=config.threshold,
            top_k=config.top_k,
            packllm_temperature=config.packllm_temperature,
            span_length=config.span_length,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed + start,
        )
        for prompt, text, weights_per_span, reason in zip(
            chunk, out.texts, out.span_weights, out.stop_reasons
        ):
            mean_weights = weights_per_span.mean(0).round(3).tolist()
            print(f"{prompt}{text}\n  [stop: {reason}; mean weights {mean_weights}]\n")


if __name__ == "__main__":
    app.run(main)
