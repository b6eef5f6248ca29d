from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _every_test_has_servers(servers: None) -> None:
    """Integration tests talk to the real PostgreSQL and Redis of the session."""
