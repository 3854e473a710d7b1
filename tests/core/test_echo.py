"""The echo probe (crdt_ops/transport/echo.py), without a broker: silence counted only
while a confirmed message of ours waits, our own messages known by their ids, and the
instant up to which everything routed to our queue has been heard."""

from __future__ import annotations

from crdt_ops.transport.echo import EchoWatch


def test_silence_counts_only_while_a_confirmed_message_waits_for_its_echo() -> None:
    e = EchoWatch("r1")
    assert e.silent_for(100) == 0
    e.confirmed(10)
    assert e.silent_for(15) == 5
    e.delivered(12)  # the queue delivers others' messages: the path works
    assert e.silent_for(15) == 3
    e.echoed(16)
    assert e.silent_for(30) == 0
    e.confirmed(40)
    e.reset(45)  # declared again: wait afresh
    assert e.silent_for(50) == 5


def test_our_messages_are_known_by_their_ids_and_give_when_we_last_heard() -> None:
    e, other = EchoWatch("r1"), EchoWatch("r2")
    ids = [e.message_id(t) for t in (1.0, 2.0, 3.0)]
    assert len(set(ids)) == 3 and all(i.startswith(e.prefix) for i in ids)
    assert e.received([other.message_id(5.0)], now=6.0) == 0.0  # not ours
    assert e.heard_through == 0.0
    assert e.received(["", ids[1]], now=7.0) == 2.0  # the latest of ours in the batch
    assert e.heard_through == 2.0
    assert e.received([ids[0]], now=8.0) == 0.0  # older ones were forgotten: FIFO
    assert e.heard_through == 2.0
    assert e.received([ids[2]], now=9.0) == 3.0 and e.heard_through == 3.0
    # an id of ours from an earlier process (a number never issued here) says nothing
    assert e.received([f"{e.prefix}999"], now=10.0) == 0.0 and e.heard_through == 3.0
