"""Real `tunix-ingest serve` processes on free loopback ports, for the HTTP API's tests."""

from __future__ import annotations

import os
from pathlib import Path

from worker.localstack.ports import free_port
from worker.localstack.processes import ChildProcess, api_process

#: The test servers answer anonymous calls from loopback (tests that need tokens set INGEST_API_TOKENS).
ANONYMOUS_ON_LOOPBACK = {"INGEST_API_ALLOW_ANONYMOUS": "1"}


class ApiServer:
    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: ChildProcess = api_process(
            log_dir, self.port, env={**os.environ, **ANONYMOUS_ON_LOOPBACK, **(env or {})}
        )

    def start(self) -> ApiServer:
        self.process.start()
        self.process.wait_for_log(b"Application startup complete")
        return self

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.stop()
