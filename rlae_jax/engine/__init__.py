"""The ensemble decode engine: one compiled, batched loop over heterogeneous members.

Modules: `api` (generate, prompt batching, to_host), `state` (DecodeConfig, PromptBatch, the loop
carry, DecodeResult, stop reasons), `mixing` (weights and union-token choice), `feed` (re-spelled
tokens into each member's cache), `room` (cache sizes and their growth), `loop` (prefill, step,
run, decode), `strategies`, `features`."""

from rlae_jax.engine.api import (
    EnsembleOutput,
    batch_of_token_lists,
    generate,
    to_host,
    tokenize_for_members,
)
from rlae_jax.engine.features import SpanFeatures
from rlae_jax.engine.loop import decode, decode_growing, decode_jit
from rlae_jax.engine.state import STOP_REASONS, DecodeConfig, DecodeResult, PromptBatch
from rlae_jax.engine.strategies import (
    STRATEGY_NAMES,
    CallableWeightFn,
    FixedWeights,
    PackLLMWeights,
    Selection,
    StatelessWeightFn,
    ThresholdGating,
    resolve_strategy,
)

__all__ = [
    "STOP_REASONS",
    "STRATEGY_NAMES",
    "CallableWeightFn",
    "DecodeConfig",
    "DecodeResult",
    "EnsembleOutput",
    "FixedWeights",
    "PackLLMWeights",
    "PromptBatch",
    "Selection",
    "SpanFeatures",
    "StatelessWeightFn",
    "ThresholdGating",
    "batch_of_token_lists",
    "decode",
    "decode_growing",
    "decode_jit",
    "generate",
    "resolve_strategy",
    "to_host",
    "tokenize_for_members",
]
