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
old (a turn lasts :data:`SETTLE_HEARTBEATS` heartbeats at least), and only if it was
still heard that many heartbeats after the turn before its own began (the sender's, or
the holder's before it): a request answered stops
(the asker asks only for what it still lacks, in its next heartbeat), so a later holder
finds it no longer heard and stays silent. A holder relays again, each ``patience_s`` at
most, only while the request is heard that long after its own relay. Holders that know
different reports (who holds what, who asked) may take the same turn: the cost is a few
messages sent twice, which every replica drops as duplicates.

A relayed message is the original's bytes, published with the relayer's own ``user_id``
(and signature, if it signs): it is accepted only where that does not matter
(:func:`~crdt_ops.transport.auth.may_relay`), and a replica that may not relay never
does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from crdt_ops.clock import Spans, few
from crdt_ops.subgroups import split
from crdt_ops.transport import metrics
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.store import MAX_KEPT_SENT, StoreUnavailable

log = logging.getLogger(__name__)

#: Heartbeats after a turn began (the sender's, a holder's, a relay of this replica's)
#: during which the request may still be heard though that turn answered it: the
#: answerer's next tick, the asker's next heartbeat, and the tick of this replica's that
#: takes it in, each up to a quarter late (:func:`~crdt_ops.transport.waiting.jittered`)
#: but the last two together not much more than two periods.
SETTLE_HEARTBEATS = 3.0
#: The most messages one relay of one channel publishes (the asker asks again for the
#: rest, once it has these): as many as a sender keeps to send again at most
#: (:data:`~crdt_ops.transport.store.MAX_KEPT_SENT`).
MAX_RELAYED = MAX_KEPT_SENT


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
    each holder before this one, is given (the group's ``--gap-timeout-s``);
    ``heartbeat_s``: the group's heartbeat period (how soon an answered request stops
    being heard). Sans-IO about time: ``now`` is handed in (seconds, any monotonic
    clock)."""

    def __init__(self, durable: DurableReplica, patience_s: float, heartbeat_s: float) -> None:
        self.durable = durable
        self.patience_s = patience_s
        self.settle_s = SETTLE_HEARTBEATS * heartbeat_s
        #: how long a turn lasts (the sender's, each holder's), and a request not heard
        #: for longer is forgotten: a turn is answered within ``settle_s``
        self._turn_s = max(patience_s, self.settle_s)
        self._requests: dict[str, _Request] = {}  # channel -> what is asked of it
        #: others' messages published again since this process started
        self.relayed = 0

    def tick(self, now: float) -> None:
        """Take the requests heard since the last tick, forget those no longer heard (the
        asker has what it asked for, or stopped), and relay what is due. Does nothing
        while the store fails (the peers ask again)."""
        replica = self.durable.replica
        asked, who = replica.asked_of_others()
        for ch, span in asked.items():  # (what is asked now, not what was asked before)
            req = self._requests.get(ch)
            if req is None:
                self._requests[ch] = _Request(span, set(who[ch]), now, now)
            else:
                req.span, req.heard = span, now
                req.askers |= who[ch]
        for ch in [ch for ch, r in self._requests.items() if now - r.heard > self._turn_s]:
            del self._requests[ch]
        if self.durable.store_failure is not None:
            return
        due: Spans = {}
        for ch, req in self._requests.items():
            if req.relayed is not None:  # again, if what it relayed did not answer it
                if now - req.relayed >= self.patience_s \
                        and req.heard >= req.relayed + self.settle_s:
                    due[ch] = req.span
                continue
            holders = [r for r in replica.holders(ch, req.span[0])
                       if r not in req.askers and r != split(ch)[0]]
            if replica.replica_id not in holders:
                continue
            turn = holders.index(replica.replica_id)  # the sender's was turn -1
            if now - req.first >= (turn + 1) * self._turn_s \
                    and req.heard >= req.first + turn * self._turn_s + self.settle_s:
                due[ch] = req.span
        if due:
            self._relay(due, now)

    def _relay(self, due: Spans, now: float) -> None:
        durable = self.durable
        try:
            n = durable.store.relay(due, MAX_RELAYED)
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
