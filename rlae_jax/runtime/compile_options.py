"""XLA compile options for the jitted decode loops (a member's `generate_ids_jit`, the ensemble's
`decode_jit`, and the RL train and evaluation steps that run it)."""

from __future__ import annotations

import functools
import os
import pkgutil

XLA_DEFAULT_COMMAND_BUFFERS = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION"
# XLA's default command-buffer kinds plus loops and conditionals: on an NVIDIA GPU each decode
# step's loops and conditionals then run inside CUDA graphs instead of returning to the host for
# every condition (benchmarks/RESULTS-ARCHIVE.md, third GPU round).
COMMAND_BUFFERS_WITH_LOOPS = XLA_DEFAULT_COMMAND_BUFFERS + ",WHILE,CONDITIONAL"


@functools.cache
def cuda_plugin_installed() -> bool:
    """Whether jax has a CUDA plugin here (`jax_cuda12_plugin`, `jax_cuda13_plugin`, ...), found
    without starting any backend (one scan of sys.path per process, ~35 ms; every jitted decode loop
    asks)."""
    return any(module.name.startswith("jax_cuda") for module in pkgutil.iter_modules())


def decode_loop_options() -> dict[str, str]:
    """`compiler_options` for `jax.jit` of a decode loop: the command buffers above where jax can
    run on CUDA, else none (CPU ignores them; TPU and other plugins were not tried with them). Also
    none when XLA_FLAGS (as set before rlae_jax is imported) names `xla_gpu_enable_command_buffer`:
    the user's wins."""
    if not cuda_plugin_installed() or "xla_gpu_enable_command_buffer" in os.environ.get(
        "XLA_FLAGS", ""
    ):
        return {}
    return {"xla_gpu_enable_command_buffer": COMMAND_BUFFERS_WITH_LOOPS}
