"""Sharding: the rules table, a 1-device mesh, and — in a subprocess with 8 simulated CPU devices —
sharded generation, PPO/MAPPO updates and the whole trainer equal to one device, and bad meshes
refused before compiling. The 8-device checks are in the slow job (their subprocess compiles for
~3.5 min on 2 cores).

Run `python tests/test_sharding.py` to see the 8-device checks' raw results (JSON on the last line).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlae_jax.ensemble import Ensemble
from rlae_jax.runtime import sharding
from rlae_jax.engine import decode_jit, resolve_strategy, tokenize_for_members
from rlae_jax.engine.loop import DecodeConfig
from rlae_jax.models import Member, ModelConfig, build_model
from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_bpe

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_models import CORPUS, uncached_ensemble  # noqa: E402

PROMPTS = [
    "Once upon a time there was",
    "Hello world!",
    "The quick brown fox",
    "Alice and Bob",
    "12 + 30 =",
    "a tiny corpus",
    "the meeting at",
    "robot who liked",
]
NEW_TOKENS = 10


def tiny_member(
    model_type: str,
    tokenizer,
    seed: int,
    name: str,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int | None = None,
) -> Member:
    """A 2-layer random member (vocabulary padded to a multiple of 8 rows unless `vocab_size` is
    given) with scaled-up embedding and LM head so that greedy decoding has no near-ties."""
    gpt2 = model_type == "gpt2"
    config = ModelConfig(
        model_type=model_type,
        vocab_size=vocab_size or -(-len(tokenizer) // 8) * 8,
        hidden_size=48,
        intermediate_size=96,
        num_layers=2,
        num_heads=num_heads,
        num_kv_heads=num_heads if gpt2 else num_kv_heads,
        head_dim=48 // num_heads,
        max_position_embeddings=256,
        norm_eps=1e-5,
        hidden_act="gelu_new" if gpt2 else "silu",
        tie_word_embeddings=gpt2,
        qkv_bias=True,
        out_bias=gpt2,
        mlp_bias=gpt2,
        layer_windows=(None, None),
        eos_token_ids=(tokenizer.eos_token_id,),
    )
    member = Member.from_model(build_model(config, seed=seed), tokenizer, name=name)

    def peaked(path, x):
        return (
            x * 30.0
            if re.search(r"lm_head|\['embedding'\]\['embedding'\]", jax.tree_util.keystr(path))
            else x
        )

    return member.replace(state=jax.tree_util.tree_map_with_path(peaked, member.state))


def tiny_members() -> list[Member]:
    """GPT-2 (tied, byte-level BPE) and Llama (GQA 4/2, `▁` BPE with byte fallback)."""
    return [
        tiny_member("gpt2", train_byte_level_bpe(CORPUS, 300), 0, "bpe"),
        tiny_member("llama", train_metaspace_bpe(CORPUS, 120), 1, "metaspace"),
    ]


def sharded_ensemble(ensemble: Ensemble, mesh) -> Ensemble:
    """The ensemble's members placed by the rules table and its alignment replicated."""
    sharded = sharding.shard_ensemble(ensemble, mesh)
    return Ensemble(sharded.members, sharding.replicate(ensemble.alignment, mesh))


def decode_result(ensemble, prompts, key, temperature, config, weights=None):
    """The engine's DecodeResult with uniform weights, or fixed `weights`."""
    weight_fn = resolve_strategy("uniform" if weights is None else "fixed", len(ensemble), weights)
    return decode_jit(
        ensemble,
        prompts,
        weight_fn,
        key,
        jnp.float32(temperature),
        jnp.float32(1.0),
        config=config,
    )


def decode_tokens(ensemble, prompts, key, temperature, config):
    return np.asarray(decode_result(ensemble, prompts, key, temperature, config).union_ids)


# ---- in this process (1 device) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def members():
    return tiny_members()


def test_rules_table_shards_every_matrix_of_both_families(members):
    mesh = sharding.make_mesh(1, 1)
    expected = {
        "embedding/embedding": ("model", None),
        "lm_head/kernel": (None, "model"),
        "q_proj/kernel": (None, "model"),
        "k_proj/kernel": (None, "model"),
        "v_proj/kernel": (None, "model"),
        "k_proj/bias": ("model",),
        "o_proj/kernel": ("model", None),
        "gate_proj/kernel": (None, "model"),
        "up_proj/kernel": (None, "model"),
        "down_proj/kernel": ("model", None),
        "c_attn/kernel": (None, "model"),
        "c_attn/bias": ("model",),
        "c_proj/kernel": ("model", None),
        "c_fc/kernel": (None, "model"),
        "mlp_proj/kernel": ("model", None),
        "q_proj/bias": ("model",),
        "v_proj/bias": ("model",),
        "c_fc/bias": ("model",),
    }
    seen = set()
    for member in members:
        specs = sharding.member_shardings(member, mesh)
        for path, spec in jax.tree_util.tree_flatten_with_path(specs)[0]:
            name = "/".join(sharding._names(path)[-2:])
            if name in expected:
                assert tuple(spec.spec) == expected[name], name
                seen.add(name)
            elif name != "position_embedding/embedding":
                assert all(axis is None for axis in spec.spec), f"{name} should be replicated"
    assert seen == set(expected)


def test_one_device_mesh_changes_nothing(members):
    ensemble = uncached_ensemble(members)
    config = DecodeConfig(max_new_tokens=NEW_TOKENS, span_length=2, record_features=False)
    prompts = tokenize_for_members(members, PROMPTS[:3], NEW_TOKENS)
    plain = decode_tokens(ensemble, prompts, jax.random.key(0), 0.0, config)
    mesh = sharding.make_mesh(1, 1)
    sharded = decode_tokens(
        sharded_ensemble(ensemble, mesh),
        sharding.shard_batch(prompts, mesh),
        jax.random.key(0),
        0.0,
        config,
    )
    np.testing.assert_array_equal(sharded, plain)


def test_mesh_needs_every_device():
    with pytest.raises(ValueError, match=r"a 2 × 1 mesh needs 2 devices, but 1 are available"):
        sharding.make_mesh(2, 1)


def test_distributed_flag_off_is_a_no_op():
    info = sharding.maybe_initialize_distributed(False)
    assert info["process_count"] == 1 and info["process_index"] == 0


# ---- 8 simulated devices (subprocess) -----------------------------------------------------------


@pytest.fixture(scope="module")
def eight_devices():
    """Results of `run_eight_device_checks` in a fresh process with 8 CPU devices."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    done = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sharded_generation_equals_one_device(eight_devices):
    assert eight_devices["devices"] == 8
    assert eight_devices["sharded_specs"] == ["P('data', None)", "P(None, 'model')"]
    for mode in ("greedy", "sampled"):
        assert eight_devices[f"{mode}_tokens_equal"], eight_devices[f"{mode}_tokens"]
        assert eight_devices[f"{mode}_generated"] > 0
    assert eight_devices["grown_tokens_equal"]
    assert eight_devices["grown_most_ingested"] > 64, (
        "a member should outgrow its first-phase cache"
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ppo", "mappo"])
def test_sharded_update_equals_one_device(eight_devices, kind):
    result = eight_devices[kind]
    assert result["params_changed"] > 1e-4, result  # the update really moved the agent
    assert result["max_param_difference"] < 1e-5, result
    # RLAETrainer(mesh=...), 2 updates: Adam divides by the gradient's running scale, so a
    # parameter whose gradient is near 0 turns the sharded reductions' float32 noise into a visible
    # step on some CPUs (benchmarks/RESULTS.md); a missing all-reduce moves it as far as training
    assert result["trainer_max_param_difference"] < 1e-3 * result["trainer_moved"], result


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        ("batch", r"batch size 6 is not divisible by the mesh's 'data' axis of size 4"),
        ("kv_heads", r"num_kv_heads=2 is not divisible by the mesh's 'model' axis of size 4"),
        ("heads", r"num_heads=3 is not divisible by the mesh's 'model' axis of size 2"),
        ("vocab", r"vocab_size=\d+ is not divisible by the mesh's 'model' axis of size 2"),
        ("devices", r"a 3 × 2 mesh needs 6 devices, but 8 are available"),
    ],
)
def test_bad_mesh_is_refused_before_compiling(eight_devices, case, message):
    error = eight_devices["errors"][case]
    assert re.search(message, error), error
    assert eight_devices["compiled_during_errors"] == 0


def trainer_difference(rl, ensemble, examples, mesh) -> tuple[float, float]:
    """Largest parameter difference after 2 updates of the whole trainer (batches, checkpoints)
    on `mesh` against one device, and the largest move of a parameter in the one-device run."""
    import tempfile

    from rlae_jax.rl.trainer import RLAETrainer, initial_train_state
    from rlae_jax.tasks.synthetic import SYNTHETIC

    params = []
    with tempfile.TemporaryDirectory() as folder:
        for name, trainer_mesh in (("one", None), ("mesh", mesh)):
            trainer = RLAETrainer(
                rl,
                ensemble,
                SYNTHETIC,
                examples,
                pathlib.Path(folder) / name,
                checkpoint_every=1,
                mesh=trainer_mesh,
            )
            params.append(trainer.train(num_updates=2, progress=False).params)
    initial = initial_train_state(rl, ensemble.members).params

    def largest(a, b) -> float:
        return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))

    return largest(*params), largest(params[0], initial)


def run_eight_device_checks() -> dict:
    """Sharded (4 data × 2 model) vs unsharded decode, train steps, bad meshes → JSON-able dict."""
    from rlae_jax.rl.rollout import InGraphReward, train_step_jit
    from rlae_jax.rl.trainer import RLConfig, initial_train_state
    from rlae_jax.tasks.synthetic import SYNTHETIC, target_bytes

    import time

    began = time.perf_counter()
    out = {"devices": jax.device_count()}
    members = tiny_members()
    ensemble = uncached_ensemble(members)
    mesh = sharding.make_mesh(data=4, model=2)
    sharded = sharded_ensemble(ensemble, mesh)
    out["sharded_specs"] = [
        str(p.sharding.spec)
        for p in (
            sharding.shard_batch(tokenize_for_members(members, PROMPTS, 4), mesh).input_ids[0],
            sharded.members[1].state["layers"][0]["k_proj"]["kernel"][...],
        )
    ]

    config = DecodeConfig(max_new_tokens=NEW_TOKENS, span_length=2, record_features=False)
    prompts = tokenize_for_members(members, PROMPTS, NEW_TOKENS)
    for mode, temperature in (("greedy", 0.0), ("sampled", 1.0)):
        plain = decode_tokens(ensemble, prompts, jax.random.key(3), temperature, config)
        on_mesh = decode_tokens(
            sharded, sharding.shard_batch(prompts, mesh), jax.random.key(3), temperature, config
        )
        out[f"{mode}_tokens_equal"] = bool(np.array_equal(plain, on_mesh))
        out[f"{mode}_tokens"] = [plain.tolist(), on_mesh.tolist()]
        out[f"{mode}_generated"] = int((plain >= 0).sum())
    # 64 new tokens: the caches start at one slot per union token and grow mid-loop (two phases);
    # the byte-level member spells some of the metaspace member's pieces in several tokens
    grown_config = DecodeConfig(
        max_new_tokens=64, span_length=2, record_features=False, stop_at_eos=False
    )
    grown_prompts = tokenize_for_members(members, PROMPTS, 64)
    grown = [
        # mostly metaspace
        decode_result(e, p, jax.random.key(3), 0.0, grown_config, weights=[0.2, 0.8])
        for e, p in (
            (ensemble, grown_prompts),
            (sharded, sharding.shard_batch(grown_prompts, mesh)),
        )
    ]
    out["grown_tokens_equal"] = bool(np.array_equal(*(np.asarray(r.union_ids) for r in grown)))
    out["grown_most_ingested"] = int(np.asarray(grown[0].ingested).max())
    print(f"decode checks done at {time.perf_counter() - began:.1f} s", file=sys.stderr)

    examples = SYNTHETIC.load("train", limit=8)
    rl_prompts = tokenize_for_members(
        members, [SYNTHETIC.render(e, members[0].tokenizer) for e in examples], 6
    )
    targets = jnp.asarray(target_bytes(examples, 24))
    # untrained members: partial credit
    reward_fn = InGraphReward.for_alignment(ensemble.alignment, exact=False)
    for kind in ("ppo", "mappo"):
        rl = RLConfig(
            kind=kind,
            batch_size=8,
            samples_per_question=1,  # one decoded row per prompt row
            advantage="gae",
            max_new_tokens=6,
            span_length=2,
            hidden_sizes=(32,),
            num_epochs=2,
            num_minibatches=2,
            learning_rate=1e-2,
            seed=1,
            reward="char_accuracy",
        )
        setup, state = rl.setup(members), initial_train_state(rl, members)
        plain, _ = train_step_jit(state, ensemble, rl_prompts, reward_fn, targets, setup)
        on_mesh, _ = train_step_jit(
            sharding.shard_train_state(state, mesh),
            sharded,
            sharding.shard_prompts(rl_prompts, mesh),
            sharding.replicate(reward_fn, mesh),
            sharding.shard_batch(targets, mesh),
            setup,
        )
        difference = jax.tree.map(
            lambda a, b: float(jnp.max(jnp.abs(a - b))), plain.params, on_mesh.params
        )
        changed = jax.tree.map(
            lambda a, b: float(jnp.max(jnp.abs(a - b))), plain.params, state.params
        )
        out[kind] = {
            "max_param_difference": max(jax.tree.leaves(difference)),
            "params_changed": max(jax.tree.leaves(changed)),
        }
        difference, moved = trainer_difference(rl, ensemble, examples, mesh)
        out[kind].update(trainer_max_param_difference=difference, trainer_moved=moved)
        print(f"{kind} checks done at {time.perf_counter() - began:.1f} s", file=sys.stderr)

    compiled = decode_jit._cache_size() + train_step_jit._cache_size()
    bad_heads = tiny_member(
        "llama", members[1].tokenizer, 2, "three-heads", num_heads=3, num_kv_heads=3
    )
    bad_vocab = tiny_member(
        "gpt2", members[0].tokenizer, 2, "odd-vocab", vocab_size=members[0].config.vocab_size + 1
    )
    cases = {
        "batch": lambda: sharding.shard_batch(tokenize_for_members(members, PROMPTS[:6], 4), mesh),
        "kv_heads": lambda: sharding.shard_member(members[1], sharding.make_mesh(data=2, model=4)),
        "heads": lambda: sharding.shard_member(bad_heads, mesh),
        "vocab": lambda: sharding.shard_member(bad_vocab, mesh),
        "devices": lambda: sharding.make_mesh(data=3, model=2),
    }
    out["errors"] = {}
    for case, call in cases.items():
        try:
            call()
            out["errors"][case] = "no error"
        except ValueError as error:
            out["errors"][case] = str(error)
    out["compiled_during_errors"] = (
        decode_jit._cache_size() + train_step_jit._cache_size() - compiled
    )
    return out


if __name__ == "__main__":
    print(json.dumps(run_eight_device_checks()))
