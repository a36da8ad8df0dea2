"""Single-member generation: `python -m launch.generate --config=configs/generate.py
--config.model=PATH`."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ""  # HF folder, hub id, or llama .gguf file (required)
    config.dtype = "float32"  # or "bfloat16"
    # one prompt (--config.prompts="Once upon a time") or a tuple (--config.prompts="('A', 'B')")
    config.prompts = ml_collections.FieldReference(("Once upon a time",), field_type=object)
    config.prompts_file = ""  # optional: one prompt per line (overrides `prompts`)
    config.max_new_tokens = 64
    config.temperature = 0.0  # 0 = greedy
    config.top_p = 1.0
    config.seed = 0
    config.batch_size = 8
    return config
