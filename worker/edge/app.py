"""The Celery app and its configuration, built lazily from the settings so tests can change them first."""

from __future__ import annotations

import ssl
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from worker import keys
from worker.edge import lifecycle
from worker.edge.beat import beat_schedule
from worker.edge.wire import BODY_ENCODING
from worker.keys import APP_NAME, REPROCESS_QUEUE
from worker.redis_connect import celery_redis_options
from worker.settings import Settings, get_settings


def _tls_options(url: str) -> dict[str, Any] | None:
    if url.startswith("rediss://") and "ssl_cert_reqs" not in url:
        return {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return None


def _direct_queue(name: str) -> Queue:
    """A queue bound as Celery creates one for `-Q name`: its own direct exchange and routing key, so each
    message lands in exactly one queue (and messages queued by earlier versions keep their route)."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings that make delivery at-least-once and every task idempotent-safe (PRODUCT.md §8)."""
    longest_task = settings.task_time_limit_s + settings.retry_backoff_max_s
    if settings.visibility_timeout_s <= longest_task:
        raise ValueError(
            f"VISIBILITY_TIMEOUT_S ({settings.visibility_timeout_s}) must exceed the task time limit plus the "
            f"longest retry delay ({longest_task}); otherwise Redis redelivers tasks that are still running"
        )
    redis_url = settings.redis_url.get_secret_value()
    tls = _tls_options(redis_url)
    via_sentinel = celery_redis_options(settings)  # empty for one Redis server
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "broker_use_ssl": tls,
        "redis_backend_use_ssl": tls,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "body_encoding": BODY_ENCODING,
            # Scan for a dead worker's unacked messages every interval (kombu's default throttle makes it 10x).
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            # A worker killed during its scan leaves the scan lock behind; kombu's default lets it block every
            # other worker's recovery for 300 s. Scans take milliseconds, and each message is requeued in a
            # WATCH transaction, so a short lock is safe.
            "unacked_mutex_expire": settings.unacked_mutex_expire_s,
            **via_sentinel.get("broker_transport_options", {}),
        },
        "result_backend_transport_options": via_sentinel.get("result_backend_transport_options", {}),
        # Storing a result retries through a Redis restart or a Sentinel failover (~10 s in all) instead of
        # failing a task whose batch is already committed.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 10,
        "broker_connection_retry_on_startup": True,
        # Producers must learn quickly that Redis is unreachable (EnqueueFailed), not hang.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_connection_timeout": 3,
        # JSON only: a pickled message is refused before anything runs.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Ack after the task ran, redeliver if its process died; we count deliveries ourselves.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task killed by the hard time limit goes back to the queue instead of being acked (and lost).
        "task_acks_on_timeout": False,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": 10.0,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child,
        "worker_max_memory_per_child": settings.worker_max_memory_per_child_kb,
        "result_expires": settings.result_expires_s,
        # A worker started without -Q consumes both queues, so the usual `celery -A worker worker` ingests.
        "task_queues": [_direct_queue(settings.ingest_queue), _direct_queue(REPROCESS_QUEUE)],
        "task_default_queue": REPROCESS_QUEUE,
        "task_routes": {keys.INGEST_TASK: {"queue": settings.ingest_queue}},
        "task_track_started": False,
        "worker_send_task_events": True,
        "beat_scheduler": "worker.edge.beat:FailoverTolerantScheduler",
        "beat_schedule": beat_schedule(
            settings.sweep_interval_s,
            settings.resend_interval_s,
            settings.redrive_interval_s,
            settings.refresh_interval_s,
        ),
        "redbeat_redis_url": via_sentinel.get("redbeat_redis_url", redis_url),
        # RedBeat retries its Redis calls through an outage or failover for this long (its lock: worker.edge.beat).
        "redbeat_redis_options": {**via_sentinel.get("redbeat_redis_options", {}), "retry_period": 30},
        "redbeat_lock_timeout": 30,
        "beat_max_loop_interval": 5,
    }


app = Celery(APP_NAME, include=["worker.edge.tasks", "worker.edge.scheduled_jobs"])
app.add_defaults(lambda: celery_config(get_settings()))
lifecycle.install(app)
