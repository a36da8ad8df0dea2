"""The RLAE training loop around the compiled train step: batches of prompts, orbax checkpoints with
automatic resume (agent, optimiser, RNG and data position), JSONL + TensorBoard metrics, progress bar.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from rlae_jax import sharding
from rlae_jax.align import Alignment
from rlae_jax.engine.loop import DecodeConfig, default_respell_slots, tokenize_for_members
from rlae_jax.models.member import Member
from rlae_jax.rl import ppo
from rlae_jax.rl.losses import LossConfig
from rlae_jax.rl.networks import AgentConfig, make_agent
from rlae_jax.rl.observations import observation_dims
from rlae_jax.rl.rollout import CallbackReward, InGraphReward, RLSetup, train_step_jit
from rlae_jax.tasks.synthetic import SyntheticTask, target_bytes

SCALAR_METRICS = ("reward", "accuracy", "approx_kl", "clip_frac", "entropy", "episode_tokens", "grad_norm",
                  "value_loss", "policy_loss")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Everything that defines one RLAE training run (a checkpoint is only resumed under an equal config)."""

    kind: str = "ppo"  # "ppo" (one Dirichlet agent) or "mappo" (one actor per member, central critic)
    feature_set: str = "full"
    hidden_sizes: tuple[int, ...] = (64, 64)
    shared_actor: bool = True
    span_length: int = 1
    max_new_tokens: int = 24
    expansion_budget: int = 2
    batch_size: int = 32
    num_updates: int = 100
    learning_rate: float = 3e-4
    num_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    entropy_coef: float = 0.0
    length_penalty: float = 0.0
    seed: int = 0

    @classmethod
    def from_dict(cls, values, **overrides) -> "RLConfig":
        """From a mapping (e.g. an ml_collections ConfigDict or a saved config.json); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in dict(values).items() if k in names}
        kwargs.update(overrides)
        if "hidden_sizes" in kwargs:
            kwargs["hidden_sizes"] = tuple(kwargs["hidden_sizes"])
        return cls(**kwargs)

    def setup(self, members: Sequence[Member]) -> RLSetup:
        decode = DecodeConfig(max_new_tokens=self.max_new_tokens, span_length=self.span_length,
                              expansion_budget=self.expansion_budget,
                              respell_slots=default_respell_slots(self.batch_size, members))
        return RLSetup(kind=self.kind, num_members=len(members), feature_set=self.feature_set,
                       hidden_width=max(m.config.hidden_size for m in members), decode=decode,
                       length_penalty=self.length_penalty)

    def agent_config(self, members: Sequence[Member]) -> AgentConfig:
        obs_dim, agent_obs_dim = observation_dims([m.config.hidden_size for m in members], self.feature_set)
        num_spans = -(-self.max_new_tokens // self.span_length)
        return AgentConfig(kind=self.kind, num_members=len(members), obs_dim=obs_dim, agent_obs_dim=agent_obs_dim,
                           hidden_sizes=tuple(self.hidden_sizes), max_spans=num_spans,
                           shared_actor=self.shared_actor)

    def ppo_config(self) -> ppo.PPOConfig:
        return ppo.PPOConfig(gamma=self.gamma, gae_lambda=self.gae_lambda, num_epochs=self.num_epochs,
                             num_minibatches=self.num_minibatches, learning_rate=self.learning_rate,
                             total_updates=self.num_updates,
                             loss=dataclasses.replace(LossConfig(), clip_eps=self.clip_eps,
                                                      entropy_coef=self.entropy_coef))


def initial_train_state(config: RLConfig, members: Sequence[Member]) -> ppo.TrainState:
    key = jax.random.key(config.seed)
    agent_key, train_key = jax.random.split(key)
    return ppo.create_train_state(make_agent(config.agent_config(members), agent_key), config.ppo_config(), train_key)


def batch_order(num_examples: int, batch_size: int, update: int, seed: int) -> np.ndarray:
    """Example indices of update `update`: epochs over a seed-dependent permutation (resumable)."""
    start = update * batch_size
    epoch, offset = divmod(start, num_examples)
    indices = []
    while len(indices) < batch_size:
        permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
        indices += permutation[offset:offset + batch_size - len(indices)].tolist()
        epoch, offset = epoch + 1, 0
    return np.array(indices)


class MetricsWriter:
    """Append-only JSONL metrics plus TensorBoard event files, in `workdir`."""

    def __init__(self, workdir: pathlib.Path):
        from tensorboardX import SummaryWriter

        self.jsonl = open(workdir / "metrics.jsonl", "a")
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, update: int, metrics: dict[str, Any]) -> None:
        row = {"update": update, **{k: np.asarray(v).tolist() for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for name in SCALAR_METRICS:
            if name in metrics:
                self.tensorboard.add_scalar(name, float(metrics[name]), update)
        for span, weights in enumerate(np.asarray(metrics["mean_weights_per_span"])[:8]):
            for member, weight in enumerate(weights):
                self.tensorboard.add_scalar(f"weights/span{span}/member{member}", float(weight), update)

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()


def config_fingerprint(config: RLConfig, members: Sequence[Member]) -> dict:
    """What a checkpoint must match to be resumed: the RL config and the members' architectures."""
    return {"rl": dataclasses.asdict(config),
            "members": [dataclasses.asdict(m.config) | {"name": m.name} for m in members]}


class RLAETrainer:
    """Trains an RLAE agent on a task. Checkpoints go to `workdir/checkpoints` every
    `checkpoint_every` updates (keep `keep`); an existing checkpoint is resumed automatically.
    With a `mesh` (rlae_jax.sharding.make_mesh), members are sharded over 'model' and batches over
    'data'; the compiled step is the same."""

    def __init__(self, config: RLConfig, members: Sequence[Member], alignment: Alignment, task,
                 examples: Sequence, workdir: str | pathlib.Path, checkpoint_every: int = 10, keep: int = 3,
                 mesh=None):
        self.mesh = mesh
        if mesh is not None:
            members = [sharding.shard_member(m, mesh) for m in members]
        self.config, self.members, self.alignment = config, list(members), alignment
        self.task, self.examples = task, list(examples)
        self.workdir = pathlib.Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.setup = config.setup(self.members)
        self.checkpoint_every = checkpoint_every
        self.manager = ocp.CheckpointManager(
            self.workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        if isinstance(task, SyntheticTask):
            self.reward_fn = InGraphReward.for_alignment(alignment)
        else:
            self.reward_fn = CallbackReward.for_task(task, self.examples, alignment)
        self.check_config()

    def check_config(self) -> None:
        """Refuse to resume a checkpoint written under a different config."""
        path = self.workdir / "config.json"
        fingerprint = json.loads(json.dumps(config_fingerprint(self.config, self.members)))
        if path.exists() and self.manager.latest_step() is not None:
            saved = json.loads(path.read_text())
            if saved != fingerprint:
                differing = sorted(k for k in set(saved["rl"]) | set(fingerprint["rl"])
                                   if saved["rl"].get(k) != fingerprint["rl"].get(k))
                raise ValueError(
                    f"{self.workdir} holds a checkpoint from a different config (differs in: "
                    f"{', '.join(differing) or 'members'}); use another workdir or the same config")
        path.write_text(json.dumps(fingerprint, indent=1))

    def batch(self, update: int):
        """Prompts (each member's tokenisation) and reward data of update `update`."""
        indices = batch_order(len(self.examples), self.config.batch_size, update, self.config.seed)
        examples = [self.examples[i] for i in indices]
        prompts = [self.task.render(e, self.members[0].tokenizer) for e in examples]
        batch = tokenize_for_members(self.members, prompts, self.config.max_new_tokens)
        data = (jnp.asarray(target_bytes(examples, 4 * self.config.max_new_tokens))
                if isinstance(self.reward_fn, InGraphReward) else jnp.asarray(indices, jnp.int32))
        if self.mesh is not None:
            batch, data = sharding.shard_batch((batch, data), self.mesh)
        return batch, data

    def restore_or_init(self) -> ppo.TrainState:
        state = restore_or_init(self.manager, self.config, self.members)
        return state if self.mesh is None else sharding.shard_train_state(state, self.mesh)

    def save(self, state: ppo.TrainState) -> None:
        self.manager.save(int(state.update_count), args=ocp.args.StandardSave(checkpoint_items(state)))

    def train(self, num_updates: int | None = None, progress: bool = True) -> ppo.TrainState:
        """Run until `num_updates` (default: the config's) updates are done; returns the final state."""
        target = num_updates or self.config.num_updates
        state = self.restore_or_init()
        writer = MetricsWriter(self.workdir) if jax.process_index() == 0 else None
        bar = tqdm(range(int(state.update_count), target), desc=f"RLAE {self.config.kind}", disable=not progress)
        try:
            for update in bar:
                prompts, reward_data = self.batch(update)
                state, metrics = train_step_jit(state, self.members, self.alignment, prompts, self.reward_fn,
                                                reward_data, self.setup)
                ppo.raise_if_nonfinite(metrics, update + 1)
                metrics = jax.device_get(metrics)
                if writer is not None:
                    writer.write(update + 1, metrics)
                bar.set_postfix(reward=f"{float(metrics['reward']):.3f}", refresh=False)
                if (update + 1) % self.checkpoint_every == 0 or update + 1 == target:
                    self.save(state)
            self.manager.wait_until_finished()
        finally:
            if writer is not None:
                writer.close()
        return state


def checkpoint_items(state: ppo.TrainState) -> dict:
    """The saved part of a TrainState: parameters, optimiser state, raw RNG key data and update count."""
    return {"params": state.params, "opt_state": state.opt_state, "key": jax.random.key_data(state.key),
            "update_count": state.update_count}


def restore_or_init(manager: ocp.CheckpointManager, config: RLConfig, members: Sequence[Member]) -> ppo.TrainState:
    """The latest checkpoint's TrainState, or a fresh one when there is none."""
    state = initial_train_state(config, members)
    step = manager.latest_step()
    if step is None:
        return state
    restored = manager.restore(step, args=ocp.args.StandardRestore(checkpoint_items(state)))
    return state.replace(params=restored["params"], opt_state=restored["opt_state"],
                         key=jax.random.wrap_key_data(restored["key"]), update_count=restored["update_count"])


def load_agent_state(workdir: str | pathlib.Path, config: RLConfig, members: Sequence[Member]) -> ppo.TrainState:
    """The latest checkpointed TrainState of a finished run (for evaluation)."""
    manager = ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints")
    if manager.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
    return restore_or_init(manager, config, members)
