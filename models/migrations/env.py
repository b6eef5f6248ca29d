"""Alembic environment: async engine from the `sqlalchemy.url` the caller sets, else DATABASE_URL."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from models.tables import Base

target_metadata = Base.metadata


def _url() -> str:
    config = context.config
    # `alembic` on the command line reads pyproject.toml and has no ini file; `tunix-ingest migrate` passes the URL.
    has_ini = config.config_file_name is None or os.path.exists(config.config_file_name)
    url = (config.get_main_option("sqlalchemy.url") if has_ini else None) or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("set DATABASE_URL (postgresql+asyncpg://...) before migrating")
    return url


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
