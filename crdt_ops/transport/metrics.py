"""Prometheus metrics of a replica process (prometheus-client), labelled by replica and group:
a process that holds several groups (web and logic hold the platform's and each cell's, with
one replica id) has a series of each per group, so that one group's value never hides
another's (a gap in a cell, say). The event loop's lag is the process's, by replica."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

OPS_PUBLISHED = Counter("crdt_ops_messages_published_total",
                        "Messages confirmed by the broker", ["replica", "group"])
OPS_APPLIED = Counter("crdt_ops_operations_applied_total",
                      "Operations applied (local and remote)", ["replica", "group"])
BATCH_SIZE = Histogram("crdt_ops_batch_messages", "Messages handled per consumer batch",
                       ["replica", "group"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
BUFFER_DEPTH = Gauge("crdt_ops_causal_buffer_operations",
                     "Operations waiting in the causal buffer", ["replica", "group"])
BUFFER_WAIT = Gauge("crdt_ops_causal_buffer_wait_seconds",
                    "How long the causal buffer has been non-empty", ["replica", "group"])
DUPLICATES = Counter("crdt_ops_duplicates_dropped_total",
                     "Messages dropped because every operation in them was applied already",
                     ["replica", "group"])
DEAD_LETTERED = Counter("crdt_ops_dead_lettered_total",
                        "Messages sent to the dead-letter exchange", ["replica", "group", "reason"])
CLOCK_SIZE = Gauge("crdt_ops_clock_entries", "Entries in the replica's vector clock",
                   ["replica", "group"])
STABLE_LAG = Gauge("crdt_ops_stable_lag_operations",
                   "Own operations not yet known to be delivered everywhere", ["replica", "group"])
RECONNECTS = Counter("crdt_ops_reconnects_total", "Broker reconnections", ["replica", "group"])
OUTBOX = Gauge("crdt_ops_outbox_messages", "Own messages not yet confirmed", ["replica", "group"])
GAP_REREADS = Counter("crdt_ops_gap_rereads_total",
                      "Stream re-reads for missing operations or dropped over-cap messages",
                      ["replica", "group"])
GAP_STUCK = Gauge("crdt_ops_gap_stuck_replicas",
                  "Replicas whose missing operations the last stream re-read did not bring "
                  "(a sender whose gap never fills)", ["replica", "group"])
RESENT = Counter("crdt_ops_resent_messages_total",
                 "Own messages published again because a replica asked for operations the "
                 "group's stream did not hold (crdt_ops/transport/resend.py)",
                 ["replica", "group"])
RELAYED = Counter("crdt_ops_relayed_messages_total",
                  "Other replicas' messages published again from the log because a replica "
                  "asked for operations their sender did not send again "
                  "(crdt_ops/transport/relay.py)", ["replica", "group"])
ASKING = Gauge("crdt_ops_asking_channels",
               "Channels whose operations this replica asks their senders for, having not "
               "found them in the group's stream", ["replica", "group"])
PUBLISH_WAIT = Gauge("crdt_ops_publish_wait_seconds",
                     "How long the oldest of the replica's unconfirmed messages has waited "
                     "for the broker's confirm (0 when none waits): it grows while the broker "
                     "blocks publishers (a memory or disk alarm) or the connection is down",
                     ["replica", "group"])
STORE_UP = Gauge("crdt_ops_store_up",
                 "1 while the replica's store takes writes, 0 after one failed and until "
                 "a retry succeeded and memory was restored from it", ["replica", "group"])
STORE_FAILURES = Counter("crdt_ops_store_failures_total",
                         "Store reads or writes that failed (locked, disk full, I/O error)",
                         ["replica", "group"])
LOG_COMMITS = Counter("crdt_ops_log_commits_total",
                      "Transactions that logged deliveries or the replica's own messages in "
                      "its store; synced: made durable by a disk sync (own messages; in place "
                      "or on the sync thread), else deliveries alone, without one",
                      ["replica", "group", "synced"])
ECHO_SILENT = Gauge("crdt_ops_echo_silent_seconds",
                    "How long the replica's queue has been silent while its own confirmed "
                    "messages await their echo, once past the patience (else 0)",
                    ["replica", "group"])
ECHO_LOSSES = Counter("crdt_ops_echo_losses_total",
                      "Times the echo watch found the path from the exchange to the replica's "
                      "queue broken and declared the topology again", ["replica", "group"])
PUBLISHES_UNROUTABLE = Counter("crdt_ops_publishes_unroutable_total",
                               "Own messages the broker returned as unroutable (the "
                               "exchange had no binding left); published again after the "
                               "topology was declared again", ["replica", "group"])
PUBLISHES_REFUSED = Counter("crdt_ops_publishes_refused_total",
                            "Own messages the broker nacked (a queue bound to the exchange "
                            "refused them); they are published straight into the stream",
                            ["replica", "group"])
LOOP_LAG = Histogram("crdt_ops_event_loop_lag_seconds",
                     "How late the event loop's probe woke (crdt_ops.transport.loop_lag): "
                     "the loop was held that long by work that did not yield", ["replica"],
                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


#: The series of each (replica, group) shown from its start (0 until something happens):
#: an alert on a counter's growth, or on a gauge, then has a series to watch.
SHOWN_AT_START = (OPS_PUBLISHED, OPS_APPLIED, DUPLICATES, RECONNECTS, OUTBOX, GAP_REREADS,
                  GAP_STUCK, STORE_FAILURES, ECHO_SILENT, ECHO_LOSSES, PUBLISHES_UNROUTABLE,
                  PUBLISHES_REFUSED, BUFFER_DEPTH, RESENT, RELAYED, ASKING, PUBLISH_WAIT)


def announce(replica: str, group: str) -> None:
    """Make the series of ``replica`` in ``group`` of :data:`SHOWN_AT_START` exist (at 0),
    and its store's ``crdt_ops_store_up`` 1."""
    for metric in SHOWN_AT_START:
        metric.labels(replica, group)
    STORE_UP.labels(replica, group).set(1)


#: The health of each node of this process (:func:`watch_health`): ``"<replica> in <group>"``
#: -> (its event loop, its ``health()``), for ``/healthz`` on the metrics port.
HEALTH: dict[str, tuple[asyncio.AbstractEventLoop, Callable[[], dict[str, str]]]] = {}
#: How long ``/healthz`` waits for a node's event loop to answer, seconds.
HEALTH_WAIT_S = 2.0


def watch_health(replica: str, group: str,
                 health: Callable[[], dict[str, str]]) -> Callable[[], None]:
    """Report ``health()`` (part -> ``"ok"`` or what is wrong) of ``replica``'s node of
    ``group`` at ``/healthz`` on the metrics port, read on the calling event loop; returns
    the function that stops it."""
    key = f"{replica} in {group}"
    HEALTH[key] = (asyncio.get_running_loop(), health)
    return lambda: HEALTH.pop(key, None) and None


def health_report() -> tuple[bool, dict[str, str]]:
    """Every watched node's health, as ``"<replica> in <group>: <part>"`` -> ``"ok"`` or what
    is wrong, each read on its own event loop (a loop that does not answer in
    :data:`HEALTH_WAIT_S` is itself what is wrong); and whether all is ok. Called from the
    metrics thread."""
    out: dict[str, str] = {}
    for node, (loop, health) in list(HEALTH.items()):
        async def read(h: Callable[[], dict[str, str]] = health) -> dict[str, str]:
            return h()
        try:
            parts = asyncio.run_coroutine_threadsafe(read(), loop).result(HEALTH_WAIT_S)
        except Exception as e:  # (a timeout: the loop is held; a closed loop: stopping)
            parts = {"event loop": f"did not answer in {HEALTH_WAIT_S:g}s "
                                   f"({type(e).__name__})"}
        out.update({f"{node}: {part}": said for part, said in parts.items()})
    return all(v == "ok" for v in out.values()), out


def _app(metrics_app: Callable[..., Any]) -> Callable[..., Any]:
    """The metrics port's WSGI app: ``/metrics`` (and ``/``) the metrics, ``/healthz``
    :func:`health_report` as JSON (200 when all is ok, else 503), else 404."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO") or "/"
        if path in ("/", "/metrics"):
            return metrics_app(environ, start_response)
        if path == "/healthz":
            ok, parts = health_report()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [json.dumps({"ok": ok, "parts": parts}).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: this port serves /metrics and /healthz\n"]
    return app


def serve(port: int, host: str = "0.0.0.0") -> threading.Thread | None:
    """Serve every metric at ``http://<host>:<port>/metrics`` (Prometheus's text format,
    prometheus-client's WSGI app), and the process's nodes' health at ``/healthz``
    (:func:`health_report`: 200 or 503, JSON), from a daemon thread, and say so in one log
    line; port 0: nothing (None). Returns the thread. Raises OSError when the port is taken.

    The thread sleeps in ``select`` until a scrape comes: the library's own
    ``start_http_server`` polls every 0.5 s (``socketserver``'s default ``poll_interval``),
    which woke every idle replica process twice a second to take the interpreter's lock
    (about 0.2 ms of CPU a second each, measured; a platform runs one process per worker
    node). The server is never shut down: it ends with the process."""
    if not port:
        return None
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # no line per scrape
            pass

    httpd = make_server(host, port, _app(make_wsgi_app()), ThreadingWSGIServer,
                        handler_class=Quiet)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": None},
                              name=f"metrics :{port}", daemon=True)
    thread.start()
    logging.getLogger(__name__).info("metrics on http://%s:%d/metrics, health on /healthz",
                                     host, port)
    return thread
