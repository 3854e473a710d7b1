"""Connections to RabbitMQ: failover over the nodes of one cluster, a connect that a stop
signal can interrupt, and URLs written without their passwords."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.robust_connection import RobustConnection
from tenacity import AsyncRetrying, RetryCallState, retry_if_not_exception_type, wait_exponential
from yarl import URL

from crdt_ops.transport.config import Settings, redact, split_urls

log = logging.getLogger(__name__)


class FailoverConnection(RobustConnection):
    """aio-pika's robust connection (it reconnects, restoring channels, queues and
    consumers) over one or several URLs, nodes of one cluster: each time the
    connection is lost, it reconnects to the next URL in turn. aio-pika itself takes
    one URL only; TLS options stay in each URL's query (``cafile=`` ...), read by aiormq.

    Limit: a URL that does not answer is retried (every ``reconnect_interval``) until
    it does; the next URL is tried after the next lost connection only. Overrides
    aio-pika's private ``_on_connection_close`` (aio-pika offers no hook to change the
    URL between attempts; checked against aio-pika 9.4 to 10.x)."""

    def __init__(self, urls: list[str], start: int = 0, **kwargs: Any) -> None:
        self.urls = [URL(u) for u in urls]
        self.index = start % len(self.urls)
        super().__init__(self.urls[self.index], **kwargs)

    @classmethod
    async def open(cls, urls: list[str], start: int = 0, timeout: float = 10,
                   reconnect_interval: float = 1, **kwargs: Any) -> FailoverConnection:
        """Connect to ``urls[start]`` (seconds: ``timeout``). A cancel (a stop signal while
        connecting) closes the connection object, which ends aio-pika's reconnect loop at
        once (cancelling ``connect`` alone left it reconnecting in the background, seen
        with aio-pika 10.2.1), and is raised on."""
        conn = cls(urls, start, reconnect_interval=reconnect_interval, **kwargs)
        attempt = asyncio.ensure_future(conn.connect(timeout=timeout))
        try:
            await asyncio.shield(attempt)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(conn.close(), 5)
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({attempt}, timeout=1)
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        return conn

    @classmethod
    async def of(cls, settings: Settings, replica_id: str, start: int = 0
                 ) -> FailoverConnection:
        """:meth:`open` as a replica opens it: ``settings.amqp_urls`` from the
        ``start``-th, a 10 s timeout, a reconnect every second, and the connection named
        ``crdt-ops <replica_id>`` (as the broker's management UI and ``rabbitmqctl
        list_connections`` show it)."""
        return await cls.open(settings.amqp_urls, start, timeout=10, reconnect_interval=1,
                              client_properties={"connection_name": f"crdt-ops {replica_id}"})

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if len(self.urls) > 1 and not (self._close_called or self.is_closed):
            self.index = (self.index + 1) % len(self.urls)
            self.url = self.urls[self.index]
            log.warning("connection lost; reconnecting to the next node, %s", self)
        await super()._on_connection_close(closing)


#: What a failed connection's error text says, and what it most often means.
CONNECT_HINTS = (
    ("ACCESS_REFUSED - Login was refused", " (check the user and password in the URL: the "
                                           "broker knows no such user, or that password is "
                                           "not its own; deploy/make_definitions.py makes "
                                           "the services' users)"),
    ("CERTIFICATE_VERIFY_FAILED", " (the broker's certificate does not verify against the "
                                  "URL's cafile=, or does not name the URL's host)"),
    ("Connect call failed", " (nothing listens there: is RabbitMQ running at that host and "
                            "port? name the broker with --amqp-url or CRDT_OPS_AMQP_URL)"),
    ("Name or service not known", " (the URL's host name does not resolve: name the broker "
                                  "with --amqp-url or CRDT_OPS_AMQP_URL)"),
    # aiormq reports the broker's Connection.Close at the open without its text
    ("got <Connection.Close", " (the broker refused to open the connection: most often the "
                              "URL's virtual host does not exist or the user may not use it; "
                              "the default one is the path '/', as in amqp://user:pw@host:5672/)"),
)


def retrying(what: str, url: str) -> AsyncRetrying:
    """tenacity's loop for connecting: ``async for attempt in retrying(...): with attempt:``
    retries with exponential backoff (0.2 s doubling, at most 5 s) until it works, and
    logs one warning line per failed attempt naming ``what`` was tried at ``url`` (its
    password hidden). A cancellation (a stop) and a ValueError (a configuration that no
    retry fixes) end it at once."""

    def say(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        hint = next((h for found, h in CONNECT_HINTS if found in str(err)), "")
        log.warning("could not %s at %s (%s: %s)%s; retrying", what, redact_urls(url),
                    type(err).__name__, err, hint)

    return AsyncRetrying(wait=wait_exponential(multiplier=0.2, max=5), before_sleep=say,
                         retry=retry_if_not_exception_type((asyncio.CancelledError, ValueError)))


async def connect_first(urls: list[str], timeout: float = 10) -> AbstractConnection:
    """A plain connection to the first of ``urls`` that answers (seconds: ``timeout``
    each); raises the last one's error when none does."""
    for url in urls[:-1]:
        try:
            return await aio_pika.connect(url, timeout=timeout)
        except Exception as e:
            log.warning("%s does not answer (%s: %s); trying the next URL", redact(url),
                        type(e).__name__, e)
    return await aio_pika.connect(urls[-1], timeout=timeout)


def redact_urls(url: str) -> str:
    """``--amqp-url`` (one URL or several, comma-separated) without passwords, for logs
    (TLS options in the query are file names, not secrets, and stay)."""
    return ",".join(redact(u) for u in split_urls(url)) if "@" in url else url
