"""Sending another replica's operations again when their sender does not: repair by any
holder, for a sender gone for good (crashed with its disk, retired) or one that no longer
keeps what a peer asks for.

A replica that waits for operations the group's stream lost asks their sender in its
heartbeats (:mod:`crdt_ops.transport.resend` is the sender's side). Every member hears
the request. One that delivered those operations logged the messages that brought them
(until its next snapshot drops its log), and can publish them again: the replicas that
have them drop them as duplicates, the one that asked applies them. This is the repair
of SRM (Floyd et al., "A Reliable Multicast Framework for Light-weight Sessions", 1997),
where any member that holds what was lost may answer, and members hold back so that
one answers, not all. Here the hold-back is deterministic, not random: the sender has
the first ``patience_s`` (it answers on its next heartbeat tick); then the holders
(:meth:`Replica.holders <crdt_ops.replica.Replica.holders>`, sorted by id, the asker and
the sender left out), the ``k``-th of them once the request is ``(k + 1) * patience_s``
old. A request answered stops (the asker asks only for what it still lacks), so a later
holder finds nothing left to answer.

A relayed message is the original's bytes, published with the relayer's own ``user_id``
(and signature, if it signs): it is accepted only where that does not matter
(:func:`~crdt_ops.transport.auth.may_relay`), and a replica that may not relay never
does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from crdt_ops.clock import Spans, few, widen
from crdt_ops.subgroups import split
from crdt_ops.transport import metrics
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.store import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class _Request:
    """What is asked of one channel, since when (``first``), when it was last heard, and
    when this replica last relayed it (seconds, the caller's monotonic clock)."""

    span: tuple[int, int]
    askers: set[str]
    first: float
    heard: float
    relayed: float | None = None


class Relayer:
    """Relays from ``durable``'s log what peers ask other senders for, when those do not
    send it (:meth:`tick`, every heartbeat). ``patience_s``: how long the sender, and then
    each holder before this one, is given (the group's ``--gap-timeout-s``). Sans-IO
    about time: ``now`` is handed in (seconds, any monotonic clock)."""

    def __init__(self, durable: DurableReplica, patience_s: float) -> None:
        self.durable = durable
        self.patience_s = patience_s
        self._requests: dict[str, _Request] = {}  # channel -> what is asked of it
        #: others' messages published again since this process started
        self.relayed = 0

    def tick(self, now: float) -> None:
        """Take the requests heard since the last tick, forget those no longer heard (the
        asker has what it asked for, or stopped), and relay what is due. Does nothing
        while the store fails (the peers ask again)."""
        replica = self.durable.replica
        asked, who = replica.asked_of_others()
        for ch, span in asked.items():
            req = self._requests.get(ch)
            if req is None:
                self._requests[ch] = _Request(span, set(who), now, now)
            else:
                merged = {ch: req.span}
                widen(merged, ch, *span)
                req.span, req.heard = merged[ch], now
                req.askers |= who
        for ch in [ch for ch, r in self._requests.items() if now - r.heard > self.patience_s]:
            del self._requests[ch]
        if self.durable.store_failure is not None:
            return
        due: Spans = {}
        for ch, req in self._requests.items():
            if req.relayed is not None and now - req.relayed < self.patience_s:
                continue
            holders = [r for r in replica.holders(ch, req.span[0])
                       if r not in req.askers and r != split(ch)[0]]
            if replica.replica_id not in holders:
                continue
            if now - req.first >= (holders.index(replica.replica_id) + 1) * self.patience_s:
                due[ch] = req.span
        if due:
            self._relay(due, now)

    def _relay(self, due: Spans, now: float) -> None:
        durable = self.durable
        try:
            n = durable.store.relay(due)
        except StoreUnavailable as e:
            log.debug("replica %s: the store failed while relaying (%s); the peers ask "
                      "again", durable.replica_id, e)
            return
        askers: set[str] = set()
        for ch in due:
            self._requests[ch].relayed = now
            askers |= self._requests[ch].askers
        if not n:
            return
        self.relayed += n
        metrics.RELAYED.labels(durable.replica_id, durable.settings.group).inc(n)
        asker = ", ".join(sorted(askers)[:5]) + (" and others" if len(askers) > 5 else "")
        log.warning("replica %s: %s asked for operations %s, which their sender did not "
                    "send again; publishing %d messages of them again from its log",
                    durable.replica_id, asker, few(due), n)
        durable.outbox_ready.set()


__all__ = ["Relayer"]
