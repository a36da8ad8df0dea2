"""The launch entry points keep jax's compiled programs on disk across runs, where the user says."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_SOMETHING = ("import launch, jax, jax.numpy as jnp; "
                     "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
                     "jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)).block_until_ready(); "
                     "print(repr(jax.config.jax_compilation_cache_dir))")


def run_python(code: str, **env_changes) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_compiled_programs_land_in_the_rlae_cache(tmp_path):
    assert run_python(COMPILE_SOMETHING, RLAE_CACHE=str(tmp_path)) == repr(str(tmp_path / "xla"))
    assert any((tmp_path / "xla").iterdir()), "nothing was written to the compilation cache"


def test_jax_compilation_cache_dir_picks_another_folder_or_none(tmp_path):
    mine, rlae_cache = tmp_path / "mine", str(tmp_path)
    assert run_python(COMPILE_SOMETHING, RLAE_CACHE=rlae_cache, JAX_COMPILATION_CACHE_DIR=str(mine)) == repr(str(mine))
    assert any(mine.iterdir())
    assert run_python(COMPILE_SOMETHING, RLAE_CACHE=rlae_cache, JAX_COMPILATION_CACHE_DIR="") == repr("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no xla/ folder: the cache stayed off
