"""batch.committed_xid: the transaction that made each batch `ingested`, the cursor of incremental exports

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

`tunix-ingest export --resume` exports the batches that became visible since the previous run's snapshot. A
batch's id, its trace ids and its `ingested_at` (the start time of its transaction) say nothing about when it
became visible: concurrent workers commit out of that order. The id of the transaction that made it `ingested`
does, compared with a snapshot by `pg_visible_in_snapshot`. A trigger sets it, so every path that makes a batch
`ingested` (the claim's insert, the revival of a `failed` batch, a worker of an older version during a rolling
deploy, an operator's SQL) stamps it alike. xid8 is the 64-bit transaction id, which never wraps around.

The column is added without a default (no table rewrite); rows stored before it stay NULL: they committed before
this migration and so before any export's snapshot, so a first export takes them and a resumed one never
needs them. The partial index holds only stamped rows; building it scans `batch` (one row per batch, not per
trace) while writes to it wait: a moment even for a large store.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STAMP_FUNCTION = """
CREATE FUNCTION batch_stamp_committed_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'ingested' AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM 'ingested') THEN
        NEW.committed_xid := pg_current_xact_id();  -- the top-level transaction's id, also inside a savepoint
    END IF;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")  # ALTER TABLE needs a moment's exclusive lock on `batch`
    op.execute("ALTER TABLE batch ADD COLUMN committed_xid xid8")
    op.execute(STAMP_FUNCTION)
    op.execute(
        "CREATE TRIGGER batch_committed_xid BEFORE INSERT OR UPDATE OF state ON batch "
        "FOR EACH ROW EXECUTE FUNCTION batch_stamp_committed_xid()"
    )
    op.execute("CREATE INDEX ix_batch_committed_xid ON batch (committed_xid) WHERE committed_xid IS NOT NULL")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("DROP INDEX ix_batch_committed_xid")
    op.execute("DROP TRIGGER batch_committed_xid ON batch")
    op.execute("DROP FUNCTION batch_stamp_committed_xid()")
    op.execute("ALTER TABLE batch DROP COLUMN committed_xid")
