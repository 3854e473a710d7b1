"""A process of a sole principal that takes its holder queue again, after a reconnection,
first checks that no other process of its principal wrote while it was cut off.

The services' logic, or a node's worker, cut off from the broker goes on deciding and
commits what it decides; it waits in its outbox. Meanwhile a standby may take over, decide
without it, and stop again before the first one reconnects. The principal's holder queue
(:class:`~crdt_ops.transport.amqp.holder.Holder`) is then free: the first one takes it
again, and taking it says nothing of what happened in between. Had it sent its outbox, a
placement its successor had made elsewhere would have started the container a second
time.

So after it holds the queue again, and before its first publish on the new connection,
a process reads each of its groups' streams from where it stood when it was cut off
(:meth:`RetakeCheck.passed`): a replica that reads the stream from the offset after the
one it logged; one with a queue of its own from a little before the last moment the
broker answered it on the lost connection (the successor took the queue after the broker
dropped that connection). If another replica of its principal wrote there (its
operations applied, or waiting for earlier ones), and the process holds operations of its
own the broker never confirmed (counted after the reads), it is deposed
(:mod:`crdt_ops.transport.deposition`): its stores are marked, it never publishes again,
and the services stop it. The rule that decides is the one a start on a used store
applies (``AmqpNode._refuse_if_superseded``); every group of the process is read before
any of them publishes, as at a start, because a successor may have written in one group
only.

A process with nothing unsent has nothing stale to send: it reads its streams all the
same, so that nothing it decides goes out before it has what its successor did (what it
decides during the reads counts as unsent), and goes on.
A read that fails while the connection holds (a stream that stalls) is tried again, with
a pause that doubles up to 5 s, and said once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reader:
    """One group's part of the check: ``unsent()`` counts its operations the broker never
    confirmed (what was written is committed first); ``others()`` reads its stream from
    where it stood when it was cut off and returns the other replicas of its principal
    that wrote there since (raising what the connection raises); ``passed()`` forgets
    where it stood (the next cut sets it anew)."""

    group: str
    unsent: Callable[[], int]
    others: Callable[[], Awaitable[set[str]]]
    passed: Callable[[], None]


class RetakeCheck:
    """The check of one process (every group of it, over one connection), once per AMQP
    link: :meth:`passed` runs it on the first call for a link, and every caller for that
    link awaits the same outcome. ``depose`` is called when it finds the process
    superseded."""

    def __init__(self, replica_id: str, principal: str, depose: Callable[[], None]) -> None:
        self.replica_id, self.principal, self.depose = replica_id, principal, depose
        #: one per group of the process, added as its node is made
        self.readers: list[Reader] = []
        self._link: object | None = None
        self._outcome: asyncio.Future[bool] | None = None

    async def passed(self, link: object) -> bool:
        """Whether the process may publish on ``link`` (its holder queue taken again on
        it): False once it was found superseded (deposed). Raises what reading a stream
        raises (the connection lost again: call again on the next link; a failed or
        cancelled check is run again by the next call). A check still running for an
        earlier link is cancelled, and ended, first: two never run at once."""
        outcome = self._outcome
        if outcome is not None and link is self._link and (
                not outcome.done() or (not outcome.cancelled() and outcome.exception() is None)):
            return await asyncio.shield(outcome)
        if outcome is not None and not outcome.done():
            outcome.cancel()
            await asyncio.wait({outcome})  # (its end, whatever it is; not raised here)
        if self._outcome is outcome:  # (else another caller began it meanwhile)
            self._link = link
            self._outcome = asyncio.ensure_future(self._check())
        return await self.passed(link)

    async def _check(self) -> bool:
        others: dict[str, set[str]] = {}
        for r in self.readers:  # (the state brought up to date before anything is sent)
            if found := await r.others():
                others[r.group] = found
        # counted after the reads: what was decided during them was decided without them
        unsent = sum(r.unsent() for r in self.readers)
        writers = ", ".join(sorted(set().union(*others.values())))
        if others and unsent:
            log.error("replica %s: %s, of its principal %s, wrote in %s while this one was cut "
                      "off from the broker; this one's stores hold %d messages of operations "
                      "it decided meanwhile without theirs: they are never sent (it is "
                      "deposed, and stops)", self.replica_id, writers, self.principal,
                      ", ".join(sorted(others)), unsent)
            self.depose()
            return False
        if others:
            log.info("replica %s: %s, of its principal %s, wrote while this one was cut off; "
                     "this one had decided nothing meanwhile, and goes on", self.replica_id,
                     writers, self.principal)
        elif unsent:
            log.info("replica %s took its principal %s's queue again, and no other process of "
                     "it wrote meanwhile: sending the %d messages it committed",
                     self.replica_id, self.principal, unsent)
        for r in self.readers:
            r.passed()
        return True
