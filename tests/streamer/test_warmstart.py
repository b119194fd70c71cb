from __future__ import annotations

from streamer.warmstart import warm_ranges


def test_warm_ranges_read_the_last_records_before_the_committed_offset() -> None:
    committed = {("t", 0): 500, ("t", 1): 50, ("t", 2): -1001, ("t", 3): 0, ("u", 0): 30}
    fed = {("t", 1): 40, ("u", 0): 35}
    assert warm_ranges(committed, fed, 100) == {("t", 0): (400, 500), ("t", 1): (40, 50)}
    # never committed (-1001), nothing before offset 0, and what was fed already: nothing to read
    assert warm_ranges(committed, {}, 1) == {
        ("t", 0): (499, 500),
        ("t", 1): (49, 50),
        ("u", 0): (29, 30),
    }
    assert warm_ranges(committed, {}, 0) == {}


class _Msg:
    def __init__(self, tp: tuple[str, int], offset: int, error: object = None) -> None:
        self._tp, self._offset, self._error = tp, offset, error

    def topic(self) -> str:
        return self._tp[0]

    def partition(self) -> int:
        return self._tp[1]

    def offset(self) -> int:
        return self._offset

    def error(self) -> object:
        return self._error


class _Err:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code

    def name(self) -> str:
        return "ERR"


class _FakeConsumer:
    """Hands out ``script`` one consume call at a time, then nothing."""

    def __init__(self, config: dict, script: list[list[_Msg]]) -> None:
        self.config, self.script, self.assigned, self.closed = config, script, None, False

    def assign(self, partitions: list) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        return self.script.pop(0) if self.script else []

    def close(self) -> None:
        self.closed = True


def _read(monkeypatch, script, ranges, **kw):
    from streamer import warmstart

    made: list[_FakeConsumer] = []
    monkeypatch.setattr(
        warmstart,
        "client",
        lambda cls, config: made.append(_FakeConsumer(config, script)) or made[-1],
    )
    fed: list[list[int]] = []
    got = warmstart.read_ranges(
        {"group.id": "g", "group.instance.id": "member-1", "auto.offset.reset": "latest"},
        ranges,
        lambda ms: fed.append([m.offset() for m in ms]),
        batch=100,
        timeout_s=kw.pop("timeout_s", 5.0),
        **kw,
    )
    return got, fed, made[0]


def test_read_ranges_stops_each_partition_at_its_end(monkeypatch) -> None:
    from confluent_kafka import KafkaError

    a, b, c = ("t", 0), ("t", 1), ("t", 2)
    script = [
        [_Msg(a, 5), _Msg(b, 0), _Msg(a, 6)],
        # a's end reached at 7; b ends at the partition's end (EOF) before its range does; c
        # starts past its end (its earlier records expired)
        [_Msg(a, 7), _Msg(b, 1, _Err(KafkaError._PARTITION_EOF)), _Msg(c, 50), _Msg(a, 9)],
    ]
    got, fed, consumer = _read(monkeypatch, script, {a: (5, 8), b: (0, 4), c: (10, 20)})
    assert fed == [[5, 0, 6], [7]]
    assert got.events == 4 and got.reached == {a: 8, b: 1} and got.complete
    assert consumer.assigned == [("t", 0, 5), ("t", 1, 0), ("t", 2, 10)] and consumer.closed
    # its own consumer: from the earliest record kept, committing nothing, not the static member
    assert consumer.config["auto.offset.reset"] == "earliest"
    assert consumer.config["enable.auto.commit"] is False
    assert "group.instance.id" not in consumer.config


def test_read_ranges_gives_up_a_partition_on_an_error_and_stops_at_its_deadline(
    monkeypatch,
) -> None:
    from confluent_kafka import KafkaError

    a, b = ("t", 0), ("t", 1)
    script = [[_Msg(a, 0), _Msg(b, 0, _Err(KafkaError._BAD_MSG)), _Msg(b, 1)]]
    got, fed, _ = _read(monkeypatch, script, {a: (0, 10), b: (0, 10)}, timeout_s=0.5)
    assert fed == [[0]]
    assert not got.complete and got.errors == ["t[1]: ERR"] and got.reached == {a: 1}
    # a stop request ends the read before anything is fed
    got, fed, _ = _read(monkeypatch, [[_Msg(a, 0)]], {a: (0, 10)}, stopping=lambda: True)
    assert fed == [] and got.events == 0 and not got.complete
