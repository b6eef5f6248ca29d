"""The tables operators and consumers query directly (`batch`, `trace`, and `batch_conflict` beside them);
documented in docs/architecture.md."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`xid8`), read as an int."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "XID8"


ischema_names.setdefault("xid8", Xid8)  # so that reflection (alembic check) knows the type


class BatchState(enum.StrEnum):
    """Where a batch stands (PRODUCT.md §5)."""

    #: Committed with all its traces; `published_at` is set once its event is out.
    INGESTED = "ingested"
    #: Permanently invalid: per-trace `errors` and the `raw_payload` are kept for inspection.
    REJECTED = "rejected"
    #: Transient errors outlived the retries: `raw_payload` is kept so it can be re-driven.
    FAILED = "failed"


class Batch(Base):
    __tablename__ = "batch"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    trace_count: Mapped[int] = mapped_column(Integer)
    #: sha256 of the batch's canonical JSON: the same id with other content is a conflict.
    content_hash: Mapped[str] = mapped_column(String(64))
    #: Deliveries of the batch's message (retries and crash redeliveries) when it reached its state.
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default=text("1"))
    redrives: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    #: The message as received, JSON text with every non-ASCII character escaped, for rejected/failed batches.
    raw_payload: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ingested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The transaction that made the batch `ingested`, set by a trigger (migration 0004): the export cursor.
    committed_xid: Mapped[int | None] = mapped_column(Xid8())

    __table_args__ = (
        Index(
            "ix_batch_unpublished",
            "ingested_at",
            postgresql_where=text("state = 'ingested' AND published_at IS NULL"),
        ),
        Index("ix_batch_state", "state"),
        Index("ix_batch_committed_xid", "committed_xid", postgresql_where=text("committed_xid IS NOT NULL")),
    )


class Trace(Base):
    __tablename__ = "trace"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    #: Its batch's id. No foreign key (migration 0005): the claim writes or locks the batch row in the transaction
    #: that writes its traces, and deleting a batch deletes them by trigger; a per-row check cost PostgreSQL
    #: ~3.5 µs a trace in the drain.
    batch_id: Mapped[UUID] = mapped_column()
    position: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    trace_version: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)
    final_answer: Mapped[str] = mapped_column(Text)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    step_count: Mapped[int] = mapped_column(Integer)
    total_chars: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    derivation_version: Mapped[int] = mapped_column(SmallInteger)

    __table_args__ = (
        UniqueConstraint("batch_id", "position", name="uq_trace_batch_id_position"),
        Index("ix_trace_derivation_version", "derivation_version"),
    )


class BatchIdConflict(Base):
    """A delivery that reused a stored batch's id for other traces (after the producer's memory of the id,
    INGEST_BATCH_KEY_TTL_S, ran out): nothing of it was stored, the batch stays as it was, and this row says so.
    One row per batch and conflicting content, however often it is delivered."""

    __tablename__ = "batch_conflict"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    batch_id: Mapped[UUID] = mapped_column(ForeignKey("batch.id", ondelete="CASCADE"))
    #: sha256 of the conflicting traces' canonical JSON (the stored batch's is `batch.content_hash`).
    content_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(200))
    trace_count: Mapped[int] = mapped_column(Integer)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (UniqueConstraint("batch_id", "content_hash", name="uq_batch_conflict_batch_id_content_hash"),)
