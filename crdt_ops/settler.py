"""Which fields to settle, and when: a queue of the paths operations wrote.

A field can settle (:meth:`crdt_ops.types.ORMap.settle`) once every update to it is
covered by the compaction frontier. Every operation applied here that writes a path
adds ``(path, seq)`` to its origin's queue; an origin's queue is in seq order, so the
frontier (which only grows) releases a prefix of it. :meth:`Settler.settle` pops the
released entries and tries to settle each path bottom-up (the field, then the maps
above it, each freezing once all its fields are settled). A path that cannot settle
yet because of another origin's update is tried again when that update's entry is
released; one that never can (a removed field, one written with two types) is
dropped. So the work is proportional to the operations that became stable, never to
the size of the state, and a call can be bounded (``limit``) to keep it short.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping

from crdt_ops.types import ORMap
from crdt_ops.types.settled import is_frozen


class Settler:
    """Per origin, the paths its operations wrote that are not settled yet."""

    __slots__ = ("_queues", "_size")

    def __init__(self) -> None:
        self._queues: dict[str, deque[tuple[tuple[str, ...], int]]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def note(self, path: tuple[str, ...], origin: str, seq: int) -> None:
        """Operation ``(origin, seq)`` wrote ``path`` (seqs of one origin come in order)."""
        q = self._queues.get(origin)
        if q is None:
            q = self._queues[origin] = deque()
        q.append((path, seq))
        self._size += 1

    def settle(self, root: ORMap, frontier: Mapping[str, int], limit: int | None = None) -> int:
        """Try to settle the paths of the entries ``frontier`` covers, at most ``limit``
        entries (all when None); returns how many were taken."""
        taken = 0
        for origin in list(self._queues):
            q = self._queues[origin]
            top = frontier.get(origin, 0)
            while q and q[0][1] <= top:
                if limit is not None and taken >= limit:
                    return taken
                path, _ = q.popleft()
                self._size -= 1
                taken += 1
                settle_path(root, path, frontier)
            if not q:
                del self._queues[origin]
        return taken


def settle_path(root: ORMap, path: tuple[str, ...], frontier: Mapping[str, int]) -> None:
    """Settle the field at ``path``, then each map above it, deepest first, stopping at
    the first that cannot settle yet."""
    levels: list[tuple[ORMap, str]] = []
    m: object = root
    for name in path:
        if not isinstance(m, ORMap):
            break  # a frozen map: everything below is settled already
        levels.append((m, name))
        m = m.child(name)
        if m is None:
            break
    for parent, name in reversed(levels):
        if not parent.settle(name, frontier):
            return


def live_paths(root: ORMap) -> Iterator[tuple[tuple[str, ...], str, int]]:
    """``(path, origin, seq)`` for every update recorded by a live field anywhere under
    ``root`` (to queue after loading a snapshot)."""
    stack: list[tuple[ORMap, tuple[str, ...]]] = [(root, ())]
    while stack:
        m, prefix = stack.pop()
        for name, e in m.settled.items():
            if isinstance(e, ORMap) and not is_frozen(e):
                stack.append((e, (*prefix, name)))
        for name, typed in m.fields.items():
            path = (*prefix, name)
            for f in typed.values():
                for o, s in {**f.first, **f.presence}.items():
                    yield path, o, s
                if isinstance(f.obj, ORMap):
                    stack.append((f.obj, path))
