"""batch_conflict: deliveries that reused a stored batch's id for other traces

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

A producer remembers a batch id's content for INGEST_BATCH_KEY_TTL_S; after that, the same id with other traces
is accepted and only the worker sees the conflict. It stores nothing of such a delivery and records it here, so
that `GET /api/batches/{id}` and `tunix-ingest status` show it. A new table: `batch` and `trace` are unchanged,
and creating an empty table takes no lock on them beyond the foreign key's brief one on `batch`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")  # the foreign key locks `batch` briefly: never queue behind work
    op.create_table(
        "batch_conflict",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("trace_count", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detected_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batch.id"], name="fk_batch_conflict_batch_id_batch", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_batch_conflict"),
        sa.UniqueConstraint("batch_id", "content_hash", name="uq_batch_conflict_batch_id_content_hash"),
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.drop_table("batch_conflict")
