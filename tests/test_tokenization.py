"""The trainers give the same tokenizer for the same texts (benchmarks and tests rebuild them)."""

from tiny_models import CORPUS

from rlae_jax.toy.tokenizer_trainer import (
    train_byte_level_bpe,
    train_metaspace_bpe,
    train_metaspace_unigram,
)


def test_trained_tokenizers_are_reproducible():
    for train in (train_byte_level_bpe, train_metaspace_bpe, train_metaspace_unigram):
        first, second = (train(CORPUS, 200).backend_tokenizer.to_str() for _ in range(2))
        assert first == second, train.__name__
