"""Sub-groups: partial replication within one group, by key. Sans-IO.

A group (one exchange, one membership: :mod:`crdt_ops.routing`) can be split further
into *sub-groups*, so that a replica that needs a few keys only (a worker node: its own
node's records) receives and holds those only. A :class:`SubGroups` rule, declared once
and the same at every replica of the group (like the write policy), says

* which sub-group each top-level key belongs to: a list of *key templates*, each a
  ``/``-separated pattern whose segments are literal, ``*`` (any one segment) or ``{}``
  (any one segment without ``#``, ``*`` or spaces, which names the sub-group); a key
  whose first segments match a template belongs to the sub-group its ``{}`` segment names,
  the first template that matches wins, and a key no template matches belongs to the
  group's *common part*
  (the sub-group ``""``);
* which replicas hold which sub-groups: a list of *holder templates*, principals with one
  ``{}`` segment (``worker.{}``); a replica belonging to such a principal
  (:func:`crdt_ops.policy.belongs`) holds the sub-group that segment names and the common
  part; every other replica holds every sub-group.

A replica numbers its operations *per sub-group*: each (replica, sub-group) pair is a
causal *channel* with sequence numbers of its own, named by :func:`channel`
(``<replica>#<sub-group>``; the common part's channel is the replica id itself), and a
batch carries operations of one sub-group only and depends on the entries of its own
sub-group and of the common part only. So a replica that does not hold a sub-group sees
no gap where that sub-group's operations went, and the causal buffer, dots, CRDTs and
causal stability work over channels as they work over replicas. What holds:

* within a sub-group (with the common part), everything that holds within a group:
  operations are delivered in causal order, a ``write()`` block's operations on the
  sub-group are applied atomically, causal stability waits for every member that holds
  the sub-group;
* across sub-groups nothing is ordered, as across groups: a block that writes the common
  part and a sub-group is two atomic parts, the common one sent first; a replica holding
  both may apply an operation of one before an earlier operation of the other it read.

The channel separator ``#`` may not appear in replica ids or sub-group names of a group
that has sub-groups (group names exclude it too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

V = TypeVar("V")

#: Separates a replica id from its sub-group in a channel's name.
SEP = "#"
#: The common part: the sub-group of every key no template matches, held by every replica.
COMMON = ""
_SEGMENT = r"[^/]+"
_NAME = r"[^/#*\s]+"


def channel(replica_id: str, subgroup: str) -> str:
    """The causal channel of ``replica_id``'s operations on ``subgroup``: the replica id
    for the common part, else ``<replica id>#<sub-group>``."""
    return replica_id if subgroup == COMMON else f"{replica_id}{SEP}{subgroup}"


def split(name: str) -> tuple[str, str]:
    """``(replica id, sub-group)`` of a channel's name (:func:`channel`)."""
    replica_id, _, subgroup = name.partition(SEP)
    return replica_id, subgroup


def channels_of(clock: Mapping[str, int], replica_id: str) -> dict[str, int]:
    """The entries of ``clock`` (channel -> seq) of ``replica_id``'s own channels."""
    head = replica_id + SEP
    return {c: s for c, s in clock.items() if c == replica_id or c.startswith(head)}


def _key_pattern(template: str) -> re.Pattern[str]:
    parts = template.split("/")
    if not all(parts) or parts.count("{}") != 1 or any(
            SEP in p or ("{" in p and p != "{}") or ("*" in p and p != "*") for p in parts):
        raise ValueError(f"a sub-group key template is '/'-separated segments, each literal "
                         f"(no '#', '{{', '*'), '*' or '{{}}', with '{{}}' exactly once: "
                         f"{template!r}")
    out = [f"(?P<name>{_NAME})" if p == "{}" else _SEGMENT if p == "*" else re.escape(p)
           for p in parts]
    return re.compile("/".join(out) + "(?:/|$)")


def _holder_pattern(template: str) -> re.Pattern[str]:
    head, brace, tail = template.partition("{}")
    if not brace or "{}" in tail or not head or any(c in template for c in " /#*"):
        raise ValueError(f"a sub-group holder template is a principal with '{{}}' once (as "
                         f"'worker.{{}}'), without spaces, '/', '#' or '*': {template!r}")
    return re.compile(rf"{re.escape(head)}(?P<name>[^./#*\s]+){re.escape(tail)}")


class SubGroups:
    """The sub-group rule of a group (see the module docstring): ``keys``, the key
    templates in order; ``holders``, the holder templates. ``SubGroups()`` (:data:`NONE`):
    no sub-groups, every key in the common part, every replica holding all of it, and
    the channels are the replica ids. Raises ValueError for a malformed template."""

    def __init__(self, keys: Sequence[str] = (), holders: Sequence[str] = ()) -> None:
        self.keys = tuple(keys)
        self.holders = tuple(holders)
        self._keys = [_key_pattern(t) for t in self.keys]
        self._holders = [_holder_pattern(t) for t in self.holders]
        self._held: dict[str, str | None] = {}

    def __bool__(self) -> bool:
        """Whether the group has sub-groups at all."""
        return bool(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubGroups) and (self.keys, self.holders) == \
            (other.keys, other.holders)

    def __hash__(self) -> int:
        return hash((self.keys, self.holders))

    def __repr__(self) -> str:
        return f"SubGroups(keys={self.keys!r}, holders={self.holders!r})"

    def of_key(self, key: str) -> str:
        """The sub-group of top-level key ``key`` (:data:`COMMON`: the common part)."""
        for pattern in self._keys:
            m = pattern.match(key)
            if m is not None:
                return m.group("name")
        return COMMON

    def held_by(self, replica_id: str) -> str | None:
        """The one sub-group ``replica_id`` holds (besides the common part), or None when it
        holds every sub-group."""
        try:
            return self._held[replica_id]
        except KeyError:
            pass
        # the principals it belongs to (crdt_ops.policy.belongs): itself, and each prefix
        # that ends before a dot
        principals = [replica_id[:i] for i, c in enumerate(replica_id) if c == "."]
        held = next((m.group("name") for pattern in self._holders
                     for principal in (*principals, replica_id)
                     if (m := pattern.fullmatch(principal)) is not None), None)
        if len(self._held) < 100_000:  # (replica ids of one group: a few thousand)
            self._held[replica_id] = held
        return held

    def holds(self, replica_id: str, subgroup: str) -> bool:
        """Whether ``replica_id`` holds ``subgroup``."""
        if subgroup == COMMON:
            return True
        held = self.held_by(replica_id)
        return held is None or held == subgroup

    def held_state(self, state: Mapping[str, V], replica_id: str) -> dict[str, V]:
        """The entries of ``state`` (a replica's state, or any mapping by top-level key)
        that ``replica_id`` holds: what a replica holding every sub-group and one holding
        some have in common once both delivered the same operations."""
        return {k: v for k, v in state.items() if self.holds(replica_id, self.of_key(k))}

    def held_clock(self, clock: Mapping[str, int], replica_id: str) -> dict[str, int]:
        """The entries of ``clock`` (channels: :func:`channel`) that ``replica_id``
        holds."""
        return {c: s for c, s in clock.items() if self.holds(replica_id, split(c)[1])}

    def check_id(self, replica_id: str) -> None:
        """Raise ValueError if ``replica_id`` cannot name channels of this group (it holds
        :data:`SEP` while the group has sub-groups)."""
        if self and SEP in replica_id:
            raise ValueError(f"a replica id of a group with sub-groups may not contain "
                             f"{SEP!r}: {replica_id!r}")


#: No sub-groups: everything in the common part.
NONE = SubGroups()

__all__ = ["COMMON", "NONE", "SEP", "SubGroups", "channel", "channels_of", "split"]
