"""The consumer's two forms against real PostgreSQL and Redis: the JSON lines PostgreSQL renders for `follow`
say exactly what the Python form says, for every kind of text a trace can hold."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import ingest_batch
from tests.conftest import SAMPLE_DATA
from tests.integration.test_ingest_service import make_batch
from tests.streams import STREAM
from worker.client.consumer import IngestedBatch, IngestedLines, follow_ingested_async, follow_ingested_lines_async
from worker.edge.publisher import RedisStreamPublisher
from worker.localstack.sample_traces import generate_traces

AWKWARD = [
    'quotes " and \\ backslashes \\" and a closing brace }',
    "line\nbreaks\r\n\ttabs, \b\f and control characters \x01\x1f\x7f",
    "non-ASCII é ß 中文 🎉, line and paragraph separators \u2028\u2029",
    "long enough to be compressed: " + "reasoning goes on and on " * 400,
]


def awkward_traces() -> list[dict[str, Any]]:
    traces: list[dict[str, Any]] = []
    for index, text in enumerate(AWKWARD):
        traces.append(
            {
                "trace_version": f"v{index}",
                "prompt": text,
                "final_answer": text[::-1],
                "steps": [{"i": 0, "type": "think", "content": text}, {"i": 3, "type": "t", "content": "x"}],
                "meta": {"text": text, "n": [1, -2.5, 1.5e15, -2.5e-300, 9007199254740993], "ok": True, "none": None},
            }
        )
    traces.append({**traces[0], "meta": None})
    traces.append({key: value for key, value in traces[1].items() if key != "meta"})
    return traces


async def both_forms(group: str) -> tuple[list[IngestedBatch], list[IngestedLines]]:
    as_python = [batch async for batch in follow_ingested_async(f"{group}-py", "c", from_start=True, idle_exit_s=0.5)]
    as_lines = [
        batch async for batch in follow_ingested_lines_async(f"{group}-jl", "c", from_start=True, idle_exit_s=0.5)
    ]
    return as_python, as_lines


async def test_lines_rendered_by_postgresql_say_what_the_python_form_says(
    sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    with (SAMPLE_DATA / "dev-reasoning-v2.jsonl").open(encoding="utf-8") as sample:
        real = [json.loads(text) for text in sample][:200]
    redis = Redis.from_url(redis_url)
    publisher = RedisStreamPublisher(redis, STREAM, 10_000)
    for traces in (awkward_traces(), real, list(generate_traces(300, padding=200))):
        async with sessions() as session:
            await ingest_batch(session, make_batch(traces), publisher=publisher)
    await redis.aclose()

    as_python, as_lines = await both_forms("forms")

    assert [len(batch.traces) for batch in as_python] == [len(batch.lines) for batch in as_lines] == [6, 200, 300]
    for python, lines in zip(as_python, as_lines, strict=True):
        assert (lines.batch_id, lines.source, lines.created_at) == (python.batch_id, python.source, python.created_at)
        for trace, line in zip(python.traces, lines.lines, strict=True):
            assert line.endswith(b"}\n") and line.count(b"\n") == 1  # one line per trace, whatever its text
            parsed = orjson.loads(line)  # the parser of the Python form: the texts are compared, not parsers
            created_at = datetime.fromisoformat(parsed.pop("created_at"))
            assert created_at == trace.pop("created_at") and created_at.utcoffset() == timedelta(0)
            assert list(parsed) == ["batch_id", *trace]  # the Python form's keys, in its order, after batch_id
            assert parsed == {"batch_id": str(python.batch_id), **trace}
    awkward = as_python[0].traces
    assert [trace["prompt"] for trace in awkward[:4]] == AWKWARD  # stored and read back as accepted
    assert awkward[4]["meta"] is None and awkward[5]["meta"] is None
