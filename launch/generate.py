"""Generate with one member: `python -m launch.generate --config=configs/generate.py
--config.model=PATH`."""

from absl import app, logging
from ml_collections import config_flags
from tqdm import tqdm

import rlae_jax
from rlae_jax.models.generate import read_prompts

CONFIG = config_flags.DEFINE_config_file("config", "configs/generate.py", "generation config")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and jax INFO lines drown the progress bars
    config = CONFIG.value
    if not config.model:
        raise app.UsageError(
            "--config.model=PATH (a Hugging Face folder, hub id or .gguf file) is required"
        )
    prompts = read_prompts(config.prompts, config.prompts_file)
    member = rlae_jax.from_pretrained(config.model, dtype=config.dtype)
    batches = range(0, len(prompts), config.batch_size)
    for start in tqdm(batches, desc="generating", disable=len(batches) == 1):
        chunk = prompts[start : start + config.batch_size]
        outputs = rlae_jax.generate_member(
            member,
            chunk,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed + start,
        )
        for prompt, output in zip(chunk, outputs):
            print(f"{prompt}{output}\n")


if __name__ == "__main__":
    app.run(main)
