"""XLA compile options for the jitted decode loops (a member's `generate_ids`, the ensemble's `decode`,
and the RL rollout and training steps that run it)."""
from __future__ import annotations

import os

XLA_DEFAULT_COMMAND_BUFFERS = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION"
# XLA's default command-buffer kinds plus loops and conditionals: on a GPU each decode step's loops and
# conditionals then run inside CUDA graphs instead of returning to the host for every condition
# (benchmarks/RESULTS.md). Other backends ignore it. An `xla_gpu_enable_command_buffer` in XLA_FLAGS wins.
COMMAND_BUFFERS_WITH_LOOPS = XLA_DEFAULT_COMMAND_BUFFERS + ",WHILE,CONDITIONAL"


def decode_loop_options() -> dict[str, str]:
    """`compiler_options` for `jax.jit` of a decode loop; empty when XLA_FLAGS sets the command buffers."""
    if "xla_gpu_enable_command_buffer" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {"xla_gpu_enable_command_buffer": COMMAND_BUFFERS_WITH_LOOPS}
