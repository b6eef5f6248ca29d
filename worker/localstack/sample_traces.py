"""A deterministic generator of realistic reasoning traces, for `tunix-ingest run`, the bench and tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

_TOPICS = ("arithmetic", "unit conversion", "string manipulation", "logic puzzle", "geometry", "probability")


def _arithmetic(rng: random.Random, index: int, padding: int) -> dict[str, Any]:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    filler = " ".join(rng.choice(_TOPICS) for _ in range(padding))
    steps = [
        {"i": 0, "type": "setup", "content": f"We need the product of {a} and {b}. Context: {filler}"},
        {"i": 1, "type": "calculation", "content": f"{a} * {b} = {a * b}"},
        {"i": 2, "type": "check", "content": f"Dividing back: {a * b} / {b} = {a}, so the product is right."},
        {"i": 3, "type": "answer", "content": f"The product is {a * b}."},
    ]
    return {
        "trace_version": "1.0",
        "prompt": f"What is {a} multiplied by {b}? Show your reasoning step by step.",
        "final_answer": str(a * b),
        "steps": steps,
        "meta": {
            "generator": "tunix-ingest",
            "index": index,
            "topic": "arithmetic",
            "difficulty": rng.random(),
        },
    }


def generate_traces(count: int, *, seed: int = 42, padding: int = 8) -> Iterator[dict[str, Any]]:
    """`count` valid traces, the same for the same seed; `padding` words make each trace larger."""
    rng = random.Random(seed)
    for index in range(count):
        yield _arithmetic(rng, index, padding)
