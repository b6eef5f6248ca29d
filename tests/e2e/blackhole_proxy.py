"""A loopback TCP proxy whose open connections can be turned into black holes, as a network fault does.

`cut()` closes the Redis side of every connection open at that moment (Redis drops the client, so a pending
BRPOP pops nothing into the void) and keeps the client side open without ever answering again: the client sees
a connection that is up and silent, the half-open socket a worker is left with after a failover or a network
partition. Connections made after the cut pass through normally, as they would to a recovered network.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, cast

from worker.localstack.ports import LOOPBACK


class BlackholeProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackhole-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[asyncio.Task[None]]]] = []
        #: Client sides of cut connections: held so that nothing closes them.
        self._silenced: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> BlackholeProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._link, LOOPBACK, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> int:
        """Black-hole every connection open now; the number cut."""
        return int(self._call(self._cut()))

    def stop(self) -> None:
        self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            client_writer.close()
            return
        pumps = [
            asyncio.create_task(self._pump(client_reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, client_writer)),
        ]
        self._links.append((client_writer, upstream_writer, pumps))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _cut(self) -> int:
        links, self._links = self._links, []
        for client_writer, upstream_writer, pumps in links:
            for pump in pumps:
                pump.cancel()
            upstream_writer.close()
            # Stop reading from the client too: what it sends piles up in its socket, unanswered.
            cast(asyncio.Transport, client_writer.transport).pause_reading()
            self._silenced.append(client_writer)
        return len(links)

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        for client_writer, upstream_writer, pumps in self._links:
            for pump in pumps:
                pump.cancel()
            upstream_writer.close()
            client_writer.close()
        for client_writer in self._silenced:
            client_writer.close()
