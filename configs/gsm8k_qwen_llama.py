"""RLAE on GSM8K with real members: Qwen2.5-1.5B-Instruct + Llama-3.2-1B-Instruct (hub ids or local
folders).

Memory (bf16 weights, batch 32, 256 new tokens, expansion budget 2): weights ~3.1 GB + 2.5 GB;
KV caches ~ 2 × 32 × (prompt + 512) slots × layers × kv-heads × head-dim × 2 bytes ≈ 1.5–2 GB;
the union vocabulary (~190k tokens) adds a few MB per batch row. One 24 GB GPU suffices;
on CPU expect minutes per update. Run:
  python -m launch.train --config=configs/gsm8k_qwen_llama.py
  python -m launch.evaluate --config=configs/evaluate.py --config.members=<same> \
      --config.task=gsm8k --config.checkpoints=outputs/gsm8k_qwen_llama_ppo \
      --config.max_new_tokens=256
"""

from configs import train


def get_config():
    config = train.get_config()
    config.members = "Qwen/Qwen2.5-1.5B-Instruct,meta-llama/Llama-3.2-1B-Instruct"
    config.dtype = "bfloat16"
    config.task = "gsm8k"
    config.limit = 7473
    config.workdir = "outputs/gsm8k_qwen_llama_ppo"
    config.rl.max_new_tokens = 256
    config.rl.batch_size = 32
    config.rl.num_updates = 500
    config.rl.learning_rate = 3e-4
    return config
