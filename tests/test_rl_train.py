"""The RLAE train step on real (tiny, random) members: resume exactness (PPO, and MAPPO killed
between two checkpoints) with the observation stats restored bit for bit, the question-major batch
of K samples per question, the per-update diagnostics in metrics.jsonl and TensorBoard, vmapped
seeds, the workdir lock, and training stopped with clear messages on NaN rewards or a mismatched
checkpoint."""

import dataclasses
import gc
import json
import socket
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlae_jax.toy.members import demo_model_config
from tiny_models import uncached_ensemble
from rlae_jax.models import Member, build_model
from rlae_jax.rl import trainer as trainer_module
from rlae_jax.rl.rollout import InGraphReward, train_step, train_step_jit
from rlae_jax.rl.trainer import (
    RLAETrainer,
    RLConfig,
    checkpoint_items,
    initial_train_state,
    restore_or_init,
)
from rlae_jax.tasks.synthetic import SYNTHETIC, target_bytes, tokenizer_corpus
from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_bpe

# partial credit: untrained members never answer exactly, and a 0/1 reward would leave the policy
# still
CONFIG = RLConfig(
    kind="ppo",
    num_updates=8,
    batch_size=8,
    max_new_tokens=8,
    span_length=2,
    hidden_sizes=(16,),
    num_epochs=2,
    num_minibatches=2,
    learning_rate=1e-3,
    reward="char_accuracy",
)


@pytest.fixture(scope="module")
def members():
    """Untrained members of the demo's two architectures and tokenizer styles."""
    texts = tokenizer_corpus()
    tokenizers = [train_byte_level_bpe(texts, 300), train_metaspace_bpe(texts, 120)]
    return [
        Member.from_model(
            build_model(demo_model_config(kind, tok, hidden_size=32), seed=i), tok, name=kind
        )
        for i, (kind, tok) in enumerate(zip(("gpt2", "llama"), tokenizers))
    ]


@pytest.fixture(scope="module")
def ensemble(members):
    return uncached_ensemble(members)


@pytest.fixture(scope="module")
def examples():
    return SYNTHETIC.load("train", limit=64)


def leaves(state):
    """Everything a checkpoint holds: parameters, optimiser state, key, count, observation stats."""
    return [np.asarray(x) for x in jax.tree.leaves(checkpoint_items(state))]


def test_resume_equals_an_uninterrupted_run(ensemble, examples, tmp_path):
    """4 updates, save, drop all, resume from disk to 8 == 8 updates in one go (same seed)."""
    first = RLAETrainer(
        CONFIG,
        ensemble,
        SYNTHETIC,
        examples,
        tmp_path / "resumed",
        checkpoint_every=4,
    )
    first.train(num_updates=4, progress=False)
    del first
    resumed = RLAETrainer(
        CONFIG,
        ensemble,
        SYNTHETIC,
        examples,
        tmp_path / "resumed",
        checkpoint_every=4,
    )
    assert resumed.manager.latest_step() == 4
    resumed_state = resumed.train(progress=False)
    straight = RLAETrainer(
        CONFIG,
        ensemble,
        SYNTHETIC,
        examples,
        tmp_path / "straight",
        checkpoint_every=4,
    )
    straight_state = straight.train(progress=False)
    assert int(resumed_state.update_count) == int(straight_state.update_count) == 8
    for a, b in zip(leaves(resumed_state), leaves(straight_state)):
        np.testing.assert_array_equal(a, b)
    read = lambda d: [json.loads(line) for line in open(tmp_path / d / "metrics.jsonl")]
    assert read("resumed") == read("straight")  # same seed → same metrics, update by update
    assert (tmp_path / "straight" / "tensorboard").is_dir()


@pytest.mark.slow  # minutes on 2 cores: the slow job runs it
def test_mappo_killed_between_checkpoints_resumes_from_the_last_one(
    ensemble, examples, tmp_path, monkeypatch
):
    """MAPPO checkpointing every 2 updates dies inside update 4 (row 3 written, no checkpoint since
    2); the rerun resumes from 2, drops row 3 and redoes it: parameters and metrics.jsonl equal an
    uninterrupted run's, bit for bit, with every update once."""
    config = dataclasses.replace(CONFIG, kind="mappo", num_updates=4)
    calls = []

    class Killed(Exception):
        pass

    def dies_in_update_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Killed
        return train_step_jit(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step_jit", dies_in_update_4)
    killed = RLAETrainer(
        config,
        ensemble,
        SYNTHETIC,
        examples,
        tmp_path / "killed",
        checkpoint_every=2,
    )
    with pytest.raises(Killed):
        killed.train(progress=False)
    del killed
    monkeypatch.undo()
    read = lambda d: [json.loads(line) for line in open(tmp_path / d / "metrics.jsonl")]
    assert [row["update"] for row in read("killed")] == [1, 2, 3]
    resumed = RLAETrainer(
        config,
        ensemble,
        SYNTHETIC,
        examples,
        tmp_path / "killed",
        checkpoint_every=2,
    )
    assert resumed.manager.latest_step() == 2
    resumed_state = resumed.train(progress=False)
    straight = RLAETrainer(
        config,
        ensemble,
        SYNTHETIC,
        examples,
        tmp_path / "straight",
        checkpoint_every=2,
    )
    straight_state = straight.train(progress=False)
    for a, b in zip(leaves(resumed_state), leaves(straight_state)):
        np.testing.assert_array_equal(a, b)
    assert [row["update"] for row in read("killed")] == [1, 2, 3, 4]
    assert read("killed") == read("straight")


def test_a_workdir_in_use_is_refused_and_a_stale_lock_taken_over(ensemble, examples, tmp_path):
    """The lock names a live process of this host: refused in one line before config.json is
    touched. Once that process is gone, its lock is stale and the next run takes it over."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "lock").write_text(f"{live.pid} {socket.gethostname()}\n")
        (tmp_path / "config.json").write_text("{}")
        with pytest.raises(
            RuntimeError,
            match=rf"^{tmp_path} is in use by another run \(pid {live.pid} on host "
            rf"{socket.gethostname()}, lock file {tmp_path}/lock\); wait",
        ):
            RLAETrainer(CONFIG, ensemble, SYNTHETIC, examples, tmp_path)
        assert (tmp_path / "config.json").read_text() == "{}"
    finally:
        live.kill()
        live.wait()
    trainer = RLAETrainer(CONFIG, ensemble, SYNTHETIC, examples, tmp_path)
    assert (tmp_path / "lock").read_text().split() == [
        str(trainer_module.os.getpid()),
        socket.gethostname(),
    ]
    del trainer
    gc.collect()
    assert not (tmp_path / "lock").exists()  # released with the trainer
    other_host = tmp_path / "other"
    other_host.mkdir()
    # a dead pid elsewhere proves nothing
    (other_host / "lock").write_text(f"{live.pid} some-other-host\n")
    with pytest.raises(RuntimeError, match=r"pid \d+ on host some-other-host"):
        RLAETrainer(CONFIG, ensemble, SYNTHETIC, examples, other_host)


def tensorboard_tags(folder) -> set[str]:
    """The scalar tags in the TensorBoard event files under `folder` (TFRecord: length u64, its
    crc u32, an Event proto, its crc u32)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            tags |= {value.tag for value in event.summary.value}
            offset += 12 + length + 4
    return tags


def test_batches_hold_k_samples_of_each_question_question_major(ensemble, examples, tmp_path):
    trainer = RLAETrainer(CONFIG, ensemble, SYNTHETIC, examples, tmp_path)
    prompts, targets = trainer.batch(0)
    k = CONFIG.samples_per_question
    questions = np.asarray(targets).reshape(CONFIG.batch_size // k, k, -1)
    assert np.all(questions == questions[:, :1])  # rows q*K .. q*K+K-1: one question
    assert len({row.tobytes() for row in questions[:, 0]}) == CONFIG.batch_size // k
    for ids in prompts.input_ids:  # one prefilled row per question: the engine decodes it K times
        assert np.asarray(ids).shape[0] == CONFIG.batch_size // k
        assert len({row.tobytes() for row in np.asarray(ids)}) == CONFIG.batch_size // k
    assert trainer.setup.decode.samples_per_prompt == k


def test_diagnostics_are_recorded_per_update_and_the_agent_restores_bit_identically(
    ensemble, members, examples, tmp_path
):
    """metrics.jsonl and TensorBoard hold every diagnostic of every update; the checkpoint holds
    the observation stats the rollouts gathered, and restoring gives back every leaf bit for bit."""
    trainer = RLAETrainer(CONFIG, ensemble, SYNTHETIC, examples, tmp_path, checkpoint_every=2)
    state = trainer.train(num_updates=2, progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["update"] for r in rows] == [1, 2]
    for row in rows:
        for name in trainer_module.SCALAR_METRICS:
            assert np.isfinite(row[name]), name
        assert 0.0 <= row["informative_share"] <= 1.0 and 0.0 <= row["reward"] <= 1.0
        np.testing.assert_allclose(row["learning_rate"], CONFIG.learning_rate, rtol=1e-6)
        np.testing.assert_allclose(np.sum(row["weight_mean"]), 1.0, rtol=1e-5)
        assert len(row["weight_spread"]) == 2 and min(row["weight_spread"]) >= 0.0
        per_span = np.array(row["mean_weights_per_span"])
        assert per_span.shape == (CONFIG.max_new_tokens // CONFIG.span_length, 2)
        np.testing.assert_allclose(per_span.sum(-1)[per_span.sum(-1) > 0], 1.0, rtol=1e-5)
    tags = tensorboard_tags(tmp_path / "tensorboard")
    expected = set(trainer_module.SCALAR_METRICS) | {
        f"{name}/member{i}" for name in trainer_module.PER_MEMBER_METRICS for i in (0, 1)
    }
    assert expected <= tags, expected - tags

    stats = state.obs_stats
    spans = CONFIG.max_new_tokens // CONFIG.span_length
    assert 0 < float(stats.count) <= 2 * CONFIG.batch_size * spans
    assert not np.allclose(stats.var, 1.0) and not np.allclose(stats.mean, 0.0)
    restored = restore_or_init(trainer.manager, CONFIG, members)
    for saved, loaded in zip(leaves(state), leaves(restored), strict=True):
        assert saved.dtype == loaded.dtype
        np.testing.assert_array_equal(saved, loaded)
    for saved, loaded in zip(jax.tree.leaves(stats), jax.tree.leaves(restored.obs_stats)):
        np.testing.assert_array_equal(saved, loaded)


def test_a_checkpoint_from_another_config_is_refused(ensemble, examples, tmp_path):
    RLAETrainer(CONFIG, ensemble, SYNTHETIC, examples, tmp_path, checkpoint_every=1).train(
        num_updates=1, progress=False
    )
    other = dataclasses.replace(CONFIG, learning_rate=5e-4)
    with pytest.raises(
        ValueError, match=r"checkpoint from a different config \(differs in: learning_rate\)"
    ):
        RLAETrainer(other, ensemble, SYNTHETIC, examples, tmp_path)


class NaNTask:
    """A Python-reward task whose reward is NaN: reached through jax.pure_callback."""

    name = "nan_task"

    def render(self, example, tokenizer=None, shots=(), formatter=None):
        return example.prompt

    def rewards(self, completions, examples):
        return np.full(len(completions), np.nan, np.float32)


def test_nan_reward_stops_training_naming_the_update(ensemble, examples, tmp_path):
    config = dataclasses.replace(CONFIG, reward="correctness")  # the task's own reward
    trainer = RLAETrainer(config, ensemble, NaNTask(), examples, tmp_path, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="update 1:"):
        trainer.train(num_updates=3, progress=False)


@pytest.mark.slow  # minutes on 2 cores: the slow job runs it
def test_seeds_can_be_vmapped_over_the_train_step(ensemble, members, examples):
    samples = CONFIG.samples_per_question
    prompts_examples = examples[: CONFIG.batch_size // samples]
    from rlae_jax.engine import tokenize_for_members

    prompts = tokenize_for_members(
        members, [e.prompt for e in prompts_examples], CONFIG.max_new_tokens
    )
    rows = [e for e in prompts_examples for _ in range(samples)]  # K decoded rows per question
    targets = jnp.asarray(target_bytes(rows, 32))
    reward_fn = InGraphReward.for_alignment(ensemble.alignment, exact=False)
    setup = CONFIG.setup(members)
    states = [initial_train_state(dataclasses.replace(CONFIG, seed=s), members) for s in (0, 1)]
    singles = [train_step_jit(s, ensemble, prompts, reward_fn, targets, setup)[0] for s in states]
    stack = lambda *xs: jnp.stack(xs)
    stacked = states[0].replace(
        **{
            field: jax.tree.map(stack, *[getattr(s, field) for s in states])
            for field in ("params", "opt_state", "key", "update_count", "obs_stats")
        }
    )
    vmapped = jax.jit(
        jax.vmap(train_step, in_axes=(0, None, None, None, None, None)), static_argnums=(5,)
    )(stacked, ensemble, prompts, reward_fn, targets, setup)[0]
    for index, single in enumerate(singles):
        for field in ("params", "obs_stats"):
            per_seed = [np.asarray(x)[index] for x in jax.tree.leaves(getattr(vmapped, field))]
            for a, b in zip(jax.tree.leaves(getattr(single, field)), per_seed, strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
