"""The Redis schema: every key, task and queue name tunix-rt ingest uses, defined once (as models/tables.py is
PostgreSQL's). What each key holds is documented in docs/operations.md ("Redis memory")."""

from __future__ import annotations

from uuid import UUID

#: The Celery app's name: another app's worker in the same process is left alone.
APP_NAME = "tunix_ingest"

# Tasks and queues. The ingest queue's name is a setting (`INGEST_QUEUE`, default "ingest").
INGEST_TASK = "ingest.batch"
SWEEP_TASK = "reprocess.sweep"
RESEND_LOST_TASK = "reprocess.resend_lost"
REDRIVE_TASK = "reprocess.redrive"
REFRESH_TASK = "reprocess.refresh_derived"
REFRESH_CHUNK_TASK = "reprocess.refresh_derived_chunk"
REPROCESS_QUEUE = "reprocess"

# Custody of accepted batches (worker.custody). Lua scripts build record keys from the prefix.
CUSTODY = "ingest:custody"
CUSTODY_SEQ, CUSTODY_WAITING, CUSTODY_TAKEN, CUSTODY_HORIZON = (
    f"{CUSTODY}:{name}" for name in ("seq", "waiting", "taken", "horizon")
)
CUSTODY_RESENT, CUSTODY_BODIES_MISSING, CUSTODY_OWNERS, CUSTODY_RECORDS = (
    f"{CUSTODY}:{name}" for name in ("resent", "bodies_missing", "owners", "records")
)


def custody_body_key(record: str) -> str:
    return f"{CUSTODY}:body:{record}"


def custody_ticket_key(record: str) -> str:
    return f"{CUSTODY}:ticket:{record}"


def custody_legacy_payload_key(batch_id: str) -> str:
    """A v1 message's whole payload, named by its batch id."""
    return f"{CUSTODY}:payload:{batch_id}"


def delivery_counter_key(batch_id: str) -> str:
    """Where workers count a batch's deliveries (brokers do not count redeliveries after a crash)."""
    return f"ingest:deliveries:{batch_id}"


def batch_key(batch_id: UUID) -> str:
    """The content hash a batch id was first enqueued with (conflict detection at enqueue time)."""
    return f"ingest:batch:{batch_id}"


# Worker nodes: heartbeats (custody's owners), progress marks (the probe), counters and latency (metrics).
HEARTBEAT = "ingest:heartbeat"
PROGRESS = "ingest:progress"
#: node name → its current worker id (`<node>#<pid>#<start>`).
NODES = "ingest:nodes"
#: node → when the metrics first saw it registered without a heartbeat.
NODES_DOWN_SINCE = "ingest:nodes:down_since"
#: Fields: batches_ingested, traces_ingested, batches_failed, batches_rejected (since Redis last lost its data).
COUNTERS = "ingest:counters"
#: Fields: one per bucket bound (batches whose latency fell in it, not cumulative), "+Inf", "sum" and "count".
LATENCY = "ingest:latency:enqueue_to_published"


def heartbeat_key(worker_id: str) -> str:
    return f"{HEARTBEAT}:{worker_id}"


def progress_key(worker_id: str) -> str:
    return f"{PROGRESS}:{worker_id}"


#: While a derived-field refresh chain runs, this key names it; a second chain does not start.
REFRESH_LOCK = "ingest:refresh:running"


# Consumer groups on the events stream (the stream's name is a setting, `INGEST_EVENTS_STREAM`).
def _consumer_key(stream: str, group: str, name: str) -> str:
    return f"ingest:consumer:{stream}:{group}:{name}"


def handled_key(stream: str, group: str) -> str:
    """The batch ids the group has handed over (a sorted set, newest kept)."""
    return _consumer_key(stream, group, "handled")


def holders_key(stream: str, group: str) -> str:
    """The batches in flight: batch id → `<entry id> <consumer>` of the entry handing it over."""
    return _consumer_key(stream, group, "holders")


def malformed_key(stream: str, group: str) -> str:
    """How many entries were no ingested event (a counter)."""
    return _consumer_key(stream, group, "malformed")


def short_batches_key(stream: str, group: str) -> str:
    """How many times a batch was loaded with rows missing and left pending (a counter)."""
    return _consumer_key(stream, group, "short_batches")
