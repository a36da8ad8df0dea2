"""Device meshes, logical-axis sharding rules, and multi-host start-up.

A mesh has two named axes: `data` (the batch) and `model` (attention heads, MLP intermediate units
and the vocabulary of each member). Parameters are placed by a rules table over their names
(`PARAMETER_RULES`: module/param → logical axis per dimension) and `LOGICAL_AXES` (logical axis →
mesh axis), so every family shares one table. The engine and the RL train step need no changes:
`jax.jit` propagates the shardings of its inputs (KV caches follow: their `[B·H_kv]` rows over
`data` × `model`).

    mesh = make_mesh(data=4, model=2)
    ensemble = shard_ensemble(ensemble, mesh)
    prompts = shard_batch(tokenize_for_members(ensemble.members, texts, 32), mesh)
    result = decode_jit(ensemble, prompts, ...)

Every `shard_*` function validates the mesh against the shapes first and raises a ValueError
naming the offending size before anything is placed or compiled.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from rlae_jax.engine.state import PromptBatch
from rlae_jax.ensemble import Ensemble
from rlae_jax.models.member import Member

DATA, MODEL = "data", "model"

# logical axis → mesh axis (None: replicated)
LOGICAL_AXES: dict[str, str | None] = {
    "batch": DATA,
    "vocab": MODEL,
    "heads": MODEL,
    "kv_heads": MODEL,
    "mlp": MODEL,
    "embed": None,
    "positions": None,
    "head_dim": None,
}

# `module/param` (the last two names of a parameter's path, full match) → logical axis per
# dimension. Kernels are `[in, out]`; fused GPT-2 `c_attn` columns are (q, k, v) × heads × head_dim.
# Anything unmatched (norms, output biases) is replicated.
PARAMETER_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"embedding/embedding", ("vocab", "embed")),
    (r"position_embedding/embedding", ("positions", "embed")),
    (r"lm_head/kernel", ("embed", "vocab")),
    (r"(q_proj|c_attn)/kernel", ("embed", "heads")),
    (r"(q_proj|c_attn)/bias", ("heads",)),
    (r"(k_proj|v_proj)/kernel", ("embed", "kv_heads")),
    (r"(k_proj|v_proj)/bias", ("kv_heads",)),
    (r"(o_proj|c_proj)/kernel", ("heads", "embed")),
    (r"(gate_proj|up_proj|c_fc)/kernel", ("embed", "mlp")),
    (r"(gate_proj|up_proj|c_fc)/bias", ("mlp",)),
    (r"(down_proj|mlp_proj)/kernel", ("mlp", "embed")),
)


def make_mesh(data: int = 1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `data × model` mesh, Auto axis types (jax 0.10's `jax.make_mesh` defaults to Explicit)."""
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or model < 1:
        raise ValueError(f"mesh sizes must be >= 1, got data={data}, model={model}")
    if data * model != len(devices):
        raise ValueError(
            f"a {data} × {model} mesh needs {data * model} devices, but {len(devices)} are "
            "available "
            f"({devices[0].platform}); set data × model = {len(devices)}"
        )
    return jax.make_mesh(
        (data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def logical_to_spec(axes: Sequence[str | None]) -> PartitionSpec:
    """PartitionSpec of a tensor whose dimensions have these logical axes."""
    return PartitionSpec(*(None if axis is None else LOGICAL_AXES[axis] for axis in axes))


def parameter_axes(path: Sequence[str], ndim: int) -> tuple[str | None, ...]:
    """A parameter's logical axes by the last two names of its path (replicated if none match)."""
    name = "/".join(path[-2:])
    for pattern, axes in PARAMETER_RULES:
        if re.fullmatch(pattern, name):
            if len(axes) != ndim:
                raise ValueError(
                    f"sharding rule {pattern!r} gives {len(axes)} axes for the {ndim}-d parameter "
                    f"{'/'.join(path)}"
                )
            return axes
    return (None,) * ndim


def _names(path) -> list[str]:
    """Plain names of a pytree key path (drops nnx's trailing `.value`)."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
    return [n for n in names if n != "value"]


def _axis_size(mesh: Mesh, logical: str) -> int:
    axis = LOGICAL_AXES[logical]
    return 1 if axis is None else mesh.shape[axis]


def check_member(member: Member, mesh: Mesh) -> None:
    """Raise unless the mesh divides the heads, kv heads, intermediate size and vocab it shards."""
    c = member.config
    sizes = {
        "heads": ("num_heads", c.num_heads),
        "kv_heads": ("num_kv_heads", c.num_kv_heads),
        "mlp": ("intermediate_size", c.intermediate_size),
        "vocab": ("vocab_size", c.vocab_size),
    }
    for logical, (field, size) in sizes.items():
        parts = _axis_size(mesh, logical)
        if size % parts:
            fitting = [
                d
                for d in range(1, math.gcd(*(s for _, s in sizes.values())) + 1)
                if all(s % d == 0 for _, s in sizes.values())
            ]
            raise ValueError(
                f"member {member.name or c.model_type!r}: {field}={size} is not divisible by the "
                "mesh's "
                f"'{LOGICAL_AXES[logical]}' axis of size {parts}; "
                f"its {', '.join(f'{f}={s}' for f, s in sizes.values())} "
                f"allow a '{LOGICAL_AXES[logical]}' axis of size {' or '.join(map(str, fitting))}"
            )


def check_batch(batch: int, mesh: Mesh) -> None:
    """Raise when the 'data' axis does not divide the batch size."""
    if batch % mesh.shape[DATA]:
        raise ValueError(
            f"batch size {batch} is not divisible by the mesh's 'data' axis of size "
            f"{mesh.shape[DATA]}; "
            f"pad the batch to a multiple of {mesh.shape[DATA]} or use a smaller 'data' axis"
        )


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
    """device_put that works also when the sharding spans other hosts (each process has all `x`)."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(
            _place(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x)
        )
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def member_shardings(member: Member, mesh: Mesh):
    """NamedSharding of every leaf of `member.state` (same tree structure)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, logical_to_spec(parameter_axes(_names(path), x.ndim))),
        member.state,
    )


def shard_member(member: Member, mesh: Mesh) -> Member:
    """The member, parameters placed on `mesh` by the rules table (heads/MLP/vocab over 'model')."""
    check_member(member, mesh)
    state = jax.tree.map(_place, member.state, member_shardings(member, mesh))
    return member.replace(state=state)


def shard_ensemble(ensemble: Ensemble, mesh: Mesh) -> Ensemble:
    """The ensemble with every member sharded (`shard_member`); same alignment and formats."""
    members = [shard_member(m, mesh) for m in ensemble.members]
    return Ensemble(members, ensemble.alignment, ensemble.formats)


def shard_prompts(prompts: PromptBatch, mesh: Mesh) -> PromptBatch:
    """A PromptBatch with its rows over 'data' and its shared prefix states replicated."""
    rows = shard_batch((prompts.input_ids, prompts.attention_mask), mesh)
    prefix = None if prompts.prefix is None else replicate(prompts.prefix, mesh)
    return PromptBatch(*rows, prefix)


def batch_sharding(x: jax.Array, mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over 'data', the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA, *(None,) * (x.ndim - 1)))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a pytree whose leaves share a leading batch dimension `[B, ...]` (a PromptBatch, reward
    targets) with the batch over 'data'."""
    leaves = jax.tree.leaves(batch)
    sizes = {x.shape[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"every leaf of a batch needs the same leading size, got {sorted(sizes)}")
    check_batch(sizes.pop(), mesh)
    return jax.tree.map(lambda x: _place(x, batch_sharding(x, mesh)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of `tree` replicated on every device of `mesh`."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: _place(x, replicated) if isinstance(x, jax.Array) else x, tree)


def shard_train_state(train_state: Any, mesh: Mesh) -> Any:
    """A `ppo.TrainState` (agent params, optimiser state, key, update count) replicated on `mesh`:
    the agent is small; its transitions follow the members' batch sharding inside the step."""
    return replicate(train_state, mesh)


def maybe_initialize_distributed(enabled: bool, **kwargs) -> dict[str, int]:
    """Join a multi-host job (`jax.distributed.initialize`, which reads the coordinator, process
    count and id from the TPU pod or Slurm environment; `kwargs` override them) when `enabled`.
    Call before any other JAX call. Returns this process's index, the process count and device
    counts."""
    if enabled and not jax.distributed.is_initialized():
        jax.distributed.initialize(**kwargs)
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
    }
