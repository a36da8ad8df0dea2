"""The launch entry points keep jax's compiled programs on disk across runs, where the user says,
and each runs as a subprocess on a tiny config."""

import os
import subprocess
import sys

import pytest

from conftest import fixture_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_SOMETHING = (
    "import launch, jax, jax.numpy as jnp; "
    "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
    "jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)).block_until_ready(); "
    "print(repr(jax.config.jax_compilation_cache_dir))"
)


def run_python(code: str, **env_changes) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(env_changes)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_compiled_programs_land_in_the_rlae_cache(tmp_path):
    assert run_python(COMPILE_SOMETHING, RLAE_CACHE=str(tmp_path)) == repr(str(tmp_path / "xla"))
    assert any((tmp_path / "xla").iterdir()), "nothing was written to the compilation cache"


def test_jax_compilation_cache_dir_picks_another_folder_or_none(tmp_path):
    mine, rlae_cache = tmp_path / "mine", str(tmp_path)
    assert run_python(
        COMPILE_SOMETHING, RLAE_CACHE=rlae_cache, JAX_COMPILATION_CACHE_DIR=str(mine)
    ) == repr(str(mine))
    assert any(mine.iterdir())
    assert run_python(
        COMPILE_SOMETHING, RLAE_CACHE=rlae_cache, JAX_COMPILATION_CACHE_DIR=""
    ) == repr("")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mine"
    ]  # no xla/ folder: the cache stayed off


# ---- every entry point on a tiny config
# ------------------------------------------------------------------


def run_launch(module: str, *flags: str, cache) -> str:
    """`python -m launch.MODULE FLAGS` with members and compiled programs cached under `cache`; its
    stdout."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["RLAE_CACHE"] = str(cache)
    done = subprocess.run(
        [sys.executable, "-m", f"launch.{module}", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def stories():
    return str(fixture_path("models", "stories260K", "stories260K.gguf"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("rlae_cache")


@pytest.mark.slow  # minutes on 2 cores: the slow job runs it
def test_generate_and_ensemble_generate_take_one_prompt_string_or_several(stories, cache):
    """One prompt as a plain string, or a tuple; the continuation keeps the SentencePiece member's
    leading space."""
    out = run_launch(
        "generate",
        f"--config.model={stories}",
        "--config.prompts=The dog",
        "--config.max_new_tokens=6",
        cache=cache,
    )
    assert "The dog was a big" in out
    out = run_launch(
        "ensemble_generate",
        f"--config.members={stories},{stories}",
        "--config.prompts=('The dog', 'Once upon a time')",
        "--config.strategy=fixed",
        "--config.weights=1,0",
        "--config.max_new_tokens=6",
        cache=cache,
    )
    assert "The dog was a big" in out and "Once upon a time, there was" in out
    assert out.count("[stop: length; mean weights [1.0, 0.0]]") == 2


@pytest.mark.slow  # one RLAE update and every strategy's evaluation compile for minutes on 2 cores
def test_train_member_train_evaluate_and_demo_run_on_tiny_settings(cache, tmp_path):
    """The demo members trained 2 steps (cached, then reused), one RLAE update, a few examples."""
    members = ["--config.members=demo", "--config.member_steps=2"]
    out = run_launch("train_member", "--config.skill=reverser", "--config.steps=2", cache=cache)
    assert "reverser:" in out and "cached" in out
    workdir = tmp_path / "train"
    rl = [
        "--config.rl.num_updates=1",
        "--config.rl.batch_size=4",
        "--config.rl.num_minibatches=1",
        "--config.rl.max_new_tokens=4",
    ]
    run_launch(
        "train",
        *members,
        *rl,
        "--config.limit=16",
        f"--config.workdir={workdir}",
        "--config.checkpoint_every=1",
        cache=cache,
    )
    assert any(workdir.iterdir())
    out = run_launch(
        "evaluate",
        *members,
        f"--config.checkpoints={workdir}",
        "--config.limit=8",
        "--config.batch_size=8",
        "--config.max_new_tokens=4",
        f"--config.output_dir={tmp_path / 'evaluate'}",
        cache=cache,
    )
    assert "uniform" in out.lower()
    out = run_launch(
        "demo",
        "--config=configs/demo_synthetic.py",
        "--config.member_steps=2",
        "--config.seeds=1",
        "--config.eval_examples=8",
        *rl,
        f"--config.output_dir={tmp_path / 'demo'}",
        cache=cache,
    )
    assert "uniform" in out.lower()
