"""Causal delivery: vector clocks and the buffer of operations that arrived early."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping

from crdt_ops.clock import Clock
from crdt_ops.errors import BufferFull, WaitingCapReached
from crdt_ops.ops import Batch


class CausalBuffer:
    """Delivers batches of operations in causal order, each operation once.

    Guarantees: a batch is released only when every operation its origin had
    delivered (``deps``) and every earlier operation of the origin have been
    delivered (of its channel: :mod:`crdt_ops.subgroups`; the origin's id in a group
    without sub-groups, and the clock's entries are channels); operations already
    delivered are skipped, so any message may arrive any number of times, in any order.
    A replica id never seen before is simply a new clock entry. A waiting batch is
    filed under the one condition it waits on, so a delivery wakes only the batches it
    may unblock.
    At most ``max_ops`` operations wait; one more raises :class:`BufferFull`.
    At most ``max_per_origin`` operations of one origin wait (default: no bound
    but ``max_ops``); one more raises :class:`WaitingCapReached` (a
    :class:`BufferFull`), so an origin whose gap never fills (a hostile sender
    announcing seq 2**63) holds a bounded share of the buffer. A refused batch
    changes nothing: the buffer is exactly as it was before ``hold``.
    """

    def __init__(self, clock: Clock | None = None, max_ops: int = 100_000,
                 max_per_origin: int | None = None) -> None:
        if max_per_origin is not None and max_per_origin < 1:
            raise ValueError("max_per_origin must be at least 1")
        self.clock: Clock = clock if clock is not None else {}
        self.max_ops = max_ops
        self.max_per_origin = max_ops if max_per_origin is None else max_per_origin
        self._per_origin: dict[str, int] = {}
        self._ids = itertools.count()
        self._waiting: dict[int, Batch] = {}
        self._by_start: dict[tuple[str, int], int] = {}
        self._waiters: dict[str, list[tuple[int, int]]] = {}
        self._ready: list[int] = []
        self._held_ops = 0

    def __len__(self) -> int:
        """Operations waiting."""
        return self._held_ops

    def is_duplicate(self, batch: Batch) -> bool:
        return batch.last_seq <= self.clock.get(batch.channel, 0)

    def unmet(self, batch: Batch) -> tuple[str, int] | None:
        """The first condition ``batch`` still waits on: (replica, seq needed)."""
        clock = self.clock
        if clock.get(batch.channel, 0) < batch.first_seq - 1:
            return (batch.channel, batch.first_seq - 1)
        for r, s in batch.deps.items():
            if clock.get(r, 0) < s:
                return (r, s)
        return None

    def hold(self, batch: Batch) -> bool:
        """Keep a batch that is not deliverable yet (``unmet(batch)`` is not None).
        Returns False when an equal or longer batch from the same start waits already."""
        key = (batch.channel, batch.first_seq)
        old = self._by_start.get(key)
        replaced = 0
        if old is not None:
            replaced = len(self._waiting[old].ops)
            if replaced >= len(batch.ops):
                return False
        n = len(batch.ops)
        if self._held_ops - replaced + n > self.max_ops:
            raise BufferFull(
                f"causal buffer holds {self._held_ops} operations (max {self.max_ops}); "
                f"batch {batch.channel}:{batch.first_seq} with {n} more was refused")
        mine = self._per_origin.get(batch.origin, 0)
        if mine - replaced + n > self.max_per_origin:
            raise WaitingCapReached(
                batch.origin, self.unmet(batch),
                f"causal buffer holds {mine} operations of {batch.origin} (max "
                f"{self.max_per_origin} per origin); batch {batch.channel}:{batch.first_seq} "
                f"with {n} more was refused")
        if old is not None:
            self._forget(old)
        bid = next(self._ids)
        self._waiting[bid] = batch
        self._by_start[key] = bid
        self._held_ops += n
        self._per_origin[batch.origin] = self._per_origin.get(batch.origin, 0) + n
        self._file(bid, batch)
        return True

    def _file(self, bid: int, batch: Batch) -> None:
        cond = self.unmet(batch)
        if cond is None:
            self._ready.append(bid)
        else:
            heapq.heappush(self._waiters.setdefault(cond[0], []), (cond[1], bid))

    def _forget(self, bid: int) -> Batch:
        batch = self._waiting.pop(bid)
        del self._by_start[(batch.channel, batch.first_seq)]
        self._held_ops -= len(batch.ops)
        left = self._per_origin[batch.origin] - len(batch.ops)
        if left:
            self._per_origin[batch.origin] = left
        else:
            del self._per_origin[batch.origin]
        return batch

    def delivered(self, origin: str, seq: int) -> None:
        """Record that ``origin``'s operations up to ``seq`` are delivered, and
        move the batches that waited on exactly that to the ready list."""
        if seq <= self.clock.get(origin, 0):
            return
        self.clock[origin] = seq
        heap = self._waiters.get(origin)
        while heap and heap[0][0] <= seq:
            _, bid = heapq.heappop(heap)
            batch = self._waiting.get(bid)
            if batch is not None:
                self._file(bid, batch)
        if heap is not None and not heap:
            del self._waiters[origin]

    def pop_ready(self) -> Batch | None:
        """A held batch that is now deliverable, or None."""
        while self._ready:
            bid = self._ready.pop()
            if bid in self._waiting:
                return self._forget(bid)
        return None

    def waiting_per_origin(self) -> dict[str, int]:
        """Per origin, the operations of its batches that wait (origins with none omitted)."""
        return dict(self._per_origin)

    def waiting(self) -> Iterator[Batch]:
        """The batches held, in arrival order."""
        return iter(list(self._waiting.values()))

    def holes(self, upto: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """Per channel of ``upto``, the run from its first to its last sequence number up
        to ``upto[channel]`` that is neither delivered nor held here (first..last,
        inclusive), channels without one left out: what to ask a sender for. Batches held
        between two holes fall inside the run (asked for again, they are dropped as
        duplicates), so every hole of a channel is asked for at once; what is held at
        either end is not. One pass over the batches held."""
        out: dict[str, tuple[int, int]] = {}
        for ch, last in upto.items():
            first = self.clock.get(ch, 0) + 1
            while (bid := self._by_start.get((ch, first))) is not None:
                first = self._waiting[bid].last_seq + 1
            if first <= last:
                out[ch] = (first, last)
        if out and self._waiting:
            above: dict[str, list[tuple[int, int]]] = {}
            for b in self._waiting.values():
                span = out.get(b.channel)
                if span is not None and span[0] < b.first_seq <= span[1]:
                    above.setdefault(b.channel, []).append((b.first_seq, b.last_seq))
            for ch, held in above.items():
                first, last = out[ch]
                for a, z in sorted(held, reverse=True):  # from the top down
                    if z < last:
                        break
                    last = min(last, a - 1)
                out[ch] = (first, last)
        return out

    def missing(self) -> dict[str, tuple[int, int]]:
        """Per replica, the inclusive range of sequence numbers that held batches
        wait for and that have not been delivered (for anti-entropy)."""
        need: dict[str, int] = {}
        for batch in self._waiting.values():
            wants: Mapping[str, int] = dict(batch.deps, **{batch.channel: batch.first_seq - 1})
            for r, s in wants.items():
                if s > self.clock.get(r, 0) and s > need.get(r, 0):
                    need[r] = s
        return {r: (self.clock.get(r, 0) + 1, s) for r, s in sorted(need.items())}
