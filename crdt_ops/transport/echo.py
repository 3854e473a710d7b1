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

Sans-IO: the caller hands in the times (seconds, any monotonic clock).
"""

from __future__ import annotations


class EchoWatch:
    """When our confirmed messages stopped coming back through our queue.

    ``confirmed(now)`` after the broker confirmed one of our messages;
    ``echoed(now)`` when one of ours came back through our queue; ``delivered(now)``
    when anything came through it (a queue busy with a backlog delivers others'
    messages before our echo: that path works). :meth:`silent_for` is how long the
    oldest confirmed message has waited with nothing delivered since, or 0.
    """

    def __init__(self) -> None:
        self._waiting_since: float | None = None  # first confirm not followed by an echo
        self._last_delivery: float | None = None

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
