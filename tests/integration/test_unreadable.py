"""A record batch the consumer cannot read (its gzip payload is garbage), against the embedded broker.

Real Kafka checks batches when they are produced, so one reaches a consumer only through corruption
on disk or a codec the client lacks; the embedded broker stores what it is sent, which lets the test
produce one with a hand-built Produce request (v3: one record batch, magic 2, CRC-32C).
"""

from __future__ import annotations

import socket
import struct
import time

import orjson
import pytest

from streamer.alerts import DeadLetter

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)  # zigzag
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _batch(payload: bytes, count: int, gzip: bool) -> bytes:
    now = int(time.time() * 1000)
    # attributes, last offset delta, first and max timestamps, producer id and epoch, base sequence
    after_crc = struct.pack(">hiqqqhii", 1 if gzip else 0, count - 1, now, now, -1, -1, -1, count)
    after_crc += payload
    rest = struct.pack(">ibI", 0, 2, _crc32c(after_crc)) + after_crc  # leader epoch, magic, CRC
    return struct.pack(">qi", 0, len(rest)) + rest


def _records(values: list[bytes]) -> bytes:
    out = b""
    for delta, value in enumerate(values):
        body = b"\x00" + _varint(0) + _varint(delta) + _varint(-1) + _varint(len(value)) + value
        body += _varint(0)  # no headers
        out += _varint(len(body)) + body
    return out


def _produce(port: int, topic: str, records: bytes) -> None:
    """One Produce v3 request (acks 1) of ``records`` to partition 0; the answer is read, not parsed."""
    body = struct.pack(">hhi", -1, 1, 10_000) + struct.pack(
        ">i", 1
    )  # no transaction, acks, timeout
    body += struct.pack(">h", len(topic)) + topic.encode() + struct.pack(">i", 1)
    body += struct.pack(">ii", 0, len(records)) + records
    request = struct.pack(">hhi", 0, 3, 7) + struct.pack(">h", 3) + b"raw" + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", s.recv(4))[0]
        got = b""
        while len(got) < size:
            got += s.recv(size - len(got))


def test_an_unreadable_batch_is_dead_lettered_and_the_partition_goes_on(kit) -> None:
    """Offsets 0-1 readable, 2-4 one batch whose gzip payload is garbage, 5-6 readable: every offset
    ends scored or dead-lettered, and the partition is not stuck at 2 (librdkafka alone reports the
    batch again on every fetch and never moves past it)."""
    names = kit.topics("unreadable", partitions=1)
    topic, port = names["in"], int(kit.bootstrap.rsplit(":", 1)[1])
    event = orjson.dumps({"x": 0.1, "y": 0.0})
    _produce(port, topic, _batch(_records([event, event]), 2, gzip=False))
    _produce(port, topic, _batch(b"\x1f\x8b\x08garbage, not gzip" * 4, 3, gzip=True))
    _produce(port, topic, _batch(_records([event, event]), 2, gzip=False))

    stats = kit.detector(names).run(idle_exit_s=4)

    scored = kit.offsets_of(kit.read(names["scores"]), topic)
    dead = [DeadLetter.model_validate(r) for r in kit.read(names["dead"])]
    assert scored == {(0, 0), (0, 1), (0, 5), (0, 6)}
    assert sorted(d.source.offset for d in dead) == [2, 3, 4]
    assert all("unreadable record" in d.reason and "_BAD_COMPRESSION" in d.reason for d in dead)
    assert stats.events == 7 and stats.dead_lettered == 3
    assert kit.committed(names["group"], topic, partitions=1) == {0: 7}
