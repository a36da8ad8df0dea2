"""Shared test set-up: where the real fixtures live (skip cleanly when they are absent), and the
hypothesis profile: `derandomized` by default, so every run (CI included) tries the same examples
and a pass or a failure reproduces; `HYPOTHESIS_PROFILE=explore python -m pytest -q tests` searches
new random examples (what found the literal-'▁' SentencePiece case in test_align_real). Matrix
products run at full float32 precision on every backend (see below). Each test module's compiled
programs are freed after it (see below)."""

import gc
import os
import pathlib

import jax
import pytest
from hypothesis import settings

# The tests compare float32 results with torch's and with each other to ~1e-5. On NVIDIA GPUs jax's
# default float32 matmul rounds its inputs to TF32 (10-bit mantissa), which moves tiny models'
# logits by ~5e-3 and hidden states by ~1e-4 (seen on an H200: benchmarks/RESULTS-ARCHIVE.md);
# "highest" keeps float32 (CPU: no change).
jax.config.update("jax_default_matmul_precision", "highest")

settings.register_profile("derandomized", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))

FIXTURES = pathlib.Path(
    os.environ.get(
        "RLAE_FIXTURES", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
    )
)


@pytest.fixture(autouse=True, scope="module")
def free_compiled_programs():
    """Free every compiled program after each test module. An XLA:CPU executable holds its own
    memory mappings until it is freed, and the whole suite in one process (2026-11-26) reached the
    kernel's `vm.max_map_count` (65530 by default) and died with a segmentation fault inside an XLA
    compile."""
    yield
    jax.clear_caches()
    gc.collect()


def fixture_path(*parts: str) -> pathlib.Path:
    """Path under the shared fixtures folder; skips the calling test when it does not exist."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"fixture {path} is absent (set RLAE_FIXTURES to the shared fixtures folder)")
    return path
