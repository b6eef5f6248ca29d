"""Wait for outcomes by polling with a deadline, never by fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T],
    *,
    timeout: float = 60.0,
    interval: float = 0.1,
    what: str = "condition",
    explain: Callable[[], str] | None = None,
) -> T:
    """Call `probe` until it returns something truthy; fail with `what` (and `explain()`, the state that
    tells why it never came) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            state = f"\n{explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {value!r}){state}")
        time.sleep(interval)
