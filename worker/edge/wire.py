"""How task messages travel on the Redis transport. Since the claim check (PRODUCT.md §5) a message is a few
hundred bytes, so kombu's own JSON serializer serves: importing `worker` changes nothing for other Celery apps
or kombu users in the same process (no global serializer is replaced)."""

from __future__ import annotations

import base64
from typing import Any

import orjson

#: Bodies travel as JSON text inside the transport's JSON envelope instead of kombu's default base64 (neither
#: side pays for base64, and `redis-cli` shows them readably). A transport option of this app only; each
#: message names its own encoding, so base64 messages queued before a change still decode.
BODY_ENCODING = "utf-8"


def task_kwargs_of(raw_message: bytes | str) -> Any:
    """The kwargs of a Celery task message as the Redis transport stores it (envelope, then body)."""
    envelope = orjson.loads(raw_message)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    _, kwargs, _ = orjson.loads(body)
    return kwargs
