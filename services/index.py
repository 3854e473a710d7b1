"""The container records logic decides from, kept from change events.

Logic must not read every record of the platform for each change (issue 13: the cost of a
Start grew with the number of records). :class:`ContainerIndex` keeps, from the replica's
change events (one per changed record, with its new value), what a placement decision
needs, so that one decision costs what the change touches:

- ``records``: every container record, as :class:`~services.model.Container`;
- ``on_at[(node, epoch)]``: the records that should run and are assigned to that node
  under that epoch of its lease (a node's load, once the epoch is known to be live);
- ``owner_on[owner]``: the records of an owner that should run (its count against the
  quota);
- ``unassigned_on``: records that should run and name no node (or no epoch);
- ``rejected``: records that show a ``rejected_reason`` (it must be cleared once it no
  longer holds).

:meth:`ContainerIndex.changed` applies one change event; a *full pass* rebuilds it from
every record of the replica: :meth:`~ContainerIndex.load` in one go, or
:meth:`~ContainerIndex.reload` in slices of :data:`SLICE_KEYS` keys, yielding to the event
loop between slices (what the services run, at start and as a safety net once a minute:
at 50,000 records a pass in one go would hold the loop for a second or more). The two
agree after any sequence of changes, and a sliced pass interleaved with changes ends equal
to a full pass (tests/services/test_index.py). :class:`NodeRecords` does the same for a
worker: the records assigned to its node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, Self

from crdt_ops.events import ChangeEvent
from services import model

log = logging.getLogger("services.index")

Placement = tuple[str, str]  # (node, epoch)


class Scannable(Protocol):
    """What a full pass reads records from: a replica, the groups a process holds, or
    the joined container records (services/containers.py)."""

    def items(self, prefix: str = "", *, after: str | None = None,
              limit: int | None = None) -> list[tuple[str, Any]]: ...

#: Keys a sliced full pass (:meth:`ContainerIndex.reload`, :meth:`NodeRecords.reload`) reads
#: before it yields to the event loop (1-2 ms of work on the development machines).
SLICE_KEYS = 100
#: Entries a full pass compares at the end (the view kept from events against the one it
#: built) before it yields to the event loop.
CHECK_KEYS = 2_000


@dataclass
class _Kept:
    """What :class:`ContainerIndex` and :class:`NodeRecords` share: a view of the container
    records kept from change events (:meth:`changed`, :meth:`put`), and the full pass that
    rebuilds it from the replica (:meth:`load` in one go, :meth:`reload` in slices)."""

    #: the records kept: container id -> its record
    records: dict[str, model.Container] = field(default_factory=dict, kw_only=True)
    #: a full pass has completed (before that the view may lack records)
    loaded: bool = field(default=False, kw_only=True)
    #: where the records are: ``containers/`` (logic's joined records) or a cell's
    #: placements (a worker's)
    prefix: str = field(default=model.CONTAINERS, kw_only=True)
    #: while :meth:`reload` runs: the view it builds (changes go to both)
    _shadow: _Kept | None = field(default=None, init=False, repr=False, compare=False)

    def put(self, key: str, value: Any) -> None:
        """Record ``key`` (under ``prefix``) as having the plain value ``value``
        (None or an empty or non-map value: no record)."""
        raise NotImplementedError

    def _empty(self) -> Self:
        raise NotImplementedError

    def changed(self, event: ChangeEvent) -> None:
        """Apply a change event of a key under ``prefix`` (to the pass under way too)."""
        self.put(event.key, event.new)
        if self._shadow is not None:
            self._shadow.put(event.key, event.new)

    def load(self, replica: Scannable) -> None:
        """Rebuild from every record of ``replica`` under ``prefix``, in one go."""
        fresh = self._empty()
        for key, value in replica.items(self.prefix):
            fresh.put(key, value)
        self._adopt(fresh)

    async def reload(self, replica: Scannable, *, slice_keys: int = SLICE_KEYS,
                     check_keys: int = CHECK_KEYS) -> int:
        """Rebuild from every container record of ``replica`` in slices of ``slice_keys``
        keys (in key order, from a cursor: ``Replica.items(after=, limit=)``), yielding to
        the event loop between slices; returns the *drift*: how many entries the view kept
        from events had wrong (records that differed, were missing or were extra, and
        members of the derived sets of a :class:`ContainerIndex` that were missing, extra
        or different). Meaningless for the first pass (the view was empty).

        The view is usable meanwhile: it is still kept from events, and replaced by the
        rebuilt one at the end. The rebuilt one reads each record from the replica when
        its slice runs and takes every change event from then on (:meth:`changed` feeds
        both), so a record changed during the pass is never set back to what the pass
        read before. Comparing the two at the end is sliced too (``check_keys`` entries
        at a time). Cancelling it leaves the view as kept from events. One pass
        at a time (RuntimeError otherwise)."""
        if slice_keys < 1 or check_keys < 1:
            raise ValueError(f"slice_keys and check_keys must be at least 1, not "
                             f"{slice_keys} and {check_keys}")
        if self._shadow is not None:
            raise RuntimeError("a full pass is already under way")
        shadow = self._empty()
        self._shadow = shadow
        drift = 0
        after: str | None = None
        start = len(self.prefix)
        try:
            while True:
                page = replica.items(self.prefix, after=after, limit=slice_keys)
                for key, value in page:
                    shadow.put(key, value)
                    cid = key[start:]
                    new, kept = shadow.records.get(cid), self.records.get(cid)
                    if new != kept:
                        drift += 1
                    elif new is not None and kept is not None:
                        shadow.records[cid] = kept  # equal: keep one copy
                if len(page) < slice_keys:
                    break
                after = page[-1][0]
                await asyncio.sleep(0)
            # The shadow now holds what the replica holds, and takes the same changes as
            # the view: what differs between them is drift (records: only those the view
            # has beyond the replica; the others were compared above).
            drift += await _differing(self.records, shadow.records, values=False,
                                      chunk=check_keys)
            for f in fields(self):
                if f.name not in _NOT_DERIVED:
                    drift += await _differing(getattr(self, f.name), getattr(shadow, f.name),
                                              chunk=check_keys)
            replaced = [getattr(self, f.name) for f in fields(self) if f.name != "_shadow"]
            self._adopt(shadow)
        finally:
            self._shadow = None
        await _release(replaced, check_keys)  # freeing 50,000 entries at once takes ms
        return drift

    def _adopt(self, other: Self) -> None:
        """Take ``other``'s content (a completed full pass)."""
        for f in fields(self):
            if f.name != "_shadow":
                setattr(self, f.name, getattr(other, f.name))
        self.loaded = True


#: The fields of a view that are not derived sets (a full pass compares those at the end).
_NOT_DERIVED = frozenset({"records", "loaded", "prefix", "_shadow", "node"})


async def _differing(kept: dict[Any, Any] | set[Any], built: dict[Any, Any] | set[Any], *,
                     values: bool = True, chunk: int = CHECK_KEYS) -> int:
    """How many keys (or members) ``kept`` has that ``built`` lacks, or (a dict, with
    ``values``) holds another value for (for a large set, each member that differs), plus
    how many ``built`` has beyond ``kept``: about ``chunk`` at a time, yielding to the
    event loop between chunks. Both may change meanwhile, alike (change events go to
    both): a key gone from ``kept`` is skipped."""
    keys = list(kept)
    missing = differ = 0
    compare = values and isinstance(kept, dict) and isinstance(built, dict)
    for i in range(0, len(keys), chunk):
        if i:
            await asyncio.sleep(0)
        for k in keys[i:i + chunk]:
            if k not in kept:
                continue
            if k not in built:
                missing += 1
            elif compare:
                a, b = kept[k], built[k]  # type: ignore[index]
                if isinstance(a, set) and isinstance(b, set) and len(a) > chunk:
                    await asyncio.sleep(0)
                    differ += await _differing(a, b, chunk=chunk)
                elif a != b:
                    differ += 1
    beyond = len(built) - (len(kept) - missing)
    return missing + differ + max(0, beyond)


async def full_passes(view: _Kept, replica: Scannable, *, every_s: float, wake: asyncio.Event,
                      name: str) -> None:
    """Keep ``view`` (named ``name`` in the log) rebuilt from ``replica``: a sliced full
    pass (:meth:`_Kept.reload`) now, then one every ``every_s`` seconds (the safety net),
    until cancelled; ``wake`` is set after each pass. Its service decides from ``view`` only
    once ``view.loaded`` (until the first pass is done the view may lack records) and
    meanwhile keeps serving (heartbeats, its other work). The first pass's length is
    logged, and drift found later as a warning (the view had missed changes); a pass that
    fails is logged and tried again a second later."""
    while True:
        first = not view.loaded
        t0 = time.monotonic()
        try:
            drift = await view.reload(replica)
        except Exception:
            log.exception("%s: the full pass failed; trying again in 1 s", name)
            await asyncio.sleep(1.0)
            continue
        wake.set()
        if first:
            log.info("%s: %d records loaded in %.2fs (a full pass in slices of %d keys)",
                     name, len(view.records), time.monotonic() - t0, SLICE_KEYS)
        elif drift:
            log.warning("%s: the full pass found %d entries that differed from the replica "
                        "(changes the view missed); rebuilt", name, drift)
        await asyncio.sleep(every_s)


async def _release(replaced: list[Any], chunk: int) -> None:
    """Empty the dicts and sets of a view that was replaced (nothing else holds them), about
    ``chunk`` entries at a time, yielding to the event loop between chunks."""
    for x in replaced:
        while isinstance(x, dict | set) and x:
            await asyncio.sleep(0)
            take = x.popitem if isinstance(x, dict) else x.pop
            for _ in range(min(chunk, len(x))):
                take()


@dataclass
class ContainerIndex(_Kept):
    """Container records and the sets logic decides from (see the module docstring)."""

    on_at: dict[Placement, set[str]] = field(default_factory=dict)
    owner_on: dict[str | None, set[str]] = field(default_factory=dict)
    unassigned_on: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)
    unsynced: set[str] = field(default_factory=set)

    def _empty(self) -> Self:
        return type(self)(prefix=self.prefix)

    def put(self, key: str, value: Any) -> None:
        """Record ``key`` (``containers/<id>``) as having the joined value ``value``
        (None or an empty or non-map value: no record)."""
        cid = key[len(model.CONTAINERS):]
        old = self.records.pop(cid, None)
        if old is not None:
            self._drop(old)
        if isinstance(value, dict) and value:
            self._add(model.Container.of(key, value))

    def pending(self, live_epochs: dict[str, str | None]) -> list[str]:
        """The records a decision may change, in id order: those that should run and are
        not placed on a live epoch (``live_epochs``: node -> its live epoch), and those
        showing a reason, and those whose placement's copies are behind. Every other
        record needs no write."""
        out = set(self.unassigned_on) | self.rejected | self.unsynced
        for (node, epoch), cids in self.on_at.items():
            if live_epochs.get(node) != epoch:
                out |= cids
        return sorted(out)

    def placed_count(self, cids: Iterable[str], live_epochs: dict[str, str | None]) -> int:
        """How many of ``cids`` are placed on the live epoch of their node."""
        n = 0
        for cid in cids:
            c = self.records[cid]
            if c.assigned_node is not None and c.assigned_epoch is not None \
                    and live_epochs.get(c.assigned_node) == c.assigned_epoch:
                n += 1
        return n

    def _add(self, c: model.Container) -> None:
        self.records[c.id] = c
        if c.rejected_reason is not None:
            self.rejected.add(c.id)
        if c.unsynced:
            self.unsynced.add(c.id)
        if c.power_desired != "on":
            return
        self.owner_on.setdefault(c.owner, set()).add(c.id)
        if c.assigned_node is None or c.assigned_epoch is None:
            self.unassigned_on.add(c.id)
        else:
            self.on_at.setdefault((c.assigned_node, c.assigned_epoch), set()).add(c.id)

    def _drop(self, c: model.Container) -> None:
        self.rejected.discard(c.id)
        self.unsynced.discard(c.id)
        if c.power_desired != "on":
            return
        _discard(self.owner_on, c.owner, c.id)
        if c.assigned_node is None or c.assigned_epoch is None:
            self.unassigned_on.discard(c.id)
        else:
            _discard(self.on_at, (c.assigned_node, c.assigned_epoch), c.id)


def _discard(sets: dict[Any, set[str]], key: Any, cid: str) -> None:
    members = sets.get(key)
    if members is not None:
        members.discard(cid)
        if not members:
            del sets[key]


@dataclass
class NodeRecords(_Kept):
    """The placements assigned to one node (``records``: container id -> its view), under
    its prefix (``prefix``: :func:`model.placements <services.model.placements>`), kept
    from change events like :class:`ContainerIndex`: what a worker reconciles its runtime
    with, without reading every record of its cell."""

    node: str

    def _empty(self) -> Self:
        return type(self)(self.node, prefix=self.prefix)

    def put(self, key: str, value: Any) -> None:
        """Record ``key`` (a placement) as having the plain value ``value``: kept when it
        is assigned to this node, else dropped."""
        cid = key[len(self.prefix):]
        if isinstance(value, dict) and value and value.get("assigned_node") == self.node:
            self.records[cid] = model.Container.of(key, value)
        else:
            self.records.pop(cid, None)
