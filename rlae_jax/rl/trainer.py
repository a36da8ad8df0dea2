"""The RLAE training loop around the compiled train step: batches of prompts, orbax checkpoints with
automatic resume (agent, optimiser, RNG and data position), JSONL + TensorBoard metrics, progress
bar, and a lock file that keeps a second run off a workdir in use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import weakref
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from rlae_jax.runtime import sharding
from rlae_jax.engine import DecodeConfig
from rlae_jax.engine.prefix import EncodedPrompts
from rlae_jax.engine.state import stack_groups
from rlae_jax.ensemble import Ensemble
from rlae_jax.models.member import Member
from rlae_jax.rl import ppo
from rlae_jax.rl.losses import LossConfig
from rlae_jax.rl.networks import AgentConfig, check_eval_action, make_agent
from rlae_jax.rl.observations import WIDE, check_feature_set, observation_dims
from rlae_jax.rl.rollout import TRACES, InGraphReward, RLSetup, make_reward, train_step_jit
from rlae_jax.tasks.synthetic import target_bytes

SCALAR_METRICS = (
    "reward",
    "accuracy",
    "informative_share",
    "entropy",
    "approx_kl",
    "clip_frac",
    "explained_variance",
    "gae_advantage_std",
    "group_advantage_std",
    "advantage_correlation",
    "learning_rate",
    "episode_tokens",
    "grad_norm",
    "value_loss",
    "policy_loss",
)
PER_MEMBER_METRICS = ("weight_mean", "weight_spread")
# per family f (TensorBoard: NAME/f, and family_weight_mean/f/n per member n); written only for the
# families a batch holds
PER_FAMILY_METRICS = ("family_reward", "family_rows")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Everything that defines one RLAE training run (a checkpoint is only resumed under an equal
    config). `reward`: "correctness" (0/1) or "char_accuracy" (synthetic partial credit; see
    `rollout.make_reward`). `batch_size` counts rows: `batch_size / samples_per_question` questions
    of `samples_per_question` samples each. `advantage`, `group_std`, `normalize_observations`,
    `lr_schedule`, `lr_warmup_updates`, `lr_floor`: see `ppo.PPOConfig`; `eval_action`: how an
    evaluation takes the weights (`networks.EVAL_ACTIONS`).

    `num_families`: the task's number of families (`len(task.families)` of a
    `tasks.mixture.MixtureTask`, 1 for any other task; `RLAETrainer` checks it), so the per-family
    diagnostics (`rollout.family_statistics`) and the family one-hot have one static shape.
    `family_feature`: the agent also observes each row's family as a one-hot (the oracle-feature
    ablation: does an agent that is told what matters learn where one that is not does not?),
    appended to the raw observation before the running normalisation, so its columns are
    normalised like every other input (a family no batch has held yet has variance 0 and reads
    as the clip, ±10, when it first appears); its evaluation then needs the family
    (`rollout.policy_weight_fn(..., family=f)`)."""

    # "ppo" (one Dirichlet agent) or "mappo" (one actor per member, central critic)
    kind: str = "ppo"
    feature_set: str = "full"
    hidden_sizes: tuple[int, ...] = (64, 64)
    shared_actor: bool = True
    span_length: int = 4
    reward: str = "correctness"
    max_new_tokens: int = 24
    expansion_budget: int = 2
    batch_size: int = 32
    samples_per_question: int = 4
    num_updates: int = 100
    advantage: str = "group"
    group_std: bool = False
    normalize_observations: bool = True
    learning_rate: float = 3e-4
    lr_schedule: str = "constant"
    lr_warmup_updates: int = 0
    lr_floor: float = 0.1
    num_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    entropy_coef: float = 0.01
    length_penalty: float = 0.0
    eval_action: str = "mean"
    seed: int = 0
    num_families: int = 1
    family_feature: bool = False

    def __post_init__(self):
        if self.num_families < 1:
            raise ValueError(f"num_families must be >= 1, got {self.num_families}")
        if self.samples_per_question < 1 or self.batch_size % self.samples_per_question:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of samples_per_question "
                f"{self.samples_per_question} (>= 1)"
            )
        if self.advantage == "group" and self.samples_per_question < 2:
            raise ValueError(
                "advantage 'group' needs samples_per_question >= 2 (one sample per question has "
                "no group to compare with: every advantage would be 0); use advantage='gae'"
            )
        check_feature_set(self.feature_set)
        check_eval_action(self.eval_action)
        self.ppo_config()  # the learner's own checks

    @classmethod
    def from_dict(cls, values, ignore: Sequence[str] = (), **overrides) -> "RLConfig":
        """From a mapping (ml_collections ConfigDict, saved config.json); a key that is not a field
        raises, except those named in `ignore` (settings of the caller kept beside them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in dict(values).items() if k not in ignore}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown RLConfig key(s): {', '.join(unknown)}")
        kwargs.update(overrides)
        if "hidden_sizes" in kwargs:
            kwargs["hidden_sizes"] = tuple(kwargs["hidden_sizes"])
        return cls(**kwargs)

    def setup(self, members: Sequence[Member]) -> RLSetup:
        decode = DecodeConfig(
            max_new_tokens=self.max_new_tokens,
            span_length=self.span_length,
            expansion_budget=self.expansion_budget,
            samples_per_prompt=self.samples_per_question,
        )
        return RLSetup(
            kind=self.kind,
            num_members=len(members),
            feature_set=self.feature_set,
            hidden_width=max(m.config.hidden_size for m in members),
            decode=decode,
            length_penalty=self.length_penalty,
            eval_action=self.eval_action,
            samples_per_question=self.samples_per_question,
            num_families=self.num_families,
            family_feature=self.family_feature,
        )

    def agent_config(self, members: Sequence[Member]) -> AgentConfig:
        """The agent's architecture: independent of `max_new_tokens` and the task, so a checkpoint
        restores for any of them (and, with a member-independent feature_set, for any members of
        the same count); a family_feature agent's inputs hold `num_families` more columns."""
        obs_dim, agent_obs_dim = observation_dims(
            [m.config.hidden_size for m in members],
            self.feature_set,
            self.num_families if self.family_feature else 0,
        )
        return AgentConfig(
            kind=self.kind,
            num_members=len(members),
            obs_dim=obs_dim,
            agent_obs_dim=agent_obs_dim,
            hidden_sizes=tuple(self.hidden_sizes),
            shared_actor=self.shared_actor,
        )

    def ppo_config(self) -> ppo.PPOConfig:
        return ppo.PPOConfig(
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            advantage=self.advantage,
            group_size=self.samples_per_question,
            group_std=self.group_std,
            normalize_observations=self.normalize_observations,
            num_epochs=self.num_epochs,
            num_minibatches=self.num_minibatches,
            learning_rate=self.learning_rate,
            lr_schedule=self.lr_schedule,
            lr_warmup_updates=self.lr_warmup_updates,
            lr_floor=self.lr_floor,
            total_updates=self.num_updates,
            loss=LossConfig(clip_eps=self.clip_eps, entropy_coef=self.entropy_coef),
        )


def initial_train_state(config: RLConfig, members: Sequence[Member]) -> ppo.TrainState:
    key = jax.random.key(config.seed)
    agent_key, train_key = jax.random.split(key)
    return ppo.create_train_state(
        make_agent(config.agent_config(members), agent_key), config.ppo_config(), train_key
    )


def batch_order(num_examples: int, batch_size: int, update: int, seed: int) -> np.ndarray:
    """Example indices of update `update`: epochs over a seed-dependent permutation (resumable)."""
    start = update * batch_size
    epoch, offset = divmod(start, num_examples)
    indices = []
    while len(indices) < batch_size:
        permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
        indices += permutation[offset : offset + batch_size - len(indices)].tolist()
        epoch, offset = epoch + 1, 0
    return np.array(indices)


def example_families(config: RLConfig, task, examples: Sequence) -> np.ndarray:
    """`[E]` int32 family index of each example: a mixture's (`task.families_of`), zeros for a task
    of one family. One-line ValueError when `config.num_families` is not the task's count."""
    count = len(task.families) if hasattr(task, "families_of") else 1
    if config.num_families != count:
        raise ValueError(
            f"RLConfig.num_families is {config.num_families} but the task "
            f"{getattr(task, 'name', type(task).__name__)!r} has {count} "
            f"{'family' if count == 1 else 'families'}"
        )
    if count == 1:
        return np.zeros(len(examples), np.int32)
    return task.families_of(examples)


def json_value(value):
    """`value` (a metric as Python numbers or nested lists) for strict JSON: NaN and ±inf become
    null (e.g. `family_reward` of a family absent from a batch)."""
    if isinstance(value, list):
        return [json_value(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def truncate_metrics(path: pathlib.Path, last_update: int) -> None:
    """Keep only the rows of `path` (JSONL) up to update `last_update`: rows a run wrote after its
    last checkpoint are redone on resume (a torn last line is dropped too)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["update"] <= last_update:
            kept.append(line + "\n")
    partial = path.with_name(path.name + ".tmp")
    partial.write_text("".join(kept))
    os.replace(partial, path)


class MetricsWriter:
    """JSONL metrics plus TensorBoard event files, in `workdir`, continuing after update `start`."""

    def __init__(self, workdir: pathlib.Path, start: int = 0):
        from tensorboardX import SummaryWriter

        truncate_metrics(workdir / "metrics.jsonl", start)
        self.jsonl = open(workdir / "metrics.jsonl", "a")
        # purge_step hides the events a killed run wrote past its last checkpoint (steps > start)
        self.tensorboard = SummaryWriter(
            str(workdir / "tensorboard"), purge_step=start + 1 if start else None
        )

    def write(self, update: int, metrics: dict[str, Any]) -> None:
        """One JSONL row (array metrics as nested lists, non-finite numbers as null) and the
        TensorBoard scalars of update `update`."""
        row = {
            "update": update,
            **{k: json_value(np.asarray(v).tolist()) for k, v in metrics.items()},
        }
        self.jsonl.write(json.dumps(row, allow_nan=False) + "\n")
        self.jsonl.flush()
        for name in SCALAR_METRICS:
            if name in metrics:
                self.tensorboard.add_scalar(name, float(metrics[name]), update)
        for name in PER_MEMBER_METRICS:
            for member, value in enumerate(np.asarray(metrics[name])):
                self.tensorboard.add_scalar(f"{name}/member{member}", float(value), update)
        for span, weights in enumerate(np.asarray(metrics["mean_weights_per_span"])[:8]):
            for member, weight in enumerate(weights):
                self.tensorboard.add_scalar(
                    f"weights/span{span}/member{member}", float(weight), update
                )
        if "family_rows" in metrics:
            self.write_families(update, metrics)

    def write_families(self, update: int, metrics: dict[str, Any]) -> None:
        """`family_reward/f`, `family_rows/f` and `family_weight_mean/f/n` of each family f the
        batch holds (an absent family's means are NaN: no point is written)."""
        rows = np.asarray(metrics["family_rows"])
        for family in np.flatnonzero(rows > 0):
            for name in PER_FAMILY_METRICS:
                value = float(np.asarray(metrics[name])[family])
                self.tensorboard.add_scalar(f"{name}/{family}", value, update)
            for member, weight in enumerate(np.asarray(metrics["family_weight_mean"])[family]):
                self.tensorboard.add_scalar(
                    f"family_weight_mean/{family}/{member}", float(weight), update
                )

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()


def config_fingerprint(config: RLConfig, members: Sequence[Member]) -> dict:
    """What a checkpoint must match to be resumed: the RL config and the members' architectures."""
    return {
        "rl": dataclasses.asdict(config),
        "members": [dataclasses.asdict(m.config) | {"name": m.name} for m in members],
    }


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """`workdir/lock`, holding "<pid> <host>" of the run that uses the workdir. Created atomically;
    a lock of this process is re-entered, one whose pid is dead on this host is stale and taken
    over, any other is refused with a one-line RuntimeError naming the owner."""

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / "lock"
        self.owner = f"{os.getpid()} {socket.gethostname()}"

    def acquire(self) -> None:
        while True:
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self.take_over_or_refuse():
                    return
                continue
            with os.fdopen(descriptor, "w") as lock:
                lock.write(self.owner + "\n")
            return

    def take_over_or_refuse(self) -> bool:
        """True when the lock is ours; removes a stale one (→ False: try again); else raises."""
        try:
            owner = self.path.read_text().strip()
        except FileNotFoundError:
            return False
        if owner == self.owner:
            return True
        pid, _, host = owner.partition(" ")
        if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            self.path.unlink(missing_ok=True)
            return False
        raise RuntimeError(
            f"{self.path.parent} is in use by another run (pid {pid or '?'} on host "
            f"{host or '?'}, lock file {self.path}); wait for it or use another "
            "workdir"
        )

    def release(self) -> None:
        """Remove the lock file if it is ours."""
        try:
            if self.path.read_text().strip() == self.owner:
                self.path.unlink()
        except FileNotFoundError:
            pass


class RLAETrainer:
    """Trains an RLAE agent on a task. Checkpoints go to `workdir/checkpoints` every
    `checkpoint_every` updates (keep `keep`); an existing checkpoint is resumed automatically.
    With a `mesh` (runtime.sharding.make_mesh), members are sharded over 'model' and batches over
    'data'; the compiled step is the same. Each member reads every question in its own chat format
    after the few-shot `shots` (`member_prompts`). A mixture (`tasks.mixture.MixtureTask`)
    draws the same number of questions from every family per update, and each family's rows start
    from that family's own prefilled prefix (its worked examples). `encoded`: the examples already
    encoded by the ensemble (one EncodedPrompts per family, of one shape: `Ensemble.encode_splits`),
    else they are encoded here. The workdir is locked (`WorkdirLock`) from construction to the end
    of `train`, so a second run on it is refused before it touches anything."""

    def __init__(
        self,
        config: RLConfig,
        ensemble: Ensemble,
        task,
        examples: Sequence,
        workdir: str | pathlib.Path,
        checkpoint_every: int = 10,
        keep: int = 3,
        mesh=None,
        shots: Sequence = (),
        encoded: EncodedPrompts | Sequence[EncodedPrompts] | None = None,
    ):
        if not isinstance(ensemble, Ensemble):
            raise TypeError(
                "RLAETrainer takes an rlae_jax.Ensemble (members, their alignment and prompt "
                f"formats), got {type(ensemble).__name__}"
            )
        self.mesh, self.shots = mesh, list(shots)
        if mesh is not None:
            ensemble = sharding.shard_ensemble(ensemble, mesh)
        self.config, self.ensemble = config, ensemble
        self.members = list(ensemble.members)
        self.task, self.examples = task, list(examples)
        # [E] int32 family of each example (checks config.num_families against the task)
        self.example_families = example_families(config, task, self.examples)
        # the training split, formatted and encoded once per family (its rows share the family's
        # worked examples, prefilled once), every family to one shape: one compiled train step
        families = range(config.num_families)
        self.groups = [np.flatnonzero(self.example_families == f) for f in families]
        self.encoded = self.encode_groups(encoded)
        self.workdir = pathlib.Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lock = WorkdirLock(self.workdir) if jax.process_index() == 0 else None
        self.acquire()
        if self.lock is not None:
            weakref.finalize(self, self.lock.release)
        self.setup = config.setup(self.members)
        self.checkpoint_every = checkpoint_every
        self.manager = ocp.CheckpointManager(
            self.workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self.reward_fn = make_reward(config.reward, task, self.examples, ensemble.alignment)
        self.check_config()

    def acquire(self) -> None:
        if self.lock is not None:
            self.lock.acquire()

    def check_config(self) -> None:
        """Refuse to resume a checkpoint written under a different config."""
        path = self.workdir / "config.json"
        fingerprint = json.loads(json.dumps(config_fingerprint(self.config, self.members)))
        if path.exists() and self.manager.latest_step() is not None:
            saved = json.loads(path.read_text())
            if saved != fingerprint:
                differing = sorted(
                    k
                    for k in set(saved["rl"]) | set(fingerprint["rl"])
                    if saved["rl"].get(k) != fingerprint["rl"].get(k)
                )
                raise ValueError(
                    f"{self.workdir} holds a checkpoint from a different config (differs in: "
                    f"{', '.join(differing) or 'members'}); use another workdir or the same config"
                )
        path.write_text(json.dumps(fingerprint, indent=1))

    def encode_groups(self, encoded) -> list[EncodedPrompts]:
        """One EncodedPrompts per family (`encoded`: given, or None to encode here)."""
        if encoded is None and len(self.groups) == 1:
            encoded = self.ensemble.encode(
                self.task, self.examples, self.shots, self.config.max_new_tokens
            )
        elif encoded is None:
            splits = [(self.task, [self.examples[i] for i in g], self.shots) for g in self.groups]
            encoded = self.ensemble.encode_splits(splits, self.config.max_new_tokens)
        encoded = [encoded] if isinstance(encoded, EncodedPrompts) else list(encoded)
        if len(encoded) != len(self.groups):
            raise ValueError(f"{len(encoded)} encoded splits for {len(self.groups)} families")
        questions = self.config.batch_size // self.config.samples_per_question
        if questions % len(self.groups):
            raise ValueError(
                f"{questions} questions per batch do not split evenly over "
                f"{len(self.groups)} families; make batch_size / samples_per_question a multiple"
            )
        if len(self.groups) > 1 and self.mesh is not None:
            raise ValueError("a mixture's per-family rollouts do not run on a mesh yet")
        return [e.check_count(len(g)) for e, g in zip(encoded, self.groups)]

    def group_indices(self, update: int) -> list[np.ndarray]:
        """Per family, the indices (into the family's own examples) of its questions of update
        `update`: the same number from every family, each family's epochs its own."""
        questions = self.config.batch_size // self.config.samples_per_question // len(self.groups)
        return [
            batch_order(len(group), questions, update, self.config.seed + 7919 * family)
            for family, group in enumerate(self.groups)
        ]

    def question_indices(self, update: int) -> np.ndarray:
        """`[B / samples_per_question]` example index of each question of update `update`,
        family-major."""
        local = self.group_indices(update)
        return np.concatenate([group[i] for group, i in zip(self.groups, local)])

    def batch_families(self, update: int) -> jax.Array:
        """`[B]` int32 family of each decoded row of update `update` (K rows per question,
        question-major, as `batch` repeats them)."""
        families = self.example_families[self.question_indices(update)]
        families = jnp.asarray(np.repeat(families, self.config.samples_per_question), jnp.int32)
        return families if self.mesh is None else sharding.shard_batch(families, self.mesh)

    def batch(self, update: int):
        """Prompts (each member's tokenisation; with several families, one group per family,
        `stack_groups`) and reward data of update `update`."""
        batches = [
            self.ensemble.batch(encoded, indices)  # one row per question
            for encoded, indices in zip(self.encoded, self.group_indices(update))
        ]
        batch = batches[0] if len(batches) == 1 else stack_groups(batches)
        indices = np.repeat(self.question_indices(update), self.config.samples_per_question)
        examples = [self.examples[i] for i in indices]  # decoded rows, K each
        data = (
            jnp.asarray(target_bytes(examples, 4 * self.config.max_new_tokens))
            if isinstance(self.reward_fn, InGraphReward)
            else jnp.asarray(indices, jnp.int32)
        )
        if self.mesh is not None:
            batch, data = (
                sharding.shard_prompts(batch, self.mesh),
                sharding.shard_batch(data, self.mesh),
            )
        return batch, data

    def restore_or_init(self) -> ppo.TrainState:
        state = restore_or_init(self.manager, self.config, self.members)
        return state if self.mesh is None else sharding.shard_train_state(state, self.mesh)

    def save(self, state: ppo.TrainState) -> None:
        self.manager.save(
            int(state.update_count), args=ocp.args.StandardSave(checkpoint_items(state))
        )

    def train(self, num_updates: int | None = None, progress: bool = True) -> ppo.TrainState:
        """Run until `num_updates` (default: the config's) updates are done → the final state."""
        target = self.config.num_updates if num_updates is None else num_updates
        self.acquire()
        state = self.restore_or_init()
        start = int(state.update_count)
        writer = MetricsWriter(self.workdir, start) if jax.process_index() == 0 else None
        bar = tqdm(range(start, target), desc=f"RLAE {self.config.kind}", disable=not progress)
        try:
            for update in bar:
                prompts, reward_data = self.batch(update)
                state, metrics = train_step_jit(
                    state,
                    self.ensemble,
                    prompts,
                    self.reward_fn,
                    reward_data,
                    self.setup,
                    families=self.batch_families(update),
                )
                ppo.raise_if_nonfinite(metrics, update + 1)
                metrics = jax.device_get(metrics)
                # programs compiled for this setup in this process: 1 for a whole run
                metrics["train_step_compiles"] = TRACES[self.setup]
                if writer is not None:
                    writer.write(update + 1, metrics)
                bar.set_postfix(reward=f"{float(metrics['reward']):.3f}", refresh=False)
                if (update + 1) % self.checkpoint_every == 0 or update + 1 == target:
                    self.save(state)
        finally:  # a run stopped by an exception still finishes the checkpoints it started
            self.manager.wait_until_finished()
            if writer is not None:
                writer.close()
            if self.lock is not None:
                self.lock.release()
        return state


def checkpoint_items(state: ppo.TrainState) -> dict:
    """A TrainState's saved part: parameters, optimiser state, raw RNG key data, update count and
    the observation stats."""
    return {
        "params": state.params,
        "opt_state": state.opt_state,
        "key": jax.random.key_data(state.key),
        "update_count": state.update_count,
        "obs_stats": state.obs_stats,
    }


def restore_or_init(
    manager: ocp.CheckpointManager, config: RLConfig, members: Sequence[Member]
) -> ppo.TrainState:
    """The latest checkpoint's TrainState, or a fresh one when there is none."""
    state = initial_train_state(config, members)
    step = manager.latest_step()
    if step is None:
        return state
    restored = manager.restore(step, args=ocp.args.StandardRestore(checkpoint_items(state)))
    # through the host: orbax hands back arrays committed to a device, and a jitted step taking them
    # would compile again (its cache tells committed from uncommitted inputs)
    restored = jax.tree.map(jnp.asarray, jax.device_get(restored))
    return state.replace(
        params=restored["params"],
        opt_state=restored["opt_state"],
        key=jax.random.wrap_key_data(restored["key"]),
        update_count=restored["update_count"],
        obs_stats=restored["obs_stats"],
    )


def check_transfer(workdir: pathlib.Path, config: RLConfig, members: Sequence[Member]) -> None:
    """Raise a one-line ValueError when the agent saved in `workdir` (its config.json) cannot
    observe `members`: another member count, or hidden states of other widths under a feature_set
    that reads them."""
    saved = [m["hidden_size"] for m in json.loads((workdir / "config.json").read_text())["members"]]
    given = [m.config.hidden_size for m in members]
    if len(saved) != len(given):
        raise ValueError(
            f"{workdir} holds an agent for {len(saved)} members, but {len(given)} are given"
        )
    if saved != given and any(name in WIDE for name in check_feature_set(config.feature_set)):
        raise ValueError(
            f"{workdir}: feature_set {config.feature_set!r} observes hidden states of "
            f"sizes {saved}, these members have {given}; train with "
            "feature_set='portable' to evaluate on other members"
        )


def load_agent_state(
    workdir: str | pathlib.Path, config: RLConfig, members: Sequence[Member]
) -> ppo.TrainState:
    """The latest checkpointed TrainState of a finished run (for evaluation), for any
    `max_new_tokens` and task, and for other members of the same count when the feature set allows
    (`check_transfer`)."""
    workdir = pathlib.Path(workdir).absolute()
    manager = ocp.CheckpointManager(workdir / "checkpoints")
    if manager.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
    if (workdir / "config.json").exists():
        check_transfer(workdir, config, members)
    return restore_or_init(manager, config, members)
