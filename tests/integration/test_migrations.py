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
    assert "0004 (head)" in alembic(fresh, "current").stdout
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
