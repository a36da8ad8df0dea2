"""Toy members the project trains itself (no downloads):
tokenizers, a small LM trainer, the demo pair."""
