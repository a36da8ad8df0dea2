"""Every on-disk cache survives its writer being killed (SIGKILL) mid-save, and an entry that does
not load is reported with its path and rebuilt. The writers run in a subprocess whose save is
stopped at a chosen point (a patched function that signals, then sleeps until killed); the demo
member is an untrained one loaded from a folder (no training, no initialisation to compile), so
each writer takes seconds."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from rlae_jax.align import build_alignment
from rlae_jax.toy import members as toy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def kill_when_signalled(script: str, signal_file: pathlib.Path, timeout: float = 180.0) -> None:
    """Run `script` in a subprocess, SIGKILL it once it creates `signal_file`."""
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.monotonic() + timeout
    while not signal_file.exists():
        if process.poll() is not None:
            raise AssertionError(f"the writer ended (rc {process.returncode}) before the kill")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the writer never reached the kill point")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def stall(signal_file: pathlib.Path) -> str:
    """Source of a function that signals `signal_file`, then sleeps until killed."""
    return textwrap.dedent(
        f"""
        import pathlib, time
        def stall(*args, **kwargs):
            pathlib.Path({str(signal_file)!r}).touch()
            time.sleep(600)
        """
    )


def member_folders(cache: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in (cache / "demo_members").glob("reverser-*") if p.is_dir())


@pytest.fixture(scope="module")
def reverser(tmp_path_factory):
    """An untrained demo reverser and a folder it is saved in (what "training" returns below)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(toy, "train_lm", lambda member, *args, **kwargs: (member, None))
        member = toy.train_demo_member("reverser", progress=False)
    return member, toy.save_pretrained(member, tmp_path_factory.mktemp("reverser"))


@pytest.fixture
def trained_at_once(monkeypatch, reverser):
    monkeypatch.setattr(toy, "train_demo_member", lambda *args, **kwargs: reverser[0])


def assert_same_member(member, expected):
    text = "reverse: abc; capitalize: xyz"
    assert member.tokenizer(text)["input_ids"] == expected.tokenizer(text)["input_ids"]
    for got, want in zip(jax.tree.leaves(member.state), jax.tree.leaves(expected.state)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_member_cache_killed_between_weights_and_tokenizer_then_next_run_loads(
    tmp_path, reverser, trained_at_once
):
    """The writer dies after config.json and model.safetensors, before the tokenizer files (where a
    `kill -9` left a folder that failed every later run): no folder counts as cached, and the next
    run trains and caches the member."""
    cache, signal_file = tmp_path / "cache", tmp_path / "saving"
    script = (
        "import rlae_jax.toy.members as toy, transformers\n"
        + f"toy.train_demo_member = lambda *args: toy.from_pretrained({str(reverser[1])!r})\n"
        + stall(signal_file)
        + "transformers.PreTrainedTokenizerBase.save_pretrained = stall\n"
        + f"toy.demo_member('reverser', steps=3, cache_dir={str(cache)!r})\n"
    )
    kill_when_signalled(script, signal_file)
    assert list((cache / "demo_members").rglob("model.safetensors"))  # killed mid-save
    assert not member_folders(cache)  # nothing counts as cached
    member = toy.demo_member("reverser", steps=3, cache_dir=cache)
    (folder,) = member_folders(cache)
    assert (folder / "tokenizer.json").exists()
    assert_same_member(member, reverser[0])


def test_member_cache_that_does_not_load_is_named_and_rebuilt(tmp_path, reverser, trained_at_once):
    cache = tmp_path / "cache"
    toy.demo_member("reverser", steps=3, cache_dir=cache)
    (folder,) = member_folders(cache)
    (folder / "config.json").write_text("")
    with pytest.warns(UserWarning, match=f"cached demo member {folder} does not load"):
        member = toy.demo_member("reverser", steps=3, cache_dir=cache)
    assert_same_member(member, reverser[0])
    assert (folder / "config.json").stat().st_size > 0


TOKENIZERS = (
    "from rlae_jax.tasks.synthetic import tokenizer_corpus\n"
    "from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_bpe\n"
    "tokenizers = [train_byte_level_bpe(tokenizer_corpus(), 300),"
    " train_metaspace_bpe(tokenizer_corpus(), 120)]\n"
)


@pytest.fixture(scope="module")
def tokenizers():
    """The demo members' two tokenizers (the same code the writer subprocess runs)."""
    scope = {}
    exec(TOKENIZERS, scope)
    return scope["tokenizers"]


def cached_alignments(cache: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in cache.glob("*.npz") if not p.name.endswith(".tmp.npz")]


@pytest.mark.slow  # the alignment's save was atomic already: a guard, not a reproduction
def test_alignment_cache_killed_mid_save_then_next_run_builds(tmp_path, tokenizers):
    cache, signal_file = tmp_path / "alignments", tmp_path / "saving"
    script = (
        "import numpy\n"
        + stall(signal_file)
        + "numpy.savez = stall\n"
        + TOKENIZERS
        + "from rlae_jax.align import build_alignment\n"
        + f"build_alignment(tokenizers, cache_dir={str(cache)!r})\n"
    )
    kill_when_signalled(script, signal_file)
    assert not cached_alignments(cache)
    built = build_alignment(tokenizers, cache_dir=cache)
    (path,) = cached_alignments(cache)
    assert build_alignment(tokenizers, cache_dir=cache).num_union == built.num_union


def test_alignment_cache_that_does_not_load_is_named_and_rebuilt(tmp_path, tokenizers):
    built = build_alignment(tokenizers, cache_dir=tmp_path)
    (path,) = cached_alignments(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a truncated file
    with pytest.warns(UserWarning, match=f"cached alignment {path} does not load"):
        rebuilt = build_alignment(tokenizers, cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt.member_to_union, built.member_to_union)
    np.testing.assert_array_equal(rebuilt.union_to_member, built.union_to_member)
    assert path.stat().st_size > 0
    np.testing.assert_array_equal(
        build_alignment(tokenizers, cache_dir=tmp_path).member_to_union, built.member_to_union
    )
