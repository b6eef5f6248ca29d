"""The Alembic migrations, as `alembic` on the command line runs them (configured from pyproject.toml)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg

from tests.db import query

ROOT = Path(__file__).resolve().parents[2]


def alembic(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), *arguments],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _create_database(database_url: str, name: str) -> None:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))  # CREATE DATABASE needs autocommit
    try:
        await connection.execute(f"CREATE DATABASE {name}")
    finally:
        await connection.close()


#: How the trace table's compressible columns are compressed ('l' lz4, '' the server's default).
_COMPRESSION = (
    "SELECT attname, attcompression::text FROM pg_attribute WHERE attrelid = 'trace'::regclass "
    "AND attname IN ('prompt', 'final_answer', 'steps', 'meta') ORDER BY attname"
)

_LZ4_AVAILABLE = "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"


def test_migrations_match_the_models_and_go_down_and_up_again(database_url: str) -> None:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(database_url, name))
    fresh = database_url.rsplit("/", 1)[0] + f"/{name}"

    assert alembic(fresh, "upgrade", "head").returncode == 0
    assert "0005 (head)" in alembic(fresh, "current").stdout
    lz4 = "l" if query(fresh, _LZ4_AVAILABLE)[0][0] else ""  # a server without lz4 keeps its default
    assert query(fresh, _COMPRESSION) == [("final_answer", lz4), ("meta", lz4), ("prompt", lz4), ("steps", lz4)]
    assert alembic(fresh, "downgrade", "0001").returncode == 0
    assert query(fresh, _COMPRESSION) == [("final_answer", ""), ("meta", ""), ("prompt", ""), ("steps", "")]
    assert alembic(fresh, "upgrade", "head").returncode == 0
    check = alembic(fresh, "check")
    assert check.returncode == 0 and "No new upgrade operations detected" in check.stdout + check.stderr
    assert alembic(fresh, "downgrade", "base").returncode == 0
    assert query(fresh, "SELECT count(*) FROM pg_tables WHERE tablename IN ('batch', 'trace')")[0][0] == 0
    assert alembic(fresh, "upgrade", "head").returncode == 0


_ADD_BATCH = "INSERT INTO batch (id, source, state, trace_count, content_hash) VALUES (:id, 'test', 'ingested', 2, 'x')"
_ADD_TRACE = (
    "INSERT INTO trace (batch_id, position, trace_version, prompt, final_answer, steps, step_count, total_chars, "
    "content_hash, derivation_version) VALUES (:batch_id, :position, '1', 'p', 'a', '[]', 0, 2, 'x', 2)"
)


def _add_batches(database_url: str, count: int) -> list[uuid.UUID]:
    batch_ids = [uuid.uuid4() for _ in range(count)]
    for batch_id in batch_ids:
        query(database_url, _ADD_BATCH, id=batch_id)
        for position in range(2):
            query(database_url, _ADD_TRACE, batch_id=batch_id, position=position)
    return batch_ids


def _traces_by_batch(database_url: str) -> dict[uuid.UUID, int]:
    return dict(query(database_url, "SELECT batch_id, count(*) FROM trace GROUP BY batch_id"))


def test_deleting_batches_deletes_their_traces_and_no_others(database_url: str) -> None:
    """What the foreign key's ON DELETE CASCADE did, migration 0005's trigger does: an operator's retention
    (`DELETE FROM batch WHERE ...`) leaves no trace of the deleted batches, and every trace of the others."""
    kept, *deleted = _add_batches(database_url, 3)
    query(database_url, "DELETE FROM batch WHERE id = ANY(:ids)", ids=deleted)
    assert _traces_by_batch(database_url) == {kept: 2}
    assert query(database_url, "SELECT id FROM batch") == [(kept,)]


def test_truncating_batches_with_cascade_empties_the_trace_table(database_url: str) -> None:
    _add_batches(database_url, 2)
    query(database_url, "TRUNCATE batch CASCADE")
    assert _traces_by_batch(database_url) == {}


def test_a_role_that_may_delete_batches_deletes_their_traces_without_a_grant_on_trace(database_url: str) -> None:
    """As the foreign key's cascade did, the trigger acts as the tables' owner (SECURITY DEFINER)."""
    kept, deleted = _add_batches(database_url, 2)

    async def delete_as_a_retention_role() -> None:
        connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        await connection.execute(
            "CREATE ROLE test_retention; GRANT SELECT, DELETE ON batch TO test_retention; SET ROLE test_retention"
        )
        try:
            await connection.execute("DELETE FROM batch WHERE id = $1", deleted)
        finally:
            await connection.execute("RESET ROLE; REVOKE ALL ON batch FROM test_retention; DROP ROLE test_retention")
            await connection.close()

    asyncio.run(delete_as_a_retention_role())
    assert _traces_by_batch(database_url) == {kept: 2}
