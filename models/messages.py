"""The messages of PRODUCT.md §5–§6: the `ingest.batch` task's kwargs (v2 claim check, v1 inline traces) and
the outcome of a batch that its event and task result carry. Strict, like the trace schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from models.schemas import Source


class BatchMessage(BaseModel):
    """Wire format v1 of an `ingest.batch` task: the traces inline. Still accepted, so that messages queued by an
    older version are ingested after an upgrade; traces are checked separately, one by one."""

    model_config = ConfigDict(extra="forbid")

    batch_id: UUID
    source: Source
    traces: list[Any]
    enqueued_at: datetime | None = None


class BatchTicket(BaseModel):
    """Wire format v2 of an `ingest.batch` task (PRODUCT.md §5): a claim check. The traces' JSON waits in
    custody under `custody_seq`; the message itself stays a few hundred bytes whatever the batch size.
    A producer's retry sends a claim check naming the same record. The record is used only if its ticket names
    this message's `batch_id` and `content_hash` (a number can repeat after Redis lost writes)."""

    model_config = ConfigDict(extra="forbid")

    batch_id: UUID
    source: Source
    trace_count: Annotated[int, Field(ge=1)]
    #: sha256 of the body: custody hands out only the body of a record whose ticket names this hash (and batch
    #: id), and the worker checks that the body it fetched is the one this message names.
    content_hash: Annotated[str, StringConstraints(pattern="^[0-9a-f]{64}$")]
    custody_seq: Annotated[int, Field(ge=1)]
    enqueued_at: datetime | None = None


class IngestResult(BaseModel):
    """The outcome of one batch: the "ingested" event (v2) and the task result carry this summary."""

    batch_id: UUID
    source: str
    state: str
    count: int
    ingested_at: datetime | None = None
    #: The database time of the batch's rows: one transaction writes them all, so they share it.
    created_at: datetime | None = None
    #: The stored rows' ids in position order.
    ids: list[int] = Field(default_factory=list)
    published: bool = False
    errors: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def stored(
        cls,
        batch_id: UUID,
        source: str,
        *,
        ids: list[int],
        created_at: datetime | None,
        ingested_at: datetime | None,
        published: bool = False,
    ) -> IngestResult:
        """A batch PostgreSQL holds: its rows' ids (position order) and the time they were written."""
        return cls(
            batch_id=batch_id,
            source=source,
            state="ingested",
            count=len(ids),
            ingested_at=ingested_at,
            created_at=created_at,
            ids=ids,
            published=published,
        )

    @classmethod
    def not_stored(cls, batch_id: UUID, source: str, state: str, errors: list[dict[str, Any]]) -> IngestResult:
        """A batch kept as `rejected` or parked as `failed` (or refused as a conflict): no rows, its reasons."""
        return cls(batch_id=batch_id, source=source, state=state, count=0, errors=errors)
