"""The asyncpg connection under a session: for the few statements a batch runs every time, where SQLAlchemy's
execution path cost more of the worker's CPU than the statement (read-back and marking published: 0.9 → 0.4 ms of
a batch's CPU, measured), and for COPY. Still the session's one connection, used by one coroutine at a time."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession


async def driver_connection(session: AsyncSession) -> Any:
    """The asyncpg `Connection` the session holds (checked out now if it held none).

    A statement run on it joins the database transaction only once one is open on the connection: SQLAlchemy's
    asyncpg adapter sends BEGIN with the session's first SQLAlchemy statement, so before that (or right after a
    commit) a statement here runs on its own, committed as it ends.
    """
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection
