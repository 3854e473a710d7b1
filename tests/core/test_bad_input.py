"""Bad input never corrupts a replica.

``Replica.receive`` either applies a valid message or raises
:class:`InvalidMessage` (with a non-empty ``reason``) and leaves the replica
exactly as it was: ``state()``, ``clock``, ``buffered`` and ``snapshot()``.
No other exception may escape for any bytes. The local API rejects values,
amounts and handles it cannot replicate before changing anything.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt_ops import InvalidMessage, InvalidValue, Replica, TypeConflict
from crdt_ops.wire import codec
from crdt_ops.wire import crdt_pb2 as pb

HYPOTHESIS = settings(max_examples=400, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])

Fingerprint = tuple[dict[str, Any], dict[str, int], int, bytes, dict[str, tuple[int, int]]]


# ---------------------------------------------------------------- helpers


def fingerprint(r: Replica) -> Fingerprint:
    """Everything the contract says an invalid message must leave untouched."""
    return r.state(), dict(r.clock), r.buffered, r.snapshot(), r.unmet_claims()


def assert_rejected(r: Replica, data: Any, exc: type[InvalidMessage] = InvalidMessage,
                    reason: str | None = None) -> InvalidMessage:
    """``r.receive(data)`` raises ``exc`` with a reason tag, and nothing changed."""
    before = fingerprint(r)
    with pytest.raises(exc) as info:
        r.receive(data)
    err = info.value
    assert isinstance(err.reason, str)
    assert err.reason
    if reason is not None:
        assert err.reason == reason, str(err)
    assert fingerprint(r) == before
    return err


def receive_or_reject(r: Replica, data: bytes) -> bool:
    """Receive ``data``: True if it was accepted; if it raised, it raised
    InvalidMessage with a reason and nothing changed. Any other exception fails."""
    before = fingerprint(r)
    try:
        r.receive(data)
    except InvalidMessage as e:
        assert isinstance(e.reason, str)
        assert e.reason
        assert fingerprint(r) == before, f"state changed although {e.reason!r} was raised"
        return False
    # An accepted message must leave a replica that still works end to end.
    snap = r.snapshot()
    assert Replica.from_snapshot(snap).state() == r.state()
    return True


def pb_value(v: Any) -> pb.Value:
    msg = pb.Value()
    codec._put_value(msg, v)
    return msg


def counter_add(path: Sequence[str], p: int = 1, n: int = 0,
                type_: int = pb.OBJ_TYPE_PNCOUNTER) -> pb.Operation:
    op = pb.Operation(path=list(path), type=type_)
    op.counter_add.SetInParent()
    op.counter_add.p = p
    op.counter_add.n = n
    return op


def register_set(path: Sequence[str], value: pb.Value | None = None, timestamp: int = 1,
                 type_: int = pb.OBJ_TYPE_LWW_REGISTER) -> pb.Operation:
    op = pb.Operation(path=list(path), type=type_)
    op.register_set.SetInParent()
    if value is not None:
        op.register_set.value.CopyFrom(value)
    op.register_set.timestamp = timestamp
    return op


def set_add(path: Sequence[str], element: pb.Value | None = None,
            type_: int = pb.OBJ_TYPE_ORSET) -> pb.Operation:
    op = pb.Operation(path=list(path), type=type_)
    op.set_add.SetInParent()
    if element is not None:
        op.set_add.element.CopyFrom(element)
    return op


def flag_enable(path: Sequence[str], type_: int = pb.OBJ_TYPE_EWFLAG,
                observed: Iterable[tuple[str, int]] = ()) -> pb.Operation:
    op = pb.Operation(path=list(path), type=type_)
    op.flag_enable.SetInParent()
    for r, s in observed:
        d = op.flag_enable.observed.add()
        d.replica = r
        d.seq = s
    return op


def map_remove(path: Sequence[str], field: str, type_: int = pb.OBJ_TYPE_ORMAP,
               seen: dict[str, int] | None = None) -> pb.Operation:
    op = pb.Operation(path=list(path), type=type_)
    op.map_remove.SetInParent()
    op.map_remove.field = field
    for r, s in (seen or {}).items():
        e = op.map_remove.seen.add()
        e.replica = r
        e.seq = s
    return op


def batch(ops: Iterable[pb.Operation], *, origin: str = "z", first_seq: int = 1,
          deps: Iterable[tuple[str, int]] = (), version: int = 1) -> bytes:
    env = pb.Envelope(version=version)
    b = env.batch
    b.SetInParent()
    b.origin = origin
    b.first_seq = first_seq
    for r, s in deps:
        e = b.deps.add()
        e.replica = r
        e.seq = s
    for op in ops:
        b.ops.add().CopyFrom(op)
    return env.SerializeToString()


def heartbeat(origin: str, clock: Iterable[tuple[str, int]], version: int = 1) -> bytes:
    env = pb.Envelope(version=version)
    env.heartbeat.SetInParent()
    env.heartbeat.origin = origin
    for r, s in clock:
        e = env.heartbeat.clock.add()
        e.replica = r
        e.seq = s
    return env.SerializeToString()


# ---------------------------------------------------------------- a replica with some history


@cache
def history() -> dict[str, Any]:
    """Messages of replicas ``a`` and ``c`` covering every type and operation kind."""
    a, c = Replica("a"), Replica("c")
    a.counter("x").increment(3)  # "x" is a PNCounter, first written at a:1
    a.gcounter("g").increment(2)
    a.register("r").set("one")
    a.mvregister("v").set(1.5)
    for v in (None, True, 7, -2.5, "two", b"\x00\xff"):
        a.set("s").add(v)
    a.flag("f").enable()
    m = a.map("m")
    m.counter("n").increment(4)
    m.register("f").set(b"bytes")
    m.set("tags").add("t")
    m.map("inner").flag("on").enable()
    first = a.outgoing()
    a.counter("x").decrement(1)
    a.set("s").remove("two")
    a.flag("f").disable()
    a.map("m").remove("n")  # a map remove with counter floors
    second = a.outgoing()
    a.heartbeat()
    beat = a.outgoing()
    a.register("r").set("later")
    later = a.outgoing()
    for msg in first:
        c.receive(msg)
    c.mvregister("v").set("c1")
    c_first = c.outgoing()
    c.set("s").add("c2")
    c_second = c.outgoing()
    c.heartbeat(retired=True)
    c_retired = c.outgoing()
    delivered = [*first, *second, *beat]
    return {
        "delivered": delivered,  # what target() has received from a
        "later": later,  # a's next message, not delivered to target()
        "held": c_second,  # delivered to target() without c_first: waits
        "c_first": c_first,
        "valid": [*delivered, *later, *c_first, *c_second, *c_retired],
    }


def _last_seq(msgs: Iterable[bytes]) -> int:
    last = 0
    for m in msgs:
        env = pb.Envelope.FromString(m)
        if env.WhichOneof("body") == "batch":
            last = max(last, env.batch.first_seq + len(env.batch.ops) - 1)
    return last


def target() -> Replica:
    """A replica ``b`` with state, a held batch and unsent local operations."""
    h = history()
    b = Replica("b")
    for msg in h["delivered"]:
        b.receive(msg)
    for msg in h["held"]:
        b.receive(msg)
    b.counter("x").increment(10)
    b.set("s").add("mine")
    b.outgoing()
    b.flag("unsent").enable()  # stays in the snapshot's unsent batch
    assert b.buffered > 0
    return b


def a_seq() -> int:
    """The last sequence number of ``a`` that target() has delivered."""
    return _last_seq(history()["delivered"])


# ---------------------------------------------------------------- sanity of the helpers


def test_target_has_the_expected_history() -> None:
    b = target()
    state = b.state()
    assert state["x"] == 12
    assert state["s"] == frozenset({None, True, 7, -2.5, b"\x00\xff", "mine"})
    assert b.clock["a"] == a_seq() > 1
    assert "c" not in b.clock


def test_crafted_valid_message_is_accepted() -> None:
    b = target()
    b.receive(batch([counter_add(["fresh"], p=5), register_set(["reg"], pb_value("v"))]))
    b.receive(heartbeat("z", [("z", 2)]))
    assert b.state()["fresh"] == 5
    assert b.state()["reg"] == "v"
    assert b.clock["z"] == 2


# ---------------------------------------------------------------- random and mangled bytes


@HYPOTHESIS
@given(st.binary(max_size=300))
def test_random_bytes_raise_invalid_message_or_are_valid(data: bytes) -> None:
    receive_or_reject(target(), data)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff" * 16, b"\x08\x01", b"\x08\x02",
                                  b"\x12\x00", b"\x08\x01\x12\x00", b"\x0a", b"\x08\x01\x1a\x00",
                                  b"\x08\x01\x12\x05", b"garbage that is not protobuf"])
def test_explicit_garbage_is_rejected(data: bytes) -> None:
    assert_rejected(target(), data)


@pytest.mark.parametrize("data", ["a string", None, 42, [b"\x08\x01"]])
def test_non_bytes_is_rejected(data: Any) -> None:
    assert_rejected(target(), data, reason="not-bytes")


def test_every_truncation_of_a_valid_message_is_rejected() -> None:
    b = target()
    checked = 0
    for msg in history()["valid"]:
        for cut in range(len(msg)):
            assert_rejected(b, msg[:cut])
            checked += 1
    assert checked > 300


def test_every_single_bit_flip_raises_invalid_message_or_is_valid() -> None:
    accepted = rejected = 0
    b = target()
    for msg in history()["valid"]:
        for bit in range(len(msg) * 8):
            flipped = bytearray(msg)
            flipped[bit // 8] ^= 1 << (bit % 8)
            if receive_or_reject(b, bytes(flipped)):
                accepted += 1
                b = target()
            else:
                rejected += 1
    assert rejected > 0
    assert accepted > 0  # e.g. a flipped bit inside a value is still a valid message


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    valid = history()["valid"]
    msg = bytearray(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["xor", "insert", "delete", "splice"]))
        pos = draw(st.integers(0, len(msg)))
        if action == "xor" and pos < len(msg):
            msg[pos] ^= draw(st.integers(1, 255))
        elif action == "insert":
            msg[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del msg[pos:pos + draw(st.integers(1, 4))]
        else:
            other = draw(st.sampled_from(valid))
            start = draw(st.integers(0, len(other)))
            msg[pos:] = other[start:]
    return bytes(msg)


@HYPOTHESIS
@given(mangled())
def test_mangled_valid_messages_raise_invalid_message_or_are_valid(data: bytes) -> None:
    receive_or_reject(target(), data)


# ---------------------------------------------------------------- crafted invalid messages


def _nan() -> pb.Value:
    return pb_value(math.nan)


def _deep(n: int) -> list[str]:
    return [f"k{i}" for i in range(n)]


def _unknown_action_op() -> bytes:
    # An Operation with a field number this version does not know (a newer sender's
    # action): protobuf keeps it as an unknown field, so no action is set.
    op = pb.Operation(path=["k"], type=pb.OBJ_TYPE_PNCOUNTER).SerializeToString()
    op += b"\xfa\x07\x02\x08\x01"  # field 127, length-delimited, 2 bytes: {1: 1}
    inner = pb.Batch(origin="z", first_seq=1).SerializeToString()
    inner += b"\x22" + bytes([len(op)]) + op  # Batch.ops (field 4)
    return b"\x08\x01\x12" + bytes([len(inner)]) + inner  # Envelope{version: 1, batch}


def _floor_of_type(type_: int) -> pb.Operation:
    op = map_remove([], "m", seen={"a": 1})
    f = op.map_remove.counters.add()
    f.path.append("n")
    f.type = type_
    f.origin = "a"
    f.p = 1
    return op


def _value_with_nothing() -> pb.Value:
    return pb.Value()


MAX = 2**63 - 1

CRAFTED: list[tuple[str, Callable[[], Any], str]] = [
    # the envelope
    ("version-0", lambda: batch([counter_add(["k"])], version=0), "bad-version"),
    ("version-2", lambda: batch([counter_add(["k"])], version=2), "bad-version"),
    ("version-max", lambda: batch([counter_add(["k"])], version=2**32 - 1), "bad-version"),
    ("heartbeat-version-2", lambda: heartbeat("z", [("z", 1)], version=2), "bad-version"),
    ("no-body", lambda: pb.Envelope(version=1).SerializeToString(), "empty-message"),
    ("empty-batch", lambda: batch([]), "empty-batch"),
    # ids and sequence numbers
    ("empty-origin", lambda: batch([counter_add(["k"])], origin=""), "bad-id"),
    ("long-origin", lambda: batch([counter_add(["k"])], origin="o" * 257), "bad-id"),
    ("heartbeat-empty-origin", lambda: heartbeat("", [("z", 1)]), "bad-id"),
    ("first-seq-0", lambda: batch([counter_add(["k"])], first_seq=0), "bad-seq"),
    ("first-seq-2^63", lambda: batch([counter_add(["k"])], first_seq=2**63), "bad-seq"),
    ("first-seq-2^64-1", lambda: batch([counter_add(["k"])], first_seq=2**64 - 1), "bad-seq"),
    ("last-seq-overflows", lambda: batch([counter_add(["k"]), counter_add(["k"])],
                                         first_seq=MAX), "bad-seq"),
    ("dep-seq-2^63", lambda: batch([counter_add(["k"])], deps=[("a", 2**63)]), "bad-seq"),
    ("dep-empty-replica", lambda: batch([counter_add(["k"])], deps=[("", 1)]), "bad-id"),
    ("dep-twice", lambda: batch([counter_add(["k"])], deps=[("a", 1), ("a", 1)]), "bad-clock"),
    ("heartbeat-seq-2^63", lambda: heartbeat("z", [("z", 2**63)]), "bad-seq"),
    ("heartbeat-seq-2^64-1", lambda: heartbeat("z", [("y", 2**64 - 1)]), "bad-seq"),
    ("dot-seq-0", lambda: batch([flag_enable(["fl"], observed=[("a", 0)])]), "bad-seq"),
    ("dot-seq-2^63", lambda: batch([flag_enable(["fl"], observed=[("a", 2**63)])]), "bad-seq"),
    ("dot-empty-replica", lambda: batch([flag_enable(["fl"], observed=[("", 1)])]), "bad-id"),
    ("remove-seen-2^63", lambda: batch([map_remove([], "m", seen={"a": 2**63})]), "bad-seq"),
    # operations
    ("no-action", lambda: batch([pb.Operation(path=["k"], type=pb.OBJ_TYPE_PNCOUNTER)]),
     "unknown-operation"),
    ("newer-action", _unknown_action_op, "unknown-operation"),
    ("type-unspecified", lambda: batch([counter_add(["k"], type_=pb.OBJ_TYPE_UNSPECIFIED)]),
     "bad-type"),
    ("type-99", lambda: batch([counter_add(["k"], type_=99)]), "bad-type"),
    ("counter-add-on-lww", lambda: batch([counter_add(["k"], type_=pb.OBJ_TYPE_LWW_REGISTER)]),
     "wrong-type"),
    ("counter-add-on-map", lambda: batch([counter_add(["k"], type_=pb.OBJ_TYPE_ORMAP)]),
     "wrong-type"),
    ("register-set-on-set", lambda: batch([register_set(["k"], pb_value(1),
                                                        type_=pb.OBJ_TYPE_ORSET)]),
     "wrong-type"),
    ("set-add-on-flag", lambda: batch([set_add(["k"], pb_value(1), type_=pb.OBJ_TYPE_EWFLAG)]),
     "wrong-type"),
    ("flag-on-counter", lambda: batch([flag_enable(["k"], type_=pb.OBJ_TYPE_GCOUNTER)]),
     "wrong-type"),
    ("map-remove-on-counter", lambda: batch([map_remove(["k"], "f",
                                                        type_=pb.OBJ_TYPE_PNCOUNTER)]),
     "wrong-type"),
    ("gcounter-decrement", lambda: batch([counter_add(["k"], p=0, n=1,
                                                      type_=pb.OBJ_TYPE_GCOUNTER)]),
     "wrong-type"),
    ("gcounter-add-and-decrement", lambda: batch([counter_add(["k"], p=5, n=1,
                                                              type_=pb.OBJ_TYPE_GCOUNTER)]),
     "wrong-type"),
    ("increment-2^63", lambda: batch([counter_add(["k"], p=2**63)]), "bad-amount"),
    ("decrement-2^64-1", lambda: batch([counter_add(["k"], p=0, n=2**64 - 1)]), "bad-amount"),
    ("floor-of-register", lambda: batch([_floor_of_type(pb.OBJ_TYPE_LWW_REGISTER)]),
     "wrong-type"),
    ("floor-of-unknown-type", lambda: batch([_floor_of_type(42)]), "bad-type"),
    # values
    ("register-value-unset", lambda: batch([register_set(["k"], None)]), "bad-value"),
    ("register-value-empty", lambda: batch([register_set(["k"], _value_with_nothing())]),
     "bad-value"),
    ("mvregister-nan", lambda: batch([register_set(["k"], _nan(),
                                                   type_=pb.OBJ_TYPE_MV_REGISTER)]),
     "bad-value"),
    ("register-nan", lambda: batch([register_set(["k"], _nan())]), "bad-value"),
    ("register-timestamp-2^63", lambda: batch([register_set(["k"], pb_value(1),
                                                            timestamp=2**63)]),
     "bad-timestamp"),
    ("register-timestamp-2^64-1", lambda: batch([register_set(["k"], pb_value(1),
                                                              timestamp=2**64 - 1)]),
     "bad-timestamp"),
    ("set-element-unset", lambda: batch([set_add(["k"], None)]), "bad-value"),
    ("set-element-nan", lambda: batch([set_add(["k"], _nan())]), "bad-value"),
    # paths
    ("register-empty-path", lambda: batch([register_set([], pb_value(1))]), "bad-path"),
    ("counter-empty-path", lambda: batch([counter_add([])]), "bad-path"),
    ("flag-empty-path", lambda: batch([flag_enable([])]), "bad-path"),
    ("empty-name", lambda: batch([register_set(["m", ""], pb_value(1))]), "bad-path"),
    ("path-33-deep", lambda: batch([register_set(_deep(33), pb_value(1))]), "bad-path"),
    ("map-remove-no-field", lambda: batch([map_remove([], "")]), "bad-path"),
    # one bad operation spoils the whole batch
    ("bad-op-after-good-ones", lambda: batch([counter_add(["k"]), set_add(["s2"], pb_value(1)),
                                              register_set([], pb_value(1))]), "bad-path"),
]


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in CRAFTED],
                         ids=[i for i, _, _ in CRAFTED])
def test_crafted_invalid_message_is_rejected(make: Callable[[], Any], reason: str) -> None:
    err = assert_rejected(target(), make(), reason=reason)
    assert not isinstance(err, TypeConflict)


def test_path_of_32_levels_is_accepted() -> None:
    b = target()
    b.receive(batch([register_set(_deep(32), pb_value(1))]))
    obj: Any = b.state()
    for name in _deep(31):
        obj = obj[name]
    assert obj == {"k31": 1}


def test_boundary_amounts_and_seqs_are_accepted() -> None:
    b = target()
    b.receive(batch([counter_add(["big"], p=MAX, n=MAX)]))
    assert b.state()["big"] == 0
    held = b.buffered
    b.receive(batch([counter_add(["k"])], first_seq=MAX))  # valid; waits for z's 2..MAX-1
    assert b.buffered == held + 1
    assert b.missing()["z"] == (2, MAX - 1)
    b.receive(batch([counter_add(["k"])], origin="o" * 256, deps=[("a", 1)]))
    assert b.clock["o" * 256] == 1


def test_the_greatest_timestamp_is_accepted_and_then_a_write_is_refused_cleanly() -> None:
    """2^63-1 is a valid timestamp; after it, no assignment can win over it, so a local
    assignment is refused with ValueError and nothing changes (before, it was applied
    and then its message could never be encoded: the replica's outbox was stuck)."""
    b = target()
    b.receive(batch([register_set(["top"], pb_value(1), timestamp=MAX)]))
    assert b.state()["top"] == 1
    b.outgoing()  # what it had written before
    before, seq = fingerprint(b), b.own_seq
    with pytest.raises(ValueError, match="no timestamp left"):
        b.register("reg").set("later")
    assert fingerprint(b) == before and b.own_seq == seq and b.outgoing() == []
    b.counter("c").increment()  # what needs no timestamp is still written and sent
    assert b.outgoing()


# ---------------------------------------------------------------- type conflicts


def _register_on_x(**kw: Any) -> bytes:
    return batch([register_set(["x"], pb_value("not a counter"))], **kw)


def test_origin_that_saw_a_counter_cannot_write_it_as_register() -> None:
    b = target()
    err = assert_rejected(b, _register_on_x(origin="a", first_seq=a_seq() + 1), TypeConflict)
    assert err.reason == "type-conflict"
    assert isinstance(err, TypeError)


def test_a_refused_batch_under_the_replica_s_own_origin_claims_nothing() -> None:
    """A batch of the replica's own origin read back (from the group's history) tells it
    which operations it had published (:meth:`Replica.unmet_claims`); one refused was
    taken as such a claim all the same, and the replica would then wait for operations
    nobody has before it wrote again."""
    b = target()
    assert_rejected(b, _register_on_x(origin="b", first_seq=b.own_seq + 1), TypeConflict)
    assert b.unmet_claims() == {}


def test_origin_whose_deps_include_the_counter_cannot_write_it_as_register() -> None:
    b = target()
    assert_rejected(b, _register_on_x(origin="w", deps=[("a", 1)]), TypeConflict,
                    reason="type-conflict")
    assert_rejected(b, _register_on_x(origin="w", deps=[("a", a_seq())]), TypeConflict)


NESTED: dict[str, Callable[[], pb.Operation]] = {
    "nested-counter-on-register": lambda: counter_add(["m", "f"]),
    "counter-as-map": lambda: flag_enable(["x", "sub"]),
    "map-as-register": lambda: register_set(["m"], pb_value(1)),
    "set-on-flag": lambda: set_add(["m", "inner", "on"], pb_value(1)),
    "flag-as-map": lambda: counter_add(["m", "inner", "on", "deeper"]),
    "map-remove-on-register": lambda: map_remove(["r"], "f"),
    "gcounter-on-pncounter": lambda: counter_add(["x"], type_=pb.OBJ_TYPE_GCOUNTER),
}


@pytest.mark.parametrize("op", list(NESTED.values()), ids=list(NESTED))
def test_nested_type_conflicts(op: Callable[[], pb.Operation]) -> None:
    assert_rejected(target(), batch([op()], origin="w", deps=[("a", a_seq())]), TypeConflict,
                    reason="type-conflict")


def test_deps_seen_in_an_earlier_batch_of_the_origin_still_count() -> None:
    # Batches carry only the dependency entries that grew since the origin's last
    # batch: w's second batch names no deps, but w had seen a's counter "x".
    b = target()
    b.receive(batch([counter_add(["elsewhere"])], origin="w", deps=[("a", 1)]))
    second = _register_on_x(origin="w", first_seq=2)
    assert_rejected(b, second, TypeConflict, reason="type-conflict")
    restored = Replica.from_snapshot(b.snapshot())
    assert_rejected(restored, second, TypeConflict, reason="type-conflict")
    fresh = _register_on_x(origin="v", first_seq=1)  # v had seen nothing: concurrent
    restored.receive(fresh)
    assert restored.clock["v"] == 1


def test_conflicting_op_after_valid_ops_in_one_batch_rejects_the_whole_batch() -> None:
    b = target()
    assert_rejected(b, batch([counter_add(["fine"]), set_add(["s"], pb_value("ok")),
                              register_set(["x"], pb_value(1))],
                             origin="a", first_seq=a_seq() + 1), TypeConflict)


def test_origin_that_had_not_seen_the_counter_may_write_another_type() -> None:
    # Concurrent writes of one name with two types are not a conflict at delivery.
    b = target()
    b.receive(_register_on_x(origin="w"))
    assert b.clock["w"] == 1


@pytest.mark.parametrize("ops", [
    lambda: [counter_add(["new"]), register_set(["new"], pb_value(1))],
    lambda: [set_add(["new"], pb_value(1)), flag_enable(["new"])],
    lambda: [counter_add(["nm", "a"]), register_set(["nm"], pb_value(1))],
    lambda: [register_set(["nm", "a", "b"], pb_value(1)), counter_add(["nm", "a"])],
    lambda: [counter_add(["new"]), counter_add(["new"], type_=pb.OBJ_TYPE_GCOUNTER)],
], ids=["counter+register", "set+flag", "map+register", "map+counter-nested",
        "pn+g-counter"])
def test_batch_writing_one_name_with_two_types(ops: Callable[[], list[pb.Operation]]) -> None:
    assert_rejected(target(), batch(ops()), TypeConflict, reason="type-conflict")


def test_batch_writing_one_name_twice_with_one_type_is_fine() -> None:
    b = target()
    b.receive(batch([counter_add(["new"]), counter_add(["new"], p=2),
                     register_set(["nm", "a"], pb_value(1)), counter_add(["nm", "b"])]))
    assert b.state()["new"] == 3
    assert b.state()["nm"] == {"a": 1, "b": 1}


def test_conflicting_batch_that_waited_is_rejected_when_it_becomes_deliverable() -> None:
    h = history()
    b, ref = target(), target()
    b.receive(_register_on_x(origin="w", deps=[("a", a_seq() + 1)]))  # waits for a's next
    assert b.buffered == ref.buffered + 1
    for msg in h["later"]:
        b.receive(msg)
        ref.receive(msg)
    assert b.stats["rejected"] == 1
    assert [(o, s, r) for o, s, r in b.rejected] == [("w", 1, "type-conflict")]
    assert b.state() == ref.state()
    assert b.buffered == ref.buffered
    assert "w" not in b.clock


# ---------------------------------------------------------------- the local API


def test_local_handle_of_another_type_raises_type_conflict() -> None:
    b = target()  # "x" is a counter from a, "m" a map, "m"/"f" a register
    for make in (lambda: b.register("x"), lambda: b.map("x"), lambda: b.gcounter("x"),
                 lambda: b.set("m"), lambda: b.map("m").counter("f"),
                 lambda: b.map("x").flag("y"), lambda: b.counter("r")):
        before = fingerprint(b)
        with pytest.raises(TypeConflict) as info:
            make()
        assert info.value.reason == "type-conflict"
        assert fingerprint(b) == before


def test_local_handle_of_another_type_on_own_key() -> None:
    r = Replica("r")
    r.counter("x").increment()
    r.map("m").counter("n").increment()
    before = fingerprint(r)
    with pytest.raises(TypeConflict):
        r.register("x")
    with pytest.raises(TypeConflict):
        r.register("m")
    with pytest.raises(TypeConflict):
        r.map("m").register("n")
    assert fingerprint(r) == before
    assert r.counter("x").value == 1


BAD_VALUES = [[], [1], {}, {"a": 1}, {1}, math.nan, -math.nan, 2**63, -(2**63) - 1, 2**100,
              object(), bytearray(b"x"), 1 + 2j, (1, 2), frozenset()]
SETTERS: dict[str, Callable[[Replica, Any], None]] = {
    "register": lambda r, v: r.register("r").set(v),
    "mvregister": lambda r, v: r.mvregister("v").set(v),
    "set-add": lambda r, v: r.set("s").add(v),
    "set-remove": lambda r, v: r.set("s").remove(v),
    "map-register": lambda r, v: r.map("m").register("f").set(v),
}


@pytest.mark.parametrize("setter", list(SETTERS.values()), ids=list(SETTERS))
@pytest.mark.parametrize("value", BAD_VALUES, ids=[repr(v)[:20] for v in BAD_VALUES])
def test_unsupported_values_raise_invalid_value(setter: Callable[[Replica, Any], None],
                                               value: Any) -> None:
    b = target()
    before = fingerprint(b)
    with pytest.raises(InvalidValue):
        setter(b, value)
    assert fingerprint(b) == before


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), math.inf, -math.inf, -0.0, "", b"",
                                   None, False, "ünïcødé ✓"])
def test_boundary_values_are_replicated(value: Any) -> None:
    a, b = Replica("a"), Replica("b")
    a.register("r").set(value)
    a.set("s").add(value)
    for msg in a.outgoing():
        b.receive(msg)
    assert b.state() == a.state()
    assert b.register("r").value == value
    assert type(b.register("r").value) is type(value)


AMOUNTS: list[tuple[str, Callable[[Replica], None], type[Exception]]] = [
    ("increment(-1)", lambda r: r.counter("x").increment(-1), ValueError),
    ("decrement(-1)", lambda r: r.counter("x").decrement(-1), ValueError),
    ("gcounter.increment(-1)", lambda r: r.gcounter("g").increment(-1), ValueError),
    ("increment(2**63)", lambda r: r.counter("x").increment(2**63), ValueError),
    ("decrement(2**64)", lambda r: r.counter("x").decrement(2**64), ValueError),
    ("increment(1.0)", lambda r: r.counter("x").increment(1.0), TypeError),  # type: ignore[arg-type]
    ("increment('1')", lambda r: r.counter("x").increment("1"), TypeError),  # type: ignore[arg-type]
    ("increment(True)", lambda r: r.counter("x").increment(True), TypeError),
]


@pytest.mark.parametrize(("call", "exc"), [(c, e) for _, c, e in AMOUNTS],
                         ids=[i for i, _, _ in AMOUNTS])
def test_bad_counter_amounts_raise_and_change_nothing(call: Callable[[Replica], None],
                                                      exc: type[Exception]) -> None:
    b = target()
    before = fingerprint(b)
    with pytest.raises(exc):
        call(b)
    assert fingerprint(b) == before


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_key_names_raise_value_error(name: Any) -> None:
    b = target()
    before = fingerprint(b)
    with pytest.raises(ValueError):
        b.counter(name)
    with pytest.raises(ValueError):
        b.map("m").register(name)
    assert fingerprint(b) == before


# ------------------------------------------- local operations whose message others reject
# A local operation the API accepts must produce a message every replica accepts
# (else the origin diverges from the group for good, or outgoing() breaks).

SURROGATE = "\ud800"  # a lone surrogate: a Python str that is not encodable as UTF-8


@pytest.mark.parametrize("setter", list(SETTERS.values()), ids=list(SETTERS))
@pytest.mark.parametrize("text", [SURROGATE, "ok" + SURROGATE, "\udfff"])
def test_unencodable_str_value_raises_invalid_value(setter: Callable[[Replica, Any], None],
                                                    text: str) -> None:
    b = target()
    before = fingerprint(b)
    with pytest.raises(InvalidValue):
        setter(b, text)
    assert fingerprint(b) == before
    b.outgoing()  # still works


KEY_USES: dict[str, Callable[[Replica], Any]] = {
    "key": lambda r: r.counter(SURROGATE).increment(),
    "field": lambda r: r.map("m").register(SURROGATE).set(1),
    "nested-map": lambda r: r.map(SURROGATE).flag("f").enable(),
    "remove": lambda r: r.remove(SURROGATE),
}


@pytest.mark.parametrize("use", list(KEY_USES.values()), ids=list(KEY_USES))
def test_unencodable_key_name_is_refused(use: Callable[[Replica], Any]) -> None:
    b = target()
    before = fingerprint(b)
    with contextlib.suppress(ValueError, InvalidValue):
        use(b)  # must raise: had it gone through, the state would have changed
    assert fingerprint(b) == before
    b.outgoing()  # still works


def test_unencodable_replica_id_is_refused() -> None:
    with pytest.raises((ValueError, InvalidValue)):
        Replica("r" + SURROGATE)


def _refused(call: Callable[[], Any], r: Replica) -> bool:
    """Run a local operation; if it raises ValueError, nothing may have changed."""
    before = fingerprint(r)
    try:
        call()
    except ValueError:
        assert fingerprint(r) == before
        return True
    return False


def test_counter_total_beyond_2_63_is_refused_or_replicated() -> None:
    a, b = Replica("a"), Replica("b")
    for _ in range(3):
        _refused(lambda: a.counter("x").increment(MAX), a)
        _refused(lambda: a.counter("y").decrement(MAX), a)
        _refused(lambda: a.gcounter("g").increment(MAX), a)
    for msg in a.outgoing():
        b.receive(msg)
    assert b.state() == a.state()
    a.remove("x")
    a.remove("y")
    a.remove("g")
    for msg in a.outgoing():  # encodable, and every replica takes it
        b.receive(msg)
    assert b.state() == a.state() == {}


def test_remote_counter_total_beyond_2_63_cannot_make_a_remove_unsendable() -> None:
    # Each remote op is valid on its own; the origin's running total passes 2^63-1.
    b, c = Replica("b"), Replica("c")
    big = [batch([counter_add(["big"], p=MAX, n=MAX)], first_seq=i) for i in (1, 2, 3)]
    for msg in big:
        b.receive(msg)
        c.receive(msg)
    assert b.state() == c.state()
    b.remove("big")
    for msg in b.outgoing():
        c.receive(msg)
    assert b.state() == c.state() == {}


def test_path_deeper_than_the_wire_allows_is_refused_locally_or_accepted_remotely() -> None:
    for depth in (31, 32, 33, 40):
        a, b = Replica("a"), Replica("b")

        def write(a: Replica = a, depth: int = depth) -> None:
            h = a.map("k0")
            for i in range(1, depth - 1):
                h = h.map(f"k{i}")
            h.flag("f").enable()  # a path of `depth` names

        refused = _refused(write, a)
        assert refused == (depth > 32)
        for msg in a.outgoing():
            b.receive(msg)
        assert b.state() == a.state()
