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


def test_an_echo_of_an_earlier_process_is_not_taken_for_the_new_one_s() -> None:
    """Each process numbers its messages from 0: an earlier process's message 0, still
    queued after a restart, was taken for the new process's message 0, and moved
    ``heard_through`` to its publish time though what was queued behind the old one had
    not been delivered (logic then counted a worker silent for too long)."""
    old, new = EchoWatch("r1", "p1"), EchoWatch("r1", "p2")
    stale = old.message_id(1.0)
    new.message_id(100.0)
    assert new.received([stale], now=101.0) == 0.0 and new.heard_through == 0.0
