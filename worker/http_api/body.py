"""Request bodies read with a bound: an oversize upload is refused while it arrives, never buffered whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the request body exceeds the maximum of {limit} bytes")


async def read_bounded(request: Request, limit: int) -> bytes:
    """The whole body, or `BodyTooLarge` as soon as it is known to pass `limit` bytes (from Content-Length
    before reading anything, else after the chunk that passes it)."""
    refuse_declared_oversize(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class OverlongLine(bytes):
    """Stands for a line longer than the limit; only its first bytes are kept, the rest was skipped."""


def refuse_declared_oversize(request: Request, limit: int) -> None:
    """`BodyTooLarge` at once when the body's Content-Length passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)


async def body_lines(request: Request, max_line: int, max_total: int) -> AsyncIterator[bytes]:
    """The body's lines as they arrive (without their newline); a line over `max_line` bytes comes as an
    `OverlongLine` holding its first bytes, so one huge line costs no more memory than the limit. Raises
    `BodyTooLarge` once the body passes `max_total` bytes (at once if its Content-Length says it will)."""
    refuse_declared_oversize(request, max_total)
    pending = bytearray()
    overlong = False
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_total:
            raise BodyTooLarge(max_total)
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line = bytes(pending[:end])
            del pending[: end + 1]
            yield OverlongLine(line[:100]) if overlong or len(line) > max_line else line
            overlong = False
        if len(pending) > max_line:
            overlong = True
            del pending[100:]
    if pending or overlong:
        yield OverlongLine(bytes(pending[:100])) if overlong or len(pending) > max_line else bytes(pending)
