"""The core's API misused: a clear error where the mistake is made, nothing changed."""

from __future__ import annotations

from typing import Any

import pytest

from crdt_ops import NotAMember, Replica


@pytest.mark.parametrize(("prefix", "callback", "says"), [
    (None, print, "prefix must be a str"),
    (b"containers/", print, "prefix must be a str"),
    ("", 5, "callback must be callable"),
])
def test_a_bad_subscription_is_refused_at_once(prefix: Any, callback: Any, says: str) -> None:
    """It used to be taken, then broke every later write and delivery with a TypeError."""
    a, b = Replica("a"), Replica("b")
    with pytest.raises(TypeError, match=says):
        a.subscribe(prefix, callback)
    a.counter("c").increment()  # writes and deliveries go on
    b.counter("c").increment()
    for m in b.outgoing():
        a.receive(m)
    assert a.counter("c").value == 2


def test_writing_before_membership_says_how_to_become_a_member() -> None:
    r = Replica("r", members=["a", "b"])
    with pytest.raises(NotAMember, match=r"await the node's start\(\).*found\(\) or join"):
        r.counter("c").increment()
    assert r.state() == {}


@pytest.mark.parametrize("key", [5, "", None, b"k"])
def test_removing_a_key_no_object_can_have_is_refused(key: Any) -> None:
    """As a handle refuses it: ``remove(5)`` used to do nothing, silently."""
    r = Replica("r")
    r.counter("c").increment()
    with pytest.raises(ValueError, match="keys and field names are non-empty str"):
        r.remove(key)
    with pytest.raises(ValueError, match="keys and field names are non-empty str"):
        r.map("m").remove(key)
    assert r.state() == {"c": 1}


@pytest.mark.parametrize(("call", "says"), [
    (lambda r: r.items(5), "prefix must be a str"),
    (lambda r: r.keys(None), "prefix must be a str"),
    (lambda r: r.items(after=3), "after must be a key"),
    (lambda r: r.keys("", after=b"k"), "after must be a key"),
])
def test_a_scan_with_a_prefix_or_cursor_that_is_no_key_says_so(call: Any, says: str) -> None:
    r = Replica("r")
    r.counter("c").increment()
    with pytest.raises(TypeError, match=says):
        call(r)


def test_an_enum_member_is_written_as_the_plain_value_every_replica_reads() -> None:
    """The wire carries no class: the writer reads what its peers read."""
    import enum

    class Colour(str, enum.Enum):  # noqa: UP042 (the mix-in whose str() is "Colour.RED")
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    a, b = Replica("a"), Replica("b")
    a.register("colour").set(Colour.RED)
    a.register("level").set(Level.HIGH)
    a.set("s").add(Level.HIGH)
    for m in a.outgoing():
        b.receive(m)
    for r in (a, b):
        assert type(r.get("colour")) is str and r.get("colour") == "red"
        assert type(r.get("level")) is int and r.get("level") == 3
        assert [type(v) for v in r.get("s")] == [int]
    assert a.state() == b.state()


def test_an_empty_message_is_named_so() -> None:
    from crdt_ops import InvalidMessage

    r = Replica("r")
    with pytest.raises(InvalidMessage) as info:
        r.receive(b"")
    assert (info.value.reason, "no bytes at all" in str(info.value)) == ("empty-message", True)


@pytest.mark.parametrize(("wall", "error", "says"), [
    (lambda: 1.7e18, TypeError, r"wall clock returned .* \(float\); it must return an int"),
    (lambda: True, TypeError, r"\(bool\); it must return an int"),
    (lambda: 2**63, ValueError, "no timestamp left: .* the wall clock is that far ahead"),
])
def test_a_wall_clock_of_the_wrong_kind_is_refused_before_anything_is_applied(
        wall: Any, error: type[Exception], says: str) -> None:
    """``wall_clock=time.time`` (seconds, a float) used to be applied locally, then its
    message could never be encoded: every later write of the replica was stuck."""
    r = Replica("r", wall_clock=wall)
    with pytest.raises(error, match=says):
        r.register("reg").set(1)
    assert r.state() == {} and r.own_seq == 0 and r.outgoing() == []
    r.counter("c").increment()  # a counter takes no timestamp
    assert r.state() == {"c": 1} and len(r.outgoing()) == 1


@pytest.mark.parametrize("members", ["ab", b"ab"])
def test_members_given_as_one_string_are_refused(members: Any) -> None:
    """``members="ab"`` was read as the two founders "a" and "b"."""
    with pytest.raises(TypeError, match=r"members must be a collection of replica ids, "
                                        r"such as \["):
        Replica("a", members=members)


def test_members_that_are_not_ids_are_refused() -> None:
    with pytest.raises(TypeError, match=r"members must be replica ids \(str\), not 5"):
        Replica("a", members=["a", 5])
