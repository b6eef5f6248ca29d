"""The JSON Lines form of a stored trace: exactly the line `tunix-ingest follow` writes, rendered by PostgreSQL
with follow's own expression (one definition of the line, in `worker.client.consumer_statements`)."""

from __future__ import annotations

from worker.client.consumer_statements import LOAD_LINES


def _follow_line_expression(statement: str) -> str:
    """The SELECT list of follow's line statement (`SELECT <line> FROM trace WHERE …`): the line of one row,
    written over the trace's own columns."""
    head, found, _ = statement.strip().partition("\nFROM trace ")
    if not found or not head.startswith("SELECT "):
        raise RuntimeError("consumer_statements.LOAD_LINES changed shape: update worker/export/jsonl_rows.py")
    return head.removeprefix("SELECT ")


LINE = _follow_line_expression(LOAD_LINES)

#: One column: the line (bytes, newline included).
COLUMNS = LINE
