"""The reference implementation's pair: openchat/openchat-3.5-0106 (Mistral 7B) +
upstage/SOLAR-10.7B-Instruct-v1.0 (Llama architecture, 48 layers), both SentencePiece 32k
vocabularies, trained with RLAE_MAPPO on GSM8K.

Memory: bf16 weights ~14.5 GB + ~21.5 GB = 36 GB; with batch 16 and 256 new tokens the KV caches add
~6 GB. Needs one 80 GB GPU (H100/A100-80G) or a 2-way `model` mesh axis
(`--config.mesh_model=2`)."""

from configs import gsm8k_qwen_llama


def get_config():
    config = gsm8k_qwen_llama.get_config()
    config.members = "openchat/openchat-3.5-0106,upstage/SOLAR-10.7B-Instruct-v1.0"
    config.workdir = "outputs/reference_pair_mappo"
    config.rl.kind = "mappo"
    config.rl.batch_size = 16
    return config
