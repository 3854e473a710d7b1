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
