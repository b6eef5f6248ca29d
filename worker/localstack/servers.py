"""Throwaway PostgreSQL and Redis servers on free loopback ports, for `tunix-ingest run` and the tests.

PostgreSQL refuses to run as root, so as root its binaries run as the `postgres` OS user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from worker.localstack.ports import LOOPBACK, free_port, wait_until_answering
from worker.localstack.processes import terminate
from worker.settings import get_settings

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _reachable_by_postgres(directory: Path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(_as_postgres(["test", "-x", str(directory)]), check=False)
    return probe.returncode == 0


class PostgresServer:
    """A PostgreSQL cluster in `directory` (created on first start), tuned for throwaway use."""

    def __init__(self, directory: Path, port: int | None = None, *, durable: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if not _reachable_by_postgres(directory):  # e.g. under a 0700 home: keep the cluster in /tmp instead
            directory.rmdir()
            directory = Path(tempfile.mkdtemp(prefix="tunix-pg-"))
        self.directory = directory
        self.data = directory / "pgdata"
        self.port = port or free_port()
        self.durable = durable

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@{LOOPBACK}:{self.port}/postgres"

    def _pg_ctl(self, *arguments: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            _as_postgres([str(PGBIN / "pg_ctl"), "-D", str(self.data), *arguments]),
            check=False,
            capture_output=True,
        )

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                _as_postgres(
                    [
                        str(PGBIN / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        "postgres",
                        "-A",
                        "trust",
                        "-E",
                        "UTF8",
                        "--no-sync",
                        "--no-instructions",
                    ]
                ),
                check=True,
                capture_output=True,
            )
        options = f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.directory} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        started = self._pg_ctl("-l", str(self.directory / "postgres.log"), "-w", "-t", "60", "-o", options, "start")
        if started.returncode != 0:
            log = (self.directory / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')}\n{log}")

    def pid(self) -> int:
        """The postmaster's process id (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self, mode: str = "fast") -> None:
        stopped = self._pg_ctl("-m", mode, "-w", "stop")
        if stopped.returncode != 0 and self._postmaster_alive():  # not merely stopped already, or killed
            said = stopped.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"PostgreSQL did not stop: {said}; see {self.directory}")

    def _postmaster_alive(self) -> bool:
        try:
            os.kill(self.pid(), 0)
        except (OSError, ValueError, IndexError):  # no pid file, a stale one, or no such process
            return False
        return True

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisServer:
    """A redis-server in `directory`, append-only file on so a restart keeps accepted messages."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        appendonly: bool = True,
        replica_of: int | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly
        #: The port of the master this server replicates (Sentinel HA, PRODUCT.md §12).
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
        ]
        if self.password:
            command += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of:
            command += ["--replicaof", LOOPBACK, str(self.replica_of)]
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_answering(self.process, self.port, password=self.password)
        except RuntimeError as error:
            self.stop()  # not left running unseen
            raise RuntimeError(f"redis-server {error}; see {self.directory}") from None

    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL, as a host dying would: nothing is flushed."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process:
            terminate(self.process)  # SIGTERM: redis flushes the append-only file before exiting
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def local_servers(state_dir: Path) -> Iterator[list[str]]:
    """Start PostgreSQL and Redis under `state_dir` unless DATABASE_URL / REDIS_URL are set; remove them after."""
    from worker.edge.app import app  # late: the servers themselves need no Celery app

    started: list[PostgresServer | RedisServer] = []
    notes = []
    try:
        if "DATABASE_URL" not in os.environ:
            postgres = PostgresServer(state_dir / "postgres")
            postgres.start()
            started.append(postgres)
            os.environ["DATABASE_URL"] = postgres.url
            notes.append(f"throwaway PostgreSQL on 127.0.0.1:{postgres.port}")
        if "REDIS_URL" not in os.environ:
            redis_server = RedisServer(state_dir / "redis", appendonly=True)
            redis_server.start()
            started.append(redis_server)
            os.environ["REDIS_URL"] = redis_server.url
            notes.append(f"throwaway Redis (AOF on) on 127.0.0.1:{redis_server.port}")
        get_settings.cache_clear()
        app.conf.update(broker_url=os.environ["REDIS_URL"], result_backend=os.environ["REDIS_URL"])
        yield notes
    finally:
        for server in reversed(started):
            server.remove()
