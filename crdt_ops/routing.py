"""Which group holds which key: the routing rule of a platform split into groups (cells).

One group is one fanout exchange: every replica of it receives, applies and stores every
operation of the group (``docs/scaling.md``). A platform too large for that is split into
several groups, and a process holds replicas of the groups it needs only. The split is
*by key*: a :class:`Routing` rule, declared once beside the data model and the same in
every process, says which group a top-level key lives in. A key never changes group; to
move a record, write it under another key (in another group) and remove the old one.

A rule is a default group and a list of *prefix templates*. A template is a key prefix
that may hold ``{}`` once, standing for one path segment (no ``/``); its group may use
the same ``{}``::

    Routing("platform", {"cells/{}/": "cell.{}"})
    # "containers/c1"          -> "platform"
    # "cells/eu1/nodes/n7"     -> "cell.eu1"
    # "cells/eu1"              -> "platform" (the template needs the trailing "/")

The first template that matches wins; a key no template matches lives in the default
group. Group names follow ``--group``'s rule: no spaces, ``/``, ``#`` or ``*``.

:class:`Groups` is the one interface over the replicas a process holds (one
:class:`~crdt_ops.replica.Replica` per group): handles, reads, key scans and change
subscriptions by key, each reaching the replica of the key's group.

What holds where (the same as for one group, per group): operations of one group are
delivered in causal order, and the operations of one ``write()`` block on one group are
applied atomically everywhere (a block that does not await inside, of at most
``--batch-ops`` operations: README, "Several groups in one process"). *Across* groups
nothing is ordered: a replica may see a write to group B before an earlier write to group
A, and a block that writes to two groups is two atomic parts, one per group, not one.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from crdt_ops.events import Callback
from crdt_ops.handles import CounterHandle, Fields, MapHandle, RegisterHandle, Target
from crdt_ops.replica import Replica

#: The placeholder for one key segment in a prefix template and its group.
SEGMENT = "{}"
_FORBIDDEN_IN_GROUP = " /#*"


class NotHeld(KeyError):
    """A key whose group this process holds no replica of (it can neither read nor
    write it here). ``key``, ``group``: the key and its group; ``held``: the groups held."""

    def __init__(self, key: str, group: str, held: Iterable[str]) -> None:
        self.key, self.group, self.held = key, group, tuple(sorted(held))
        super().__init__(f"key {key!r} lives in group {group!r}, which this process does not "
                         f"hold (it holds {', '.join(self.held) or 'none'}); join that group "
                         "or reach a process that holds it")

    def __str__(self) -> str:
        return str(self.args[0])


def _names_a_group(part: str) -> bool:
    """Whether ``part`` may be (part of) a group name: non-empty, none of " /#*"."""
    return bool(part) and not any(c in part for c in _FORBIDDEN_IN_GROUP)


def _check_group(name: str, what: str) -> None:
    if not _names_a_group(name):
        raise ValueError(f"{what} must be a non-empty group name without spaces, '/', '#' "
                         f"or '*'; got {name!r}")


class _Template:
    """One prefix template and its group (see the module docstring)."""

    __slots__ = ("group", "head", "segment", "tail")

    def __init__(self, prefix: str, group: str) -> None:
        if prefix.count(SEGMENT) > 1 or group.count(SEGMENT) > prefix.count(SEGMENT):
            raise ValueError(f"routing template {prefix!r} -> {group!r}: a prefix holds '{{}}' "
                             "at most once, and its group only if the prefix does")
        if not prefix:
            raise ValueError("a routing prefix must not be empty (that is the default group)")
        self.segment = SEGMENT in prefix
        self.head, _, self.tail = prefix.partition(SEGMENT)
        if self.segment and not self.tail:
            raise ValueError(f"routing template {prefix!r}: '{{}}' must be followed by the "
                             "rest of the prefix (at least the '/' that ends the segment)")
        self.group = group
        _check_group(group.replace(SEGMENT, "x"), f"the group of routing prefix {prefix!r}")

    def match(self, key: str) -> str | None:
        """The group of ``key`` if this template matches it, else None."""
        if not key.startswith(self.head):
            return None
        if not self.segment:
            return self.group
        end = key.find(self.tail, len(self.head))
        seg = key[len(self.head):end] if end >= 0 else ""
        if not _names_a_group(seg):  # no "/" either: one segment
            return None
        return self.group.replace(SEGMENT, seg)

    def may_hold(self, prefix: str, group: str) -> bool:
        """Whether ``group`` may hold keys starting with ``prefix`` through this template."""
        if self.segment:
            before, _, after = self.group.partition(SEGMENT)
            if not (group.startswith(before) and group.endswith(after)
                    and len(group) > len(before) + len(after)):
                return False
            concrete = self.head + group[len(before):len(group) - len(after)] + self.tail
        else:
            if group != self.group:
                return False
            concrete = self.head
        return concrete.startswith(prefix) or prefix.startswith(concrete)


class Routing:
    """The rule: the ``default`` group, and ``prefixes`` (prefix template -> group,
    tried in order; see the module docstring). Raises ValueError for a bad template or
    group name. Pure and deterministic: every process must declare the same rule."""

    def __init__(self, default: str, prefixes: Mapping[str, str] | None = None) -> None:
        _check_group(default, "the default group")
        self.default = default
        self._templates = [_Template(p, g) for p, g in (prefixes or {}).items()]

    def group_of(self, key: str) -> str:
        """The group that holds top-level key ``key``."""
        for t in self._templates:
            group = t.match(key)
            if group is not None:
                return group
        return self.default

    def may_hold(self, group: str, prefix: str) -> bool:
        """Whether ``group`` may hold keys that start with ``prefix`` (used to scan and
        subscribe only where such keys can be). Never False for a group that does."""
        if any(t.may_hold(prefix, group) for t in self._templates):
            return True
        if group != self.default:
            return False
        # the default group holds every key no template claims; when one template matches
        # the prefix itself, it matches every key that starts with it, so one template
        # or an earlier one claims each of them
        return not any(t.match(prefix) is not None for t in self._templates)


class Records(Protocol):
    """What a :class:`~crdt_ops.replica.Replica` and :class:`Groups` both offer, for code
    written against either: one group's replica, or the groups a process holds."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def items(self, prefix: str = "", *, after: str | None = None,
              limit: int | None = None) -> list[tuple[str, Any]]: ...

    def keys(self, prefix: str = "", *, after: str | None = None,
             limit: int | None = None) -> list[str]: ...

    def subscribe(self, prefix: str, callback: Callback) -> Callable[[], None]: ...

    def remove(self, key: str) -> None: ...

    def map(self, name: str) -> MapHandle: ...

    def counter(self, name: str) -> CounterHandle: ...

    def register(self, name: str) -> RegisterHandle: ...


class Groups(Fields):
    """The replicas one process holds, one per group (``replicas``: group -> replica),
    routed by ``routing``. Handles (``groups.map(key)`` ...), :meth:`get`, :meth:`items`,
    :meth:`keys`, :meth:`remove` and :meth:`subscribe` reach the replica of each key's
    group; a key of a group not held raises :class:`NotHeld`.

    Sans-IO like :class:`~crdt_ops.replica.Replica`: writing through it applies at once and
    queues each operation in its own group's replica; a transport sends and makes them
    durable (:class:`crdt_ops.transport.amqp.groups.AmqpGroups`)."""

    __slots__ = ("replicas", "routing")

    def __init__(self, routing: Routing, replicas: Mapping[str, Replica]) -> None:
        if not replicas:
            raise ValueError("a process holds at least one group")
        self.routing = routing
        self.replicas = dict(replicas)

    def replica_of(self, key: str) -> Replica:
        """The replica of ``key``'s group; raises :class:`NotHeld` when it is not held."""
        group = self.routing.group_of(key)
        try:
            return self.replicas[group]
        except KeyError:
            raise NotHeld(key, group, self.replicas) from None

    def _at(self, name: str) -> tuple[Target, tuple[str, ...]]:
        return self.replica_of(name), (name,)

    def _under(self, prefix: str) -> list[Replica]:
        return [r for g, r in sorted(self.replicas.items()) if self.routing.may_hold(g, prefix)]

    def remove(self, key: str) -> None:
        """Observed-remove of a top-level key in its group."""
        self.replica_of(key).remove(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The plain value of top-level key ``key`` (raises :class:`NotHeld`), or ``default``."""
        return self.replica_of(key).get(key, default)

    def items(self, prefix: str = "", *, after: str | None = None,
              limit: int | None = None) -> list[tuple[str, Any]]:
        """:meth:`Replica.items <crdt_ops.replica.Replica.items>` over every held group that
        may hold such keys, merged in key order (by code point; a key is in one group
        only). Cost: each group's scan up to ``limit`` keys, then a merge."""
        scans = [r.items(prefix, after=after, limit=limit) for r in self._under(prefix)]
        return _merged(scans, limit, key=lambda kv: kv[0])

    def keys(self, prefix: str = "", *, after: str | None = None,
             limit: int | None = None) -> list[str]:
        """The keys of :meth:`items` (same arguments), without their values."""
        scans = [r.keys(prefix, after=after, limit=limit) for r in self._under(prefix)]
        return _merged(scans, limit, key=lambda k: k)

    def subscribe(self, prefix: str, callback: Callback) -> Callable[[], None]:
        """:meth:`Replica.subscribe <crdt_ops.replica.Replica.subscribe>` in every held group
        that may hold keys starting with ``prefix``; returns one function that
        unsubscribes from all of them."""
        undo = [r.subscribe(prefix, callback) for r in self._under(prefix)]

        def unsubscribe() -> None:
            for u in undo:
                u()
        return unsubscribe


def _merged(scans: list[list[Any]], limit: int | None, key: Callable[[Any], str]) -> list[Any]:
    if len(scans) == 1:
        return scans[0]
    merged: Iterator[Any] = heapq.merge(*scans, key=key)
    return list(merged if limit is None else itertools.islice(merged, max(limit, 0)))
