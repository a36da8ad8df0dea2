"""absl entry points (`python -m launch.NAME`). Every one keeps jax's compiled programs on disk
across runs (jax's persistent compilation cache, in $RLAE_CACHE/xla, default ~/.cache/rlae_jax/xla,
at most 2 GiB, least recently used first out), so a rerun with the same shapes skips compiling. Set
JAX_COMPILATION_CACHE_DIR to use another folder, or to an empty string for no cache."""

import os

import jax

from rlae_jax.toy.members import DEFAULT_CACHE

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    jax.config.update("jax_compilation_cache_dir", str(DEFAULT_CACHE / "xla"))
    jax.config.update("jax_compilation_cache_max_size", 2 * 2**30)
