"""RL rollouts and evaluation at the cost of the question, on the real pair (SmolLM2-135M-Instruct +
Gemma-3-270M) with the study's prompts and settings (reasoning-gym syllogisms after one worked
example, 8 new tokens, spans of 4, batches of 16 rows), side by side in one run:

- trainer episodes/s of one PPO update (rollout + reward + update), for
  `today`: every row its whole prompt, padded to its batch's length bucket, one episode per
  question; `prefix`: the prompts' shared prefix prefilled once, the questions padded to one
  length for the split; `prefix+K`: that and K weight samples per question from one prefill;
- evaluation seconds per answer (prefill + decode per row, batches of 40) of uniform weights with
  whole prompts and with the shared prefix, and of PackLLM (its prompt NLL from the prefill);
- the process's peak RSS.

Run: `python benchmarks/rl_throughput.py` (`--updates`, `--eval-examples`, `--samples`). The last
line reads `trainer speed-up X.X×, evaluation speed-up Y.Y×` (both against `today`).
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine_info
from rlae_jax import Ensemble
from rlae_jax.engine import DecodeConfig, resolve_strategy, tokenize_for_members
from rlae_jax.experiments.evaluation import run_strategies
from rlae_jax.rl.rollout import make_reward, train_step_jit
from rlae_jax.rl.trainer import RLConfig, batch_order, initial_train_state
from rlae_jax.tasks import get_task

MEMBERS = ("smollm2-135m-instruct", "gemma-3-270m")
TASK = "rg/syllogism"


def update_batches(path, ensemble, task, pool, shots, config):
    """A function update → (prompt batch, reward data) for `path` (today / prefix / prefix+K)."""
    questions = config.batch_size // config.samples_per_question
    encoded = ensemble.encode(task, pool, shots, config.max_new_tokens)

    def batch(update):
        indices = batch_order(len(pool), questions, update, config.seed)
        data = jnp.asarray(np.repeat(indices, config.samples_per_question), jnp.int32)
        if path == "today":
            texts = ensemble.prompts(task, [pool[i] for i in indices], shots)
            return tokenize_for_members(ensemble.members, texts, config.max_new_tokens), data
        return ensemble.batch(encoded, indices), data

    return batch


def episodes_per_second(path, ensemble, task, pool, shots, config, updates):
    """(episodes/s over `updates` timed updates after one compiling update, compiles seen)."""
    state = initial_train_state(config, ensemble.members)
    setup = config.setup(ensemble.members)
    reward = make_reward(config.reward, task, pool, ensemble.alignment)
    batch = update_batches(path, ensemble, task, pool, shots, config)
    compiled = train_step_jit._cache_size()
    seconds = []
    for update in range(updates + 1):
        prompts, data = batch(update)
        began = time.perf_counter()
        state, metrics = train_step_jit(state, ensemble, prompts, reward, data, setup)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - began)
    per_update = float(np.mean(seconds[1:]))
    return config.batch_size / per_update, train_step_jit._cache_size() - compiled


def seconds_per_answer(ensemble, task, examples, shots, shared_prefix):
    """Evaluation seconds per answer of uniform weights and PackLLM (batches of 40)."""
    config = DecodeConfig(max_new_tokens=8, span_length=4)
    strategies = {
        name: (resolve_strategy(name, len(ensemble)), config) for name in ("uniform", "packllm")
    }
    results = run_strategies(
        strategies,
        ensemble,
        task,
        examples,
        batch_size=40,
        shots=shots,
        shared_prefix=shared_prefix,
    )
    return {name: r.seconds_per_answer for name, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=4, help="timed updates per path")
    parser.add_argument("--eval-examples", type=int, default=120)
    parser.add_argument("--samples", type=int, default=4, help="K weight samples per question")
    opts = parser.parse_args()
    print(f"# {machine_info()}")
    ensemble = Ensemble.from_pretrained(MEMBERS)
    task = get_task(TASK)
    pool = task.load("train", limit=257)
    shots, pool = pool[:1], pool[1:]
    test = task.load("test", limit=opts.eval_examples)
    base = dict(batch_size=16, max_new_tokens=8, span_length=4, num_updates=100, num_epochs=4)
    rows = {}
    for path, samples in (("today", 1), ("prefix", 1), (f"prefix+K={opts.samples}", opts.samples)):
        advantage = "group" if samples > 1 else "gae"  # a group of one has no baseline
        config = RLConfig(**base, samples_per_question=samples, advantage=advantage)
        rows[path] = episodes_per_second(path, ensemble, task, pool, shots, config, opts.updates)
        print(f"trainer {path:>12}: {rows[path][0]:6.2f} episodes/s, compiles {rows[path][1]}")
    today_eval = seconds_per_answer(ensemble, task, test, shots, shared_prefix=False)
    prefix_eval = seconds_per_answer(ensemble, task, test, shots, shared_prefix=True)
    for name in today_eval:
        print(
            f"evaluation {name:>8}: whole prompts {today_eval[name]:.3f} s/answer, shared prefix "
            f"{prefix_eval[name]:.3f} s/answer"
        )
    print(
        f"PackLLM / uniform with the shared prefix: "
        f"{prefix_eval['packllm'] / prefix_eval['uniform']:.2f}×"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")
    trainer = rows[f"prefix+K={opts.samples}"][0] / rows["today"][0]
    evaluation = today_eval["uniform"] / prefix_eval["uniform"]
    print(f"trainer speed-up {trainer:.1f}×, evaluation speed-up {evaluation:.1f}×")


if __name__ == "__main__":
    main()
