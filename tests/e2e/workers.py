"""Real `celery -A worker worker` processes, started as subprocesses so they can be killed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

from worker.localstack.processes import ChildProcess, worker_command


class WorkerProcess(ChildProcess):
    """One worker node: `pool` prefork (a main process and `concurrency` children) or solo, logging to its own
    file; `start` returns once it is ready, `stop` is a warm shutdown, `kill` a host crash."""

    def __init__(
        self,
        name: str,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        log_path = Path(tempfile.mkstemp(prefix=f"worker-{name}-", suffix=".log")[1])
        command = worker_command(name, concurrency=concurrency, pool=pool)
        super().__init__(name, command, log_path, env={**os.environ, **(env or {})})

    def start(self, *, timeout: float = 60.0) -> WorkerProcess:
        """Start (again, after a stop or kill) and wait for this start's " ready." line."""
        since = self.log_path.stat().st_size
        super().start()
        self.wait_for_log(b" ready.", timeout=timeout, since=since)
        return self

    def child_pids(self) -> list[int]:
        assert self.process is not None
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in children.stdout.split()]

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown (SIGTERM to the main process): running tasks finish, nothing new starts."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        self.thaw()  # a frozen worker takes the SIGTERM once it runs again
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def freeze(self) -> None:
        """SIGSTOP to the worker and all its children: nothing of theirs runs until `thaw` (or `kill`)."""
        assert self.process is not None and self.process.poll() is None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL to the worker and all its children, as a host crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
