"""A small generated English-like corpus: documents of sentences from a toy grammar.

The grammar has enough structure (agreement, recurring entities, numbers, topics) for a tiny LM
to learn something in seconds, so its activations and loss gradients are not just noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

TOPICS = {
    "garden": (
        ["gardener", "rabbit", "bee", "farmer"],
        ["flowers", "carrots", "seeds", "weeds"],
        ["plants", "waters", "picks", "counts"],
    ),
    "harbour": (
        ["sailor", "captain", "gull", "fisher"],
        ["boats", "nets", "ropes", "fish"],
        ["mends", "ties", "loads", "counts"],
    ),
    "library": (
        ["reader", "clerk", "student", "poet"],
        ["books", "maps", "letters", "poems"],
        ["reads", "sorts", "writes", "counts"],
    ),
    "kitchen": (
        ["cook", "baker", "child", "cat"],
        ["bread", "soup", "apples", "cakes"],
        ["bakes", "cuts", "eats", "counts"],
    ),
}
ADJECTIVES = ["small", "old", "green", "quiet", "bright", "heavy", "tired", "happy"]
CONNECTIVES = ["then", "later", "after that", "meanwhile", "so"]


def _sentence(rng: np.random.Generator, topic: str) -> str:
    subjects, objects, verbs = TOPICS[topic]
    subject = subjects[rng.integers(len(subjects))]
    verb = verbs[rng.integers(len(verbs))]
    obj = objects[rng.integers(len(objects))]
    adjective = ADJECTIVES[rng.integers(len(ADJECTIVES))]
    if verb == "counts":
        return f"the {subject} counts {rng.integers(2, 20)} {obj}."
    if rng.random() < 0.3:
        connective = CONNECTIVES[rng.integers(len(CONNECTIVES))]
        return f"{connective} the {adjective} {subject} {verb} the {obj}."
    return f"the {adjective} {subject} {verb} the {obj} in the {topic}."


def generate_documents(n_documents: int, seed: int = 0) -> Iterator[str]:
    """Documents of 3-12 sentences, each about one topic."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    for _ in range(n_documents):
        topic = topics[rng.integers(len(topics))]
        yield " ".join(_sentence(rng, topic) for _ in range(rng.integers(3, 13)))


def write_corpus(path: Path, n_documents: int, seed: int = 0) -> Path:
    """Write documents to a .txt file, separated by blank lines (saekit's .txt convention)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(generate_documents(n_documents, seed)) + "\n")
    return path
