"""Real `celery -A worker worker` processes, started as subprocesses so they can be killed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.polling import wait_for
from worker.devtools.processes import worker_command


class WorkerProcess:
    """One worker node: `pool` prefork (a main process and `concurrency` children) or solo."""

    def __init__(
        self,
        name: str,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.pool = pool
        self.concurrency = concurrency
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(tempfile.mkstemp(prefix=f"worker-{name}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 60.0) -> WorkerProcess:
        offset = self.log_path.stat().st_size
        command = worker_command(self.name, concurrency=self.concurrency, pool=self.pool)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        wait_for(lambda: self._ready_since(offset), timeout=timeout, what=f"worker {self.name} to be ready")
        return self

    def _ready_since(self, offset: int) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return b" ready." in log.read()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        assert self.process is not None
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in children.stdout.split()]

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown (SIGTERM): running tasks finish, nothing new starts."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL to the worker and all its children, as a host crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
