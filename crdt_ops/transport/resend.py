"""Sending operations again when a peer asks: the sender's side of a gap that the group's
history does not fill.

A replica that waits for operations and does not find them in the group's stream asks
their sender in its heartbeats (:meth:`Replica.ask <crdt_ops.replica.Replica.ask>`). The
stream should hold everything the broker confirmed, but it can miss some: RabbitMQ
streams do not fsync, so an uncontrolled shutdown of a node may lose confirmed data
(RabbitMQ "Streams", Data Safety), and a message routed while the stream's binding was
gone (an exchange deleted and declared again) reached some queues and not the stream.
The sender keeps its confirmed messages of operations in its store's outbox until every
peer has them (:meth:`Store.prune <crdt_ops.transport.store.Store.prune>`), and on a
request makes the ones asked for unconfirmed again, so that its publisher sends them
again (:meth:`Store.resend <crdt_ops.transport.store.Store.resend>`); every replica that
has them drops them as duplicates. This is the negative-acknowledgement repair of
reliable broadcast protocols (e.g. Floyd et al., "A Reliable Multicast Framework for
Light-weight Sessions", SRM, 1997), with the request carried by the clock reports the
replicas send anyway. When the sender does not answer (gone for good, or it no longer
keeps them), a member that delivered them does (:mod:`crdt_ops.transport.relay`).
"""

from __future__ import annotations

import logging

from crdt_ops.clock import Spans, few
from crdt_ops.transport import metrics
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.store import StoreUnavailable

log = logging.getLogger(__name__)


#: :meth:`Resender.tick` prunes the kept messages at least once in this many ticks.
PRUNE_EVERY_TICKS = 30


class Resender:
    """Answers what peers ask of ``durable``'s replica (:meth:`tick`, every heartbeat):
    publishes the operations again, a channel at most once per ``patience_s`` seconds
    (the requester asks in each heartbeat until it has them), and drops from the kept
    messages what every peer has. Sans-IO about time: ``now`` is handed in (seconds, any
    monotonic clock)."""

    def __init__(self, durable: DurableReplica, patience_s: float) -> None:
        self.durable = durable
        self.patience_s = patience_s
        self._sent_at: dict[str, float] = {}  # channel -> when it was last sent again
        self._held: dict[str, int] | None = None  # what the last prune dropped up to
        self._ticks = 0
        self._gone_said: dict[str, tuple[int, int]] = {}  # asked for, no longer kept: said
        #: messages made unconfirmed again since this process started
        self.resent = 0

    def tick(self, now: float) -> None:
        """Send again what was asked for since the last tick, and prune. Does nothing
        while the store fails (the peers ask again)."""
        durable = self.durable
        asked, who = durable.replica.asked()
        if durable.store_failure is not None:
            return
        due: Spans = {ch: span for ch, span in asked.items()
                      if now - self._sent_at.get(ch, -self.patience_s) >= self.patience_s}
        try:
            if due:
                self._resend(due, who, now)
            held = durable.replica.held_by_peers()
            self._ticks += 1
            # when what every member has moved, and now and then anyway: the bound on what
            # is kept holds also while a member is silent, and in an open group
            if held != self._held or self._ticks % PRUNE_EVERY_TICKS == 0:
                durable.store.prune(held)
                self._held = held
        except StoreUnavailable as e:
            log.debug("replica %s: the store failed while sending again or pruning (%s); "
                      "the peers ask again", durable.replica_id, e)

    def _resend(self, due: Spans, who: set[str], now: float) -> None:
        durable = self.durable
        n = durable.store.resend(due)
        for ch in due:
            self._sent_at[ch] = now
        self.resent += n
        metrics.RESENT.labels(durable.replica_id, durable.settings.group).inc(n)
        asker = ", ".join(sorted(who)[:5]) + (" and others" if len(who) > 5 else "")
        if n:
            log.warning("replica %s: %s asked for its operations %s, which the group's "
                        "stream does not hold; publishing %d messages of them again",
                        durable.replica_id, asker, few(due), n)
            durable.outbox_ready.set()
        elif waiting := durable.store.pending(due):  # (asked again before they went out)
            log.debug("replica %s: %s asked again for its operations %s; %d messages of "
                      "them wait to be published", durable.replica_id, asker, few(due),
                      waiting)
            durable.outbox_ready.set()
        else:
            said = all(self._gone_said.get(ch) == span for ch, span in due.items())
            self._gone_said.update(due)
            log.log(logging.DEBUG if said else logging.WARNING,
                    "replica %s: %s asked for its operations %s, which it no longer keeps "
                    "(every member had them, or more than the store keeps came since); a "
                    "member that delivered them sends them from its log if it still holds "
                    "them (crdt_ops.transport.relay), else a replica that misses them must "
                    "be rebuilt from a snapshot (--bootstrap)",
                    durable.replica_id, asker, few(due))


__all__ = ["Resender"]
