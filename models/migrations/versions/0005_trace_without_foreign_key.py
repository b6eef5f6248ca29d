"""trace.batch_id without a foreign key: a batch's deletion takes its traces by trigger instead

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

The foreign key checked every trace row as the COPY wrote it: one lookup and one row lock on `batch` per trace,
5–6 µs of the backend's CPU each in isolation (15–19 % of the COPY), ~3.5 µs a trace of PostgreSQL's CPU in the
bench's drain (docs/performance.md, "Performance III, part 3"). PostgreSQL, the part of the pipeline that does
not scale out, spent it on a fact the write path already holds: the claim inserts the batch row, or locks it to
revive it, in the transaction that then writes the batch's traces, and nothing else in the product writes trace
rows (docs/architecture.md, "COPY inside the session").

What the foreign key did beyond that is kept: deleting batches (an operator's retention, `DELETE FROM batch
WHERE ...`) deletes their traces, and `TRUNCATE batch CASCADE` empties `trace` too, by the triggers below, one
statement per deleting statement instead of one per row. Like the cascade, they act as the tables' owner
(SECURITY DEFINER), so a role that may delete batches needs no grant on `trace`. A trace row an operator inserts
by hand for a batch that does not exist is no longer refused.

Dropping the constraint takes a moment's exclusive lock on both tables; nothing is rewritten or scanned.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DELETE_FUNCTION = """
CREATE FUNCTION batch_delete_traces() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- `TRUNCATE trace, batch` has emptied it already, and may not truncate it twice in one statement
        IF EXISTS (SELECT FROM trace) THEN
            TRUNCATE trace;
        END IF;
    ELSE
        -- Planned at each call (a cached plan would keep the first deletion's size: a scan of `trace` for
        -- the retention of a million batches, then for every single one after it)
        EXECUTE 'DELETE FROM trace WHERE batch_id IN (SELECT id FROM deleted_batches)';
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")  # dropping the constraint locks `trace` and `batch` a moment
    op.execute("ALTER TABLE trace DROP CONSTRAINT fk_trace_batch_id_batch")
    op.execute(DELETE_FUNCTION)
    op.execute(
        "CREATE TRIGGER batch_deletes_its_traces AFTER DELETE ON batch REFERENCING OLD TABLE AS deleted_batches "
        "FOR EACH STATEMENT EXECUTE FUNCTION batch_delete_traces()"
    )
    op.execute(
        "CREATE TRIGGER batch_truncates_its_traces AFTER TRUNCATE ON batch "
        "FOR EACH STATEMENT EXECUTE FUNCTION batch_delete_traces()"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("DROP TRIGGER batch_truncates_its_traces ON batch")
    op.execute("DROP TRIGGER batch_deletes_its_traces ON batch")
    op.execute("DROP FUNCTION batch_delete_traces()")
    # Checks every trace row while it holds the tables' lock (writes wait: on a large table, downgrade in a quiet
    # window). A trace row written by hand for a missing batch while the key was gone fails it, naming the batch.
    op.execute(
        "ALTER TABLE trace ADD CONSTRAINT fk_trace_batch_id_batch FOREIGN KEY (batch_id) REFERENCES batch (id) "
        "ON DELETE CASCADE"
    )
