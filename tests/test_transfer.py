"""Agents that transfer: a PPO and a MAPPO checkpoint, trained on the synthetic task with one
generation length, restored by `python -m launch.evaluate` (a subprocess) with another
`max_new_tokens`, on another task (GSM8K rows from tests/data) and on another pair of members of
the same count (the "portable" observation), beside the baselines fitted on the training split.
Also the clear refusals when an agent cannot transfer."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

from rlae_jax.toy.members import demo_model_config
from tiny_models import uncached_ensemble
from rlae_jax.models import Member, build_model, save_pretrained
from rlae_jax.rl.trainer import RLAETrainer, RLConfig, check_transfer
from rlae_jax.tasks.synthetic import SYNTHETIC, tokenizer_corpus
from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_bpe

REPO = pathlib.Path(__file__).absolute().parent.parent
GSM8K_ROWS = REPO / "tests" / "data" / "tasks" / "gsm8k.jsonl"
CONFIG = RLConfig(
    feature_set="portable",
    num_updates=2,
    batch_size=4,
    max_new_tokens=4,
    span_length=4,
    hidden_sizes=(8,),
    num_epochs=1,
    num_minibatches=1,
)


def tiny_pair(hidden_size: int, seed: int) -> list[Member]:
    """Untrained 1-layer members of the demo's two architectures and tokenizer styles, with room
    for GSM8K prompts."""
    texts = tokenizer_corpus()
    tokenizers = [train_byte_level_bpe(texts, 300), train_metaspace_bpe(texts, 120)]
    configs = [
        dataclasses.replace(
            demo_model_config(kind, tok, hidden_size, num_layers=1), max_position_embeddings=512
        )
        for kind, tok in zip(("gpt2", "llama"), tokenizers)
    ]
    return [
        Member.from_model(build_model(config, seed=seed + i), tok, name=config.model_type)
        for i, (config, tok) in enumerate(zip(configs, tokenizers))
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Member folders of pairs a and b (hidden sizes 32, 48); PPO / MAPPO workdirs trained on a."""
    root = tmp_path_factory.mktemp("transfer")
    pairs = {"a": tiny_pair(32, 0), "b": tiny_pair(48, 10)}
    folders = {
        name: [str(save_pretrained(m, root / f"{name}-{m.name}")) for m in pair]
        for name, pair in pairs.items()
    }
    members = pairs["a"]
    ensemble = uncached_ensemble(members)
    examples = SYNTHETIC.load("train", limit=16)
    workdirs = {}
    for kind in ("ppo", "mappo"):
        workdirs[kind] = root / kind
        config = dataclasses.replace(CONFIG, kind=kind)
        trainer = RLAETrainer(config, ensemble, SYNTHETIC, examples, workdirs[kind])
        trainer.train(progress=False)
    return folders, workdirs


@pytest.mark.slow
def test_checkpoints_restore_for_another_length_task_and_pair(trained, tmp_path):
    folders, workdirs = trained
    output = tmp_path / "evaluate"
    command = [
        sys.executable,
        "-m",
        "launch.evaluate",
        "--config=configs/evaluate.py",
        f"--config.members={','.join(folders['b'])}",
        "--config.task=gsm8k",
        "--config.split=test",
        "--config.limit=4",
        "--config.max_new_tokens=9",
        "--config.baselines=False",
        "--config.router=True",
        "--config.tune_fixed_resolution=2",
        f"--config.data_source={GSM8K_ROWS}",
        f"--config.checkpoints={workdirs['ppo']},{workdirs['mappo']}",
        f"--config.output_dir={output}",
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((output / "results.json").read_text())
    fixed = [name for name in results if name.endswith("(tuned on train)")]
    assert sorted(set(results) - set(fixed)) == [
        "RLAE_MAPPO (mappo)",
        "RLAE_PPO (ppo)",
        "supervised router",
    ], sorted(results)
    assert len(fixed) == 1, sorted(results)  # the baselines fitted on the training split ride along
    for row in results.values():
        assert row["seeds"] == 1 and 0.0 <= row["accuracy_mean"] <= 1.0
    for kind in ("ppo", "mappo"):
        assert (output / f"weights_{kind}.png").stat().st_size > 0


def test_an_agent_that_reads_hidden_states_is_refused_on_other_widths(tmp_path):
    members = tiny_pair(32, 0)
    saved = {"rl": dataclasses.asdict(CONFIG), "members": [{"hidden_size": 32}] * 2}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    full = dataclasses.replace(CONFIG, feature_set="full")
    wider = tiny_pair(48, 10)
    with pytest.raises(
        ValueError,
        match=r"feature_set 'full' observes hidden states of sizes "
        r"\[32, 32\], these members have \[48, 48\]; train with "
        r"feature_set='portable'",
    ):
        check_transfer(tmp_path, full, wider)
    with pytest.raises(ValueError, match=r"holds an agent for 2 members, but 1 are given"):
        check_transfer(tmp_path, full, members[:1])
    check_transfer(tmp_path, full, members)  # same widths: accepted
    check_transfer(tmp_path, CONFIG, wider)  # portable: accepted
