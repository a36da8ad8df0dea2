"""RLAE on ARC-Challenge with Qwen2.5-1.5B-Instruct + Llama-3.2-1B-Instruct (memory as in
configs/gsm8k_qwen_llama.py, less for 32-token answers). Cross-task transfer: evaluate the GSM8K
agent here with
`launch.evaluate --config.task=arc_challenge --config.checkpoints=outputs/gsm8k_qwen_llama_ppo`."""

from configs import gsm8k_qwen_llama


def get_config():
    config = gsm8k_qwen_llama.get_config()
    config.task = "arc_challenge"
    config.limit = 1119
    config.workdir = "outputs/arc_qwen_llama_ppo"
    config.rl.max_new_tokens = 32
    config.rl.span_length = 4
    return config
