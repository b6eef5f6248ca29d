"""A throwaway Redis with high availability on loopback (PRODUCT.md §12): a master, two replicas (AOF on) and
three Sentinels, for the failover test and `tunix-ingest bench --redis sentinel`."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from worker.localstack.ports import LOOPBACK, free_port, wait_until_answering
from worker.localstack.processes import terminate
from worker.localstack.servers import RedisServer


class SentinelServer:
    """A `redis-server --sentinel` watching the master on `master_port` as `master_name` (PRODUCT.md §12)."""

    def __init__(
        self,
        directory: Path,
        master_port: int,
        *,
        master_name: str = "tunix",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
        password: str | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.master_name = master_name
        lines = [
            f"port {self.port}",
            f"bind {LOOPBACK}",
            f"dir {directory}",
            f"sentinel monitor {master_name} {LOOPBACK} {master_port} {quorum}",
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        if password:
            lines.append(f"sentinel auth-pass {master_name} {password}")
        # Sentinel rewrites its configuration file as it learns the topology: it must be its own, writable.
        self.config = directory / "sentinel.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"sentinel://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        log = (self.directory / "sentinel.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", str(self.config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_until_answering(self.process, self.port)
        except RuntimeError as error:
            self.stop()  # not left running unseen
            raise RuntimeError(f"redis sentinel {error}; see {self.directory}") from None

    def stop(self) -> None:
        if self.process:
            terminate(self.process)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class SentinelStack:
    """Master, replicas and Sentinels under `directory`; `url` is the product's REDIS_URL for them."""

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        master_name: str = "tunix",
        appendonly: bool = True,
    ) -> None:
        self.directory = directory
        self.master_name = master_name
        self.master = RedisServer(directory / "master", appendonly=appendonly)
        self.replicas = [
            RedisServer(directory / f"replica-{n}", replica_of=self.master.port, appendonly=appendonly)
            for n in range(1, replicas + 1)
        ]
        self.sentinels = [
            SentinelServer(directory / f"sentinel-{n}", self.master.port, master_name=master_name)
            for n in range(1, sentinels + 1)
        ]

    @property
    def url(self) -> str:
        return ";".join(f"{sentinel.address}/0" for sentinel in self.sentinels)

    def start(self, timeout: float = 30.0) -> None:
        """Start everything and return once every replica is in sync and every Sentinel sees the whole
        topology (writing earlier, `WAIT 1` right after start returned 0)."""
        try:
            for server in [self.master, *self.replicas]:
                server.start()
            for sentinel in self.sentinels:
                sentinel.start()
            deadline = time.monotonic() + timeout
            while not self._in_sync():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Sentinel topology not in sync after {timeout:.0f} s; see {self.directory}")
                time.sleep(0.1)
        except BaseException:  # nothing of a stack that did not start is left running
            self.stop()
            raise

    def _in_sync(self) -> bool:
        for replica in self.replicas:
            with Redis(host=LOOPBACK, port=replica.port) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        for sentinel in self.sentinels:
            with Redis(host=LOOPBACK, port=sentinel.port) as client:
                master = client.sentinel_master(self.master_name)
                if master["num-slaves"] < len(self.replicas) or master["num-other-sentinels"] < len(self.sentinels) - 1:
                    return False
        return True

    def master_port(self) -> int:
        """The port of the master the Sentinels name now."""
        for sentinel in self.sentinels:
            try:
                with Redis(host=LOOPBACK, port=sentinel.port, socket_timeout=1) as client:
                    return int(client.sentinel_get_master_addr_by_name(self.master_name)[1])
            except (RedisError, OSError):  # one Sentinel slow or gone mid-failover: ask the next
                continue
        raise RuntimeError("no Sentinel answers")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in [*self.replicas, self.master]:
            server.stop()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
