"""Fields derived from a trace's content. Bump DERIVATION_VERSION whenever `derive` changes meaning:
the scheduled refresh then recomputes every stored row whose version is older."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import orjson

#: The version of `derive`; stored rows with a lower one are stale.
DERIVATION_VERSION = 1


class DerivedFields(NamedTuple):
    step_count: int
    total_chars: int
    content_hash: str


def derive(trace: dict[str, Any]) -> DerivedFields:
    """Step count, characters of prompt + answer + step contents, and a sha256 of the canonical trace."""
    steps = trace["steps"]
    total_chars = len(trace["prompt"]) + len(trace["final_answer"]) + sum(len(s["content"]) for s in steps)
    canonical = orjson.dumps(
        {key: trace.get(key) for key in ("trace_version", "prompt", "final_answer", "steps", "meta")},
        option=orjson.OPT_SORT_KEYS,
    )
    return DerivedFields(len(steps), total_chars, hashlib.sha256(canonical).hexdigest())
