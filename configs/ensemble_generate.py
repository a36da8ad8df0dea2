"""Ensemble generation: `python -m launch.ensemble_generate --config=configs/ensemble_generate.py
--config.members=PATH_A,PATH_B --config.strategy=uniform`."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.members = ""  # comma-separated HF folders / hub ids / .gguf files (required)
    config.dtype = "float32"
    config.strategy = "uniform"  # uniform | fixed | single | threshold | topk | packllm
    # comma-separated, for strategy=fixed (and the ensemble side of threshold/topk)
    config.weights = ""
    config.primary = 0  # member index for single / threshold
    config.threshold = 0.5
    config.top_k = 4
    config.packllm_temperature = 1.0
    config.span_length = 1
    # one prompt (--config.prompts="Once upon a time") or a tuple (--config.prompts="('A', 'B')")
    config.prompts = ml_collections.FieldReference(("Once upon a time",), field_type=object)
    config.prompts_file = ""
    config.max_new_tokens = 64
    config.temperature = 0.0
    config.top_p = 1.0
    config.seed = 0
    config.batch_size = 8
    config.alignment_cache = ""  # default ~/.cache/rlae_jax/alignments
    return config
