"""Offline demo material: a generated corpus and a tiny GPT-2 built and trained locally."""

from saekit.demo.corpus import generate_documents, write_corpus
from saekit.demo.tiny_lm import build_tiny_lm

__all__ = ["build_tiny_lm", "generate_documents", "write_corpus"]
