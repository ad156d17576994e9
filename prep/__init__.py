"""Offline GPT-2 tokenization of a corpus into llm.c-compatible uint16 shards."""

__version__ = "0.1.0"
