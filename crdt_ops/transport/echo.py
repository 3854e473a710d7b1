"""The echo probe: a replica's own messages come back to it through its queue.

Every replica's queue is bound to the group's fanout exchange, so each message a
replica publishes (operations and heartbeats, which an idle replica still sends
every ``heartbeat_s``) is delivered back to it as well. When the broker has
confirmed messages of ours and, for longer than the patience, neither one of them
nor anything else came through our queue, the path exchange -> our queue is
broken: the exchange or our binding or our queue was deleted under us (a broker
operator, a policy, a definitions import), while publishing still "works" (the
exchange is declared again by a publisher, and the stream, bound on the publishing
channel, still gets everything). The transport then declares the topology again
and re-reads the stream.

Our messages are known by their ``message_id`` (:meth:`EchoWatch.message_id`: a prefix
naming the replica and a number), which also tells when each was published: the latest
of ours to come back gives :attr:`EchoWatch.heard_through`, the instant before which
everything routed to our queue has been delivered (a queue is FIFO).

Sans-IO: the caller hands in the times (seconds, any monotonic clock).
"""

from __future__ import annotations

import itertools

#: Publish times kept for our messages not yet seen back (the oldest are forgotten).
MAX_REMEMBERED = 100_000


class EchoWatch:
    """When our confirmed messages stopped coming back through our queue.

    ``confirmed(now)`` after the broker confirmed one of our messages;
    ``echoed(now)`` when one of ours came back through our queue; ``delivered(now)``
    when anything came through it (a queue busy with a backlog delivers others'
    messages before our echo: that path works). :meth:`silent_for` is how long the
    oldest confirmed message has waited with nothing delivered since, or 0.
    """

    def __init__(self, replica_id: str = "", incarnation: str = "") -> None:
        self._waiting_since: float | None = None  # first confirm not followed by an echo
        self._last_delivery: float | None = None
        #: How the ``message_id`` of this replica's own messages begins: its id and
        #: ``incarnation`` (a token of the process, handed in: its numbers start at 0 in
        #: each, and an echo of an earlier process's message, still queued after a restart,
        #: must not be taken for the new one's of the same number, which would move
        #: :attr:`heard_through` past what the queue delivered).
        self.prefix = f"crdt-ops:{replica_id}:{incarnation + ':' if incarnation else ''}"
        self._numbers = itertools.count()
        self._sent_at: dict[int, float] = {}  # our message's number -> when it was published
        #: The publish time of the latest of our messages that came back (0.0: none yet).
        self.heard_through = 0.0

    def message_id(self, now: float) -> str:
        """A ``message_id`` for one of our messages published at ``now``: the prefix and a
        number, unique among our unconfirmed messages (aiormq finds the publish a
        broker's basic.return answers by its ``message_id``)."""
        n = next(self._numbers)
        self._sent_at[n] = now
        if len(self._sent_at) > MAX_REMEMBERED:  # echoes lost for long: forget the oldest
            del self._sent_at[next(iter(self._sent_at))]
        return f"{self.prefix}{n}"

    def received(self, message_ids: list[str], now: float) -> float:
        """A batch came through our queue with these message ids: note it, and return
        when the latest of our own messages in it was published (0.0: none of ours, or
        published by an earlier process); :attr:`heard_through` follows it."""
        mine = self.prefix
        numbers = [i[len(mine):] for i in message_ids if i.startswith(mine)]
        if not numbers:
            self.delivered(now)
            return 0.0
        self.echoed(now)
        sent = 0.0
        for text in numbers:
            n = int(text) if text.isdigit() else -1
            if n in self._sent_at:
                sent = max(sent, self._sent_at[n])
                while self._sent_at and (k := next(iter(self._sent_at))) <= n:
                    del self._sent_at[k]  # numbered in order: the oldest come first
        self.heard_through = max(self.heard_through, sent)
        return sent

    def confirmed(self, now: float) -> None:
        if self._waiting_since is None:
            self._waiting_since = now

    def echoed(self, now: float) -> None:
        self._waiting_since = None
        self._last_delivery = now

    def delivered(self, now: float) -> None:
        self._last_delivery = now

    def silent_for(self, now: float) -> float:
        """Seconds our queue has been silent while a confirmed message of ours waits
        for its echo (0: nothing waits, or the queue delivered something since)."""
        since = self._waiting_since
        if since is None:
            return 0.0
        if self._last_delivery is not None and self._last_delivery >= since:
            since = self._last_delivery
        return max(0.0, now - since)

    def reset(self, now: float) -> None:
        """The topology was declared again: wait afresh from ``now``."""
        if self._waiting_since is not None:
            self._waiting_since = now


__all__ = ["EchoWatch"]
