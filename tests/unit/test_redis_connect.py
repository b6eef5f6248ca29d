"""Which Redis the product talks to (PRODUCT.md §12): one server, or a Sentinel list; never a Cluster."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from worker.edge.app import celery_config
from worker.redis_connect import RedisUrlError, SentinelTarget, celery_redis_options, sentinel_target
from worker.settings import Settings, redact

SENTINELS = "sentinel://:master%40pw@10.0.0.1:26379/2;sentinel://:master%40pw@10.0.0.2;sentinel://10.0.0.3:26380/2"


def settings(url: str, **more: object) -> Settings:
    return Settings(redis_url=SecretStr(url), **more)  # type: ignore[arg-type]


def test_a_plain_url_is_one_server() -> None:
    assert sentinel_target(settings("redis://:pw@h:6379/0")) is None
    assert celery_redis_options(settings("redis://:pw@h:6379/0")) == {}


def test_a_sentinel_list_names_every_sentinel_the_master_and_both_passwords() -> None:
    target = sentinel_target(
        settings(SENTINELS, redis_sentinel_master="tunix", redis_sentinel_password=SecretStr("sentinel-pw"))
    )
    assert target == SentinelTarget(
        sentinels=[("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380)],
        master="tunix",
        password="master@pw",
        username=None,
        db=2,
        sentinel_password="sentinel-pw",
    )


def test_celery_follows_the_master_through_sentinel_for_broker_results_and_beat() -> None:
    configured = settings(SENTINELS, redis_sentinel_master="tunix", redis_sentinel_password=SecretStr("s-pw"))
    config = celery_config(configured)
    assert config["broker_url"] == config["result_backend"] == SENTINELS
    for options in (config["broker_transport_options"], config["result_backend_transport_options"]):
        assert options["master_name"] == "tunix" and options["sentinel_kwargs"]["password"] == "s-pw"
    assert config["redbeat_redis_url"].startswith("redis-sentinel")
    redbeat = config["redbeat_redis_options"]
    assert redbeat["service_name"] == "tunix" and redbeat["password"] == "master@pw" and redbeat["db"] == 2
    assert redbeat["sentinels"][2] == ("10.0.0.3", 26380) and redbeat["retry_period"] == 30


@pytest.mark.parametrize(
    ("url", "master", "reason"),
    [
        ("redis+cluster://h:7000/0", None, "Redis Cluster, which kombu"),
        ("redis-cluster://h:7000/0", None, "Redis Cluster, which kombu"),
        (SENTINELS, None, "set REDIS_SENTINEL_MASTER"),
        ("redis://h:6379/0", "tunix", "REDIS_URL is not a sentinel:// list"),
        ("sentinel://h1:26379;redis://h2:6379", "tunix", "every entry of a Sentinel REDIS_URL"),
    ],
)
def test_an_unusable_redis_url_is_refused_with_one_line(url: str, master: str | None, reason: str) -> None:
    with pytest.raises(RedisUrlError) as refused:
        sentinel_target(settings(url, redis_sentinel_master=master))
    assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_sentinel_urls_are_redacted_entry_by_entry() -> None:
    assert redact("sentinel://:pw1@h1:26379/0;sentinel://:pw1@h2:26379/0") == (
        "sentinel://:***@h1:26379/0;sentinel://:***@h2:26379/0"
    )
