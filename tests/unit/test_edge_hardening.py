"""Pure rules behind issue #18's fixes: names of worker sessions, and anonymous API access as an opt-in."""

from __future__ import annotations

import socket

import pytest

from worker.edge.runtime import APPLICATION_NAME_MAX_BYTES, worker_application_name
from worker.settings import Settings


def test_worker_session_names_fit_postgres_limit_and_tell_hosts_and_runtimes_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TUNIX_INGEST_WORKER_ID", "worker@" + "a-very-long-pod-name-" * 6 + "#4194304#1700000000")
    monkeypatch.setattr(socket, "gethostname", lambda: "ingest-worker-7f9c4-abcde")
    here = worker_application_name(4_194_304, 99_999_999)  # the largest PID Linux hands out
    again = worker_application_name(4_194_304, 99_999_999)
    monkeypatch.setattr(socket, "gethostname", lambda: "ingest-worker-7f9c4-vwxyz")
    elsewhere = worker_application_name(4_194_304, 99_999_999)

    assert len(here.encode()) <= APPLICATION_NAME_MAX_BYTES  # PostgreSQL would cut the rest off
    assert here.startswith("tunix-ingest worker ")
    assert here != again  # a random token: never the name of another runtime
    assert here.split(".")[0] != elsewhere.split(".")[0]  # the host part differs
    assert here.split(".")[1:3] == elsewhere.split(".")[1:3] == ["4194304", "99999999"]


def test_anonymous_api_calls_are_off_unless_opted_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INGEST_API_ALLOW_ANONYMOUS", raising=False)
    assert Settings().ingest_api_allow_anonymous is False
    monkeypatch.setenv("INGEST_API_ALLOW_ANONYMOUS", "1")
    assert Settings().ingest_api_allow_anonymous is True
