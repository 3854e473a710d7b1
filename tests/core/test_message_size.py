"""No message this library produces is larger than about ``codec.MAX_MESSAGE_BYTES`` (8 MiB):
RabbitMQ refuses a message over its ``max_message_size`` (16 MiB by default from 4.0), and a
refused message would be retried for ever with every later one of its writer behind it. A
write that cannot fit is refused; a burst of large ones is sealed and joined into several
messages."""

from __future__ import annotations

import pytest

from crdt_ops import InvalidValue, Replica
from crdt_ops.wire import codec

MiB = 1024 * 1024


def test_a_value_that_cannot_fit_in_a_message_is_refused_and_nothing_changes() -> None:
    r = Replica("r")
    r.counter("c").increment()
    before = (r.state(), dict(r.clock), r.unsent)
    with pytest.raises(InvalidValue, match="does not fit in a message"):
        r.register("blob").set(b"x" * (9 * MiB))
    with pytest.raises(InvalidValue, match="keep large data elsewhere"):
        r.set("s").add("é" * (5 * MiB))  # 10 MiB of UTF-8 (5 Mi characters), counted as such
    assert (r.state(), dict(r.clock), r.unsent) == before


def test_a_burst_of_large_values_goes_out_in_messages_that_fit() -> None:
    a, b = Replica("a"), Replica("b")
    for i in range(20):
        a.register(f"k{i}").set(bytes([i]) * MiB)
    out = a.outgoing()
    assert len(out) >= 3
    assert all(len(m) <= codec.MAX_MESSAGE_BYTES for m in out), [len(m) for m in out]
    for m in reversed(out):  # in any order: the causal buffer orders them
        b.receive(m)
    assert b.state() == a.state() and len(b.state()) == 20


def test_joining_batches_stops_before_the_bound() -> None:
    """The publisher joins a backlog of batches into one message (``codec.coalesce``): not
    past the bound either."""
    a = Replica("a")
    batches = []
    for i in range(20):
        a.register(f"k{i}").set(b"y" * MiB)
        batches += a.outgoing()
    joined = codec.coalesce(batches)
    assert sum(n for n, _ in joined) == 20 and len(joined) >= 3
    assert all(len(body) <= codec.MAX_MESSAGE_BYTES for _, body in joined)


def test_a_replica_with_a_smaller_bound_cuts_sooner() -> None:
    a = Replica("a", max_message_bytes=64 * 1024)
    for i in range(10):
        a.register(f"k{i}").set("v" * 10_000)  # about 10 KB each
    out = a.outgoing()
    assert len(out) == 2 and all(len(m) <= 64 * 1024 for m in out), [len(m) for m in out]
    with pytest.raises(InvalidValue):
        a.register("big").set(b"z" * 70_000)
