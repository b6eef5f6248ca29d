"""Child processes for `tunix-ingest run` and the bench: celery worker, beat and Flower, each in its own
process group so that stopping one stops its pool children too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def terminate(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to one process (a server writes out what it holds), SIGKILL if it is still there after `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class ChildProcess:
    """A long-running command with its output in `log_path`."""

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_log(self, marker: bytes, timeout: float = 60.0, *, since: int = 0) -> None:
        """Wait until `marker` appears in the log after byte `since`; raise if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            with self.log_path.open("rb") as log:
                log.seek(since)
                if marker in log.read():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the whole group (warm shutdown), SIGKILL if it is still there after `timeout`; the exit
        code (None if it never started)."""
        if self.process is None:
            return None
        if self.running():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def cli_command(*arguments: str) -> list[str]:
    """`tunix-ingest ARGUMENTS` run by this interpreter (its console script need not be on PATH)."""
    return [sys.executable, "-c", "from worker.cli import main; main()", *arguments]


def celery_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker", *arguments]


def worker_command(name: str, *, concurrency: int = 2, pool: str = "prefork", queues: str | None = None) -> list[str]:
    """`celery worker` for node `name@host` on `queues`; by default on every queue the app declares (the ingest
    queue as `INGEST_QUEUE` names it, and the scheduled jobs'), as a plain `celery -A worker worker` is."""
    chosen = ["-Q", queues] if queues else []
    return celery_command(
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        *chosen,
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    )


def worker_process(
    name: str, log_dir: Path, *, concurrency: int = 2, pool: str = "prefork", queues: str | None = None
) -> ChildProcess:
    command = worker_command(name, concurrency=concurrency, pool=pool, queues=queues)
    return ChildProcess(f"worker {name}", command, log_dir / f"worker-{name}.log")


def beat_process(log_dir: Path) -> ChildProcess:
    return ChildProcess("beat", celery_command("beat", "--loglevel", "INFO"), log_dir / "beat.log")


def flower_process(log_dir: Path, port: int, address: str = "127.0.0.1") -> ChildProcess:
    return ChildProcess(
        "flower", celery_command("flower", f"--address={address}", f"--port={port}"), log_dir / "flower.log"
    )


def api_process(
    log_dir: Path, port: int, *, host: str = "127.0.0.1", workers: int = 1, env: dict[str, str] | None = None
) -> ChildProcess:
    """`tunix-ingest serve`: the HTTP enqueue API (ready once its log says "Application startup complete")."""
    command = cli_command("serve", "--host", host, "--port", str(port), "--workers", str(workers))
    return ChildProcess("api", command, log_dir / f"api-{port}.log", env=env)
