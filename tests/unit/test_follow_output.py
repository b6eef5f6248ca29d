"""`follow`'s writing: whole batches, in order, whatever a pipe takes per call."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import pytest

from worker.cli import follow


def test_write_all_finishes_what_a_short_writev_left(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[bytes] = []

    def short_writev(fd: int, pieces: Sequence[bytes]) -> int:
        written.append(b"".join(pieces)[:2])
        return 2

    def one_byte(fd: int, data: bytes) -> int:
        written.append(bytes(data[:1]))
        return 1

    monkeypatch.setattr(follow, "_IOV_MAX", 3)  # several writev calls for one batch
    monkeypatch.setattr(os, "writev", short_writev)
    monkeypatch.setattr(os, "write", one_byte)
    pieces = [f'{{"n":{n}}}\n'.encode() for n in range(7)]

    follow.write_all(99, pieces)

    assert b"".join(written) == b"".join(pieces)


def test_write_all_sends_a_batch_of_many_lines_through_a_real_pipe_in_order() -> None:
    pieces = [f"{n:05d}".encode() * 200 + b"\n" for n in range(2500)]  # 2.5 MB: many writev calls, a full pipe
    reading, writing = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(reading, 1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        follow.write_all(writing, pieces)
    finally:
        os.close(writing)
        reader.join(10)
        os.close(reading)

    assert bytes(received) == b"".join(pieces)
