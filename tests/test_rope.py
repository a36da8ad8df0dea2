"""RoPE inverse frequencies against transformers' initialisers, all three llama3 bands included."""

import math

import numpy as np
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from rlae_jax.models.config import config_from_hf
from rlae_jax.models.layers import rope_inverse_frequencies

# original context 64 with low/high frequency factors 1 and 4: wavelengths under 16 positions keep
# their frequency, over 64 are divided by `factor`, and those in between (medium) are interpolated
LLAMA3 = dict(
    rope_type="llama3",
    rope_theta=10000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)


def hf_llama(rope_parameters) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=32,
        hidden_size=256,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rope_parameters=rope_parameters,
    )


def test_llama3_rope_equals_transformers_in_every_band():
    hf_config = hf_llama(LLAMA3)
    ours = rope_inverse_frequencies(config_from_hf(hf_config), 0)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
    wavelengths = 2 * math.pi * 10000.0 ** (np.arange(0, 64, 2) / 64)
    old_context, low, high = 64, 1.0, 4.0
    medium = (wavelengths >= old_context / high) & (wavelengths <= old_context / low)
    short, long = wavelengths < old_context / high, wavelengths > old_context / low
    assert min(medium.sum(), short.sum(), long.sum()) >= 3, "the config should use all three bands"
    plain = 1.0 / wavelengths * 2 * math.pi
    np.testing.assert_allclose(ours[short], plain[short], rtol=1e-6)
    np.testing.assert_allclose(ours[long], plain[long] / 8.0, rtol=1e-6)
    inside = ours[medium] / plain[medium]  # interpolated: strictly between 1/factor and 1
    assert np.all((inside > 1 / 8.0) & (inside < 1.0))


def test_linear_rope_equals_transformers():
    hf_config = hf_llama(dict(rope_type="linear", rope_theta=10000.0, factor=4.0))
    theirs, _ = ROPE_INIT_FUNCTIONS["linear"](hf_config)
    ours = rope_inverse_frequencies(config_from_hf(hf_config), 0)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
