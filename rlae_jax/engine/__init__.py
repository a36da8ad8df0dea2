"""The ensemble decode engine: one compiled, batched loop over heterogeneous members."""

from rlae_jax.engine.loop import (
    DecodeConfig,
    DecodeResult,
    EnsembleOutput,
    PromptBatch,
    decode,
    decode_growing,
    decode_jit,
    generate,
    tokenize_for_members,
)
from rlae_jax.engine.features import SpanFeatures
from rlae_jax.engine.strategies import (
    STRATEGY_NAMES,
    CallableWeightFn,
    FixedWeights,
    PackLLMWeights,
    Selection,
    ThresholdGating,
    resolve_strategy,
)

__all__ = [
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
    "ThresholdGating",
    "decode",
    "decode_growing",
    "decode_jit",
    "generate",
    "resolve_strategy",
    "tokenize_for_members",
]
