"""Dots and vector clocks.

A dot ``(replica, seq)`` names the ``seq``-th operation issued by ``replica``
(sequence numbers start at 1). A vector clock maps replica ids to the highest
sequence number delivered from each; a missing entry means 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Dot = tuple[str, int]
Clock = dict[str, int]
#: Per replica (or channel), a range of its sequence numbers, first..last inclusive.
Spans = dict[str, tuple[int, int]]


def covers(clock: Mapping[str, int], dot: Dot) -> bool:
    """True when the operation ``dot`` is included in ``clock``."""
    return clock.get(dot[0], 0) >= dot[1]


def dominates(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    """True when ``a`` has seen everything ``b`` has (a >= b pointwise)."""
    return all(a.get(r, 0) >= s for r, s in b.items())


def merge_into(target: dict[str, int], other: Mapping[str, int]) -> bool:
    """Raise ``target`` pointwise to ``other``; return whether anything changed."""
    changed = False
    for r, s in other.items():
        if s > target.get(r, 0):
            target[r] = s
            changed = True
    return changed


def pointwise_min(clocks: Iterable[Mapping[str, int]], members: Iterable[str]) -> Clock:
    """The clock every one of ``clocks`` has reached, over ``members``.

    Costs O(len(smallest clock) x len(clocks)), not O(members x clocks): an entry
    missing from any clock is 0, so only the smallest clock's entries can be
    non-zero (a forged clock naming thousands of replicas costs nothing here)."""
    clocks = list(clocks)
    if not clocks:
        return {}
    smallest = min(clocks, key=len)
    wanted = set(members)
    out: Clock = {}
    for r in smallest:
        if r in wanted:
            low = min(c.get(r, 0) for c in clocks)
            if low:
                out[r] = low
    return out


def widen(spans: Spans, channel: str, first: int, last: int) -> None:
    """Make ``spans[channel]`` cover ``first..last`` too (the smallest range holding both)."""
    old = spans.get(channel)
    spans[channel] = (first, last) if old is None else (min(first, old[0]), max(last, old[1]))


def few(spans: Spans, most: int = 5) -> str:
    """``spans`` (replica: first..last seq) for a log line, at most ``most`` of them."""
    text = ", ".join(f"{r[:64]} {a}..{b}" for r, (a, b) in list(spans.items())[:most])
    return text + (f" and {len(spans) - most} more" if len(spans) > most else "")
