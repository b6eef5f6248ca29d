"""How the Redis transport recovers a dead worker's messages, as configured by the product."""

from __future__ import annotations

import redis

from worker.edge.app import app
from worker.settings import get_settings


def test_a_scan_lock_left_by_a_dead_worker_expires_within_the_recovery_bound(redis_url: str) -> None:
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        # Take the lock the way a worker's unacked-message scan does, then "die" without releasing it.
        lock = channel.client.lock(channel.unacked_mutex_key, timeout=channel.unacked_mutex_expire)
        assert lock.acquire(blocking=False)
    left_behind_for = redis.Redis.from_url(redis_url).ttl(channel.unacked_mutex_key)
    assert 0 < left_behind_for <= get_settings().unacked_mutex_expire_s < get_settings().visibility_timeout_s
