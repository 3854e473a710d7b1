"""Asking a sender for operations the group's history lost (Replica.ask, the heartbeat's
``wants``) and hearing such a request (Replica.asked); what every peer holds
(Replica.held_by_peers)."""

from __future__ import annotations

import pytest

from crdt_ops import InvalidMessage, Replica
from crdt_ops.ops import Heartbeat
from crdt_ops.wire import codec
from tests.support import exchange


def _lost_one() -> tuple[Replica, Replica, list[bytes]]:
    """``b`` wrote three batches; ``a`` got the third only: it waits for b 1..2."""
    a, b = Replica("a"), Replica("b")
    sent = []
    for _ in range(3):
        b.counter("n").increment()
        sent += b.outgoing()
    a.receive(sent[2])
    return a, b, sent


def test_a_request_travels_in_heartbeats_until_the_operations_come() -> None:
    a, b, sent = _lost_one()
    assert a.missing() == {"b": (1, 2)}
    a.ask(a.missing())
    assert a.wants() == {"b": (1, 2)}
    hb = codec.decode(a.clock_message())
    assert isinstance(hb, Heartbeat) and hb.wants == {"b": (1, 2)}
    b.receive(a.clock_message())
    asked, who = b.asked()
    assert asked == {"b": (1, 2)} and who == {"a"}
    assert b.asked() == ({}, set())  # taken once
    a.receive(sent[0])
    assert a.wants() == {"b": (2, 2)}  # what came is no longer asked for
    a.receive(sent[1])
    assert a.wants() == {}
    assert codec.decode(a.clock_message()).wants == {}  # type: ignore[union-attr]
    assert a.state() == b.state()


def test_a_request_names_no_more_than_the_sender_issued_and_only_its_channels() -> None:
    _, b, _ = _lost_one()
    a, c = Replica("a"), Replica("c")
    a.ask({"b": (1, 9), "c": (1, 4)})
    msg = a.clock_message()
    b.receive(msg)
    c.receive(msg)
    assert b.asked()[0] == {"b": (1, 3)}  # it issued 3
    assert c.asked()[0] == {}  # it issued none


def test_a_request_leaves_out_what_waits_here_already() -> None:
    a, b, sent = _lost_one()  # a holds b 3, waiting for 1..2
    a.ask({"b": (1, 3)})
    assert a.wants() == {"b": (1, 2)}
    a.receive(sent[1])  # 2 and 3 wait now: only 1 is asked for
    assert a.wants() == {"b": (1, 1)}
    a.receive(sent[0])
    assert a.wants() == {} and a.state() == b.state()


def test_a_replica_does_not_ask_for_its_own_operations() -> None:
    a = Replica("a")
    a.ask({"a": (1, 3)})
    assert a.wants() == {}


def test_a_request_from_a_member_that_reported_having_them_is_stale() -> None:
    # a heartbeat asking for b 1..2, read again from the stream after a reported having b 3
    a, b = Replica("a", members=["a", "b"]), Replica("b", members=["a", "b"])
    b.counter("n").increment()
    b.counter("n").increment()
    exchange(a, b)
    stale = codec.encode_heartbeat(Heartbeat("a", {}, wants={"b": (1, 2)}))
    b.receive(a.clock_message())
    b.receive(stale)
    assert b.asked()[0] == {}


@pytest.mark.parametrize("spans, error", [
    ({"b": (0, 2)}, ValueError), ({"b": (3, 2)}, ValueError), ({"b": (1.0, 2)}, TypeError),
    ({"b": [1, 2]}, TypeError), ({"b": (1, 2, 3)}, TypeError),
])
def test_a_bad_request_is_refused_and_asks_nothing(spans: dict[str, object],
                                                     error: type[Exception]) -> None:
    a = Replica("a")
    a.ask({"c": (1, 1)})
    with pytest.raises(error):
        a.ask(spans)  # type: ignore[arg-type]
    assert a.wants() == {"c": (1, 1)}


@pytest.mark.parametrize("wants, detail", [
    ([("b", 0, 1)], "wants first"), ([("b", 2, 1)], "first after last"),
    ([("b", 1, 1), ("b", 2, 2)], "twice"), ([("", 1, 1)], "wants channel"),
    ([(f"r{i}", 1, 1) for i in range(codec.MAX_WANTS + 1)], "ranges"),
])
def test_a_heartbeat_with_bad_wants_is_refused(wants: list[tuple[str, int, int]],
                                              detail: str) -> None:
    from crdt_ops.wire import crdt_pb2 as pb

    env = pb.Envelope(version=codec.VERSION)
    env.heartbeat.origin = "a"
    for ch, first, last in wants:
        e = env.heartbeat.wants.add()
        e.channel, e.first, e.last = ch, first, last
    b = Replica("b")
    before = b.snapshot()
    with pytest.raises(InvalidMessage) as err:
        b.receive(env.SerializeToString())
    assert detail in str(err.value)
    assert b.snapshot() == before


def test_a_heartbeat_that_asks_is_no_plain_clock_report() -> None:
    # (in a group with sub-groups a plain one skips the replicas that hold one sub-group)
    a = Replica("a")
    assert codec.route_of(a.clock_message()) == ("", True)
    a.ask({"b": (1, 1)})
    assert codec.route_of(a.clock_message()) == ("", False)


def test_what_every_peer_holds() -> None:
    a, b = Replica("a", members=["a", "b"]), Replica("b", members=["a", "b"])
    a.counter("n").increment()
    a.counter("n").increment()
    assert a.held_by_peers() == {"a": 0}
    exchange(a, b)
    b.heartbeat()
    exchange(a, b)
    assert a.held_by_peers() == {"a": 2}
    # an open group: no agreed membership says who the peers are
    c, d = Replica("c"), Replica("d")
    c.counter("n").increment()
    exchange(c, d)
    d.heartbeat()
    exchange(c, d)
    assert c.held_by_peers() == {}


def test_a_batch_s_span() -> None:
    a = Replica("a")
    a.counter("n").increment()
    a.counter("m").increment()
    batch = a.outgoing()[0]
    assert codec.span_of(batch) == ("a", 1, 2)
    a.heartbeat()
    assert codec.span_of(a.outgoing()[0]) is None
    assert codec.span_of(b"\xff\xff") is None


def _holes() -> tuple[Replica, list[bytes]]:
    """Replica a holding b's operations 3, 4, 7, 8, 11 and 12 of 12 (waiting for the rest),
    and asking for 1..12; b's 12 messages."""
    a, b = Replica("a"), Replica("b")
    sent = []
    for _ in range(12):
        b.counter("n").increment()
        sent += b.outgoing()
    for i in (3, 4, 7, 8, 11, 12):
        a.receive(sent[i - 1])
    a.ask({"b": (1, 12)})
    return a, sent


def test_a_request_names_every_hole_of_a_channel_at_once() -> None:
    a, sent = _holes()
    assert a.wants() == {"b": (1, 10)}  # the holes 1..2, 5..6 and 9..10 in one range
    a.receive(sent[0])
    a.receive(sent[1])  # 1..4 delivered; 7..8 and 11..12 wait
    assert a.wants() == {"b": (5, 10)}
    for m in sent[4:6]:
        a.receive(m)
    assert a.wants() == {"b": (9, 10)}
    a.ask({"b": (9, 12)})  # what waits at the top is not asked for
    assert a.wants() == {"b": (9, 10)}
    for m in sent[8:10]:
        a.receive(m)
    assert a.wants() == {} and a.clock["b"] == 12


def test_what_is_held_between_holes_comes_again_and_is_applied_once() -> None:
    a, sent = _holes()
    first, last = a.wants()["b"]
    for m in sent[first - 1:last]:  # b sends the range again, 3, 4, 7 and 8 included
        a.receive(m)
    assert a.wants() == {} and a.buffered == 0
    assert a.clock["b"] == 12 and a.counter("n").value == 12


def _b_wrote(n: int) -> tuple[Replica, Replica, Replica, list[bytes]]:
    """Members a, b and c: b wrote ``n`` batches of one operation, a delivered them all,
    c none yet; b's messages."""
    a, b, c = (Replica(r, members=["a", "b", "c"]) for r in "abc")
    sent = []
    for _ in range(n):
        b.counter("n").increment()
        sent += b.outgoing()
    for m in sent:
        a.receive(m)
    return a, b, c, sent


def _three() -> tuple[Replica, Replica, Replica, list[bytes]]:
    """:func:`_b_wrote` 3, and c got the third only: it waits for b 1..2 and asks for
    them."""
    a, b, c, sent = _b_wrote(3)
    c.receive(sent[2])
    c.ask(c.missing())
    return a, b, c, sent


def test_a_request_to_another_sender_is_heard_by_whoever_delivered_it() -> None:
    a, b, c, _sent = _three()
    asking = c.clock_message()
    a.receive(asking)
    b.receive(asking)
    assert a.asked_of_others() == ({"b": (1, 2)}, {"b": {"c"}})
    assert a.asked_of_others() == ({}, {})  # taken once
    assert a.asked() == ({}, set())  # not its own: a is no sender of b's
    assert b.asked() == ({"b": (1, 2)}, {"c"}) and b.asked_of_others() == ({}, {})
    # a replica that delivered none of it hears nothing to relay
    d = Replica("d", members=["a", "b", "c", "d"])
    d.receive(asking)
    assert d.asked_of_others() == ({}, {})


def test_who_asked_is_kept_per_channel() -> None:
    # c lacks b's 1st operation and d lacks c's 1st: a, which delivered both, hears c ask
    # for b's only and d for c's only (a holder left out as an asker of one channel is
    # still a holder of the other)
    a, b, c, d = (Replica(r, members=["a", "b", "c", "d"]) for r in "abcd")
    by_b, by_c = [], []
    for writer, sent in (b, by_b), (c, by_c):
        for _ in range(2):
            writer.counter("n").increment()
            sent += writer.outgoing()
    for m in by_b + by_c:
        a.receive(m)
    c.receive(by_b[1])
    d.receive(by_c[1])
    for r in c, d:
        r.ask(r.missing())
        a.receive(r.clock_message())
    assert a.asked_of_others() == ({"b": (1, 1), "c": (1, 1)}, {"b": {"c"}, "c": {"d"}})


def test_a_relayed_request_is_cut_to_what_the_holder_delivered() -> None:
    _a, _b, c, sent = _three()
    e = Replica("e", members=["a", "b", "c", "e"])
    e.receive(sent[0])  # e has b 1 only
    e.receive(c.clock_message())
    assert e.asked_of_others() == ({"b": (1, 1)}, {"b": {"c"}})


def test_the_holders_of_a_range_are_who_reported_delivering_it() -> None:
    a, b, c, _sent = _three()
    assert a.holders("b", 3) == ["a", "b"]  # b's batches say b has them
    for m in c.clock_message(), b.clock_message():
        a.receive(m)
    assert a.holders("b", 1) == ["a", "b"]  # c reported b 0: it holds 3, delivered none
    assert c.holders("b", 1) == ["b"] and c.holders("b", 4) == []
    a.retire("b", 3)  # gone for good, its operations all delivered here
    c.receive(a.clock_message())  # a's relay of it
    a.receive(c.clock_message())  # c's: c knows, a counts b out
    assert "b" in a.membership.retired and a.holders("b", 1) == ["a"]


def test_what_a_retired_sender_s_history_lost_a_holder_can_still_give() -> None:
    # b gone for good, retired after its 3rd operation (as `crdt-ops retire` names the last
    # one the stream holds); a delivered b's 5, c only 3: c learns of 4..5 from a's report,
    # asks, and takes them from a (relayed) though b is retired everywhere
    a, _b, c, sent = _b_wrote(5)
    for m in sent[:3]:
        c.receive(m)
    for r in a, c:
        r.retire("b", 3)
    assert a.membership.retiring_replicas() == c.membership.retiring_replicas() == {"b"}
    c.receive(a.clock_message())  # a delivered b's 5: c counts b until it has them too
    assert c.membership.retiring == {"b": 5} and c.missing() == {"b": (4, 5)}
    c.ask(c.missing())
    a.receive(c.clock_message())
    assert a.asked_of_others() == ({"b": (4, 5)}, {"b": {"c"}}) and a.holders("b", 4) == ["a"]
    for m in sent[3:]:
        assert c.receive(m)
    assert c.wants() == {} and c.state() == a.state() and c.counter("n").value == 5
    assert a.membership.retired == c.membership.retired == {"b"}
