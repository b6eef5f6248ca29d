"""`tunix-ingest enqueue` against hostile lines (PRODUCT.md §8.12): each is named by its line number in one line
of stderr, the good lines are enqueued, the exit code is 1, and there is never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from tests.e2e.commands import cli
from worker.localstack.sample_traces import generate_traces


def with_raw_meta(trace: dict[str, Any], meta_json: str) -> bytes:
    return (
        orjson.dumps({key: value for key, value in trace.items() if key != "meta"})[:-1]
        + b',"meta":'
        + (meta_json.encode() + b"}")
    )


def test_enqueue_names_each_hostile_line_and_exits_1_without_a_traceback(tmp_path: Path) -> None:
    good = list(generate_traces(3))
    lines = [
        json.dumps(good[0]).encode(),
        with_raw_meta(good[1], '{"tokens": ' + "9" * 5000 + "}"),
        with_raw_meta(good[1], '{"k":' * 1000 + '"\\u0000"' + "}" * 1000),
        with_raw_meta(good[1], '{"big": 1e300}'),
        with_raw_meta(good[1], '{"k":' * 300 + '"a\\u0000"' + "}" * 300),
        json.dumps(good[2]).encode(),
    ]
    corpus = tmp_path / "hostile.jsonl"
    corpus.write_bytes(b"\n".join(lines) + b"\n")

    # The good lines go to a queue no worker reads: nothing is left for the next test's worker to store.
    done = cli("enqueue", str(corpus), "--source", "hostile", env={"INGEST_QUEUE": "hostile-cli-unread"})

    reported = {text.split(":", 1)[0]: text for text in done.stderr.splitlines() if text.startswith("line ")}
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "integer of 5000 digits" in reported["line 2"]
    assert "meta: nesting is deeper than 32 levels" in reported["line 3"]
    assert "float of magnitude 1e16 or more" in reported["line 4"]
    assert "meta: nesting is deeper than 32 levels" in reported["line 5"]
    assert "4 of 6 lines were invalid" in done.stderr
