"""Prometheus metrics of a replica process (prometheus-client), labelled by replica."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

OPS_PUBLISHED = Counter("crdt_ops_messages_published_total",
                        "Messages confirmed by the broker", ["replica"])
OPS_APPLIED = Counter("crdt_ops_operations_applied_total",
                      "Operations applied (local and remote)", ["replica"])
BATCH_SIZE = Histogram("crdt_ops_batch_messages", "Messages handled per consumer batch",
                       ["replica"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
BUFFER_DEPTH = Gauge("crdt_ops_causal_buffer_operations",
                     "Operations waiting in the causal buffer", ["replica"])
BUFFER_WAIT = Gauge("crdt_ops_causal_buffer_wait_seconds",
                    "How long the causal buffer has been non-empty", ["replica"])
DUPLICATES = Counter("crdt_ops_duplicates_dropped_total",
                     "Messages dropped because every operation in them was applied already",
                     ["replica"])
DEAD_LETTERED = Counter("crdt_ops_dead_lettered_total",
                        "Messages sent to the dead-letter exchange", ["replica", "reason"])
CLOCK_SIZE = Gauge("crdt_ops_clock_entries", "Entries in the replica's vector clock", ["replica"])
STABLE_LAG = Gauge("crdt_ops_stable_lag_operations",
                   "Own operations not yet known to be delivered everywhere", ["replica"])
RECONNECTS = Counter("crdt_ops_reconnects_total", "Broker reconnections", ["replica"])
OUTBOX = Gauge("crdt_ops_outbox_messages", "Own messages not yet confirmed", ["replica"])
GAP_REREADS = Counter("crdt_ops_gap_rereads_total",
                      "Stream re-reads for missing operations or dropped over-cap messages",
                      ["replica"])
GAP_STUCK = Gauge("crdt_ops_gap_stuck_replicas",
                  "Replicas whose missing operations the last stream re-read did not bring "
                  "(a sender whose gap never fills)", ["replica"])
STORE_UP = Gauge("crdt_ops_store_up",
                 "1 while the replica's store takes writes, 0 after one failed and until "
                 "a retry succeeded and memory was restored from it", ["replica"])
STORE_FAILURES = Counter("crdt_ops_store_failures_total",
                         "Store reads or writes that failed (locked, disk full, I/O error)",
                         ["replica"])
LOG_COMMITS = Counter("crdt_ops_log_commits_total",
                      "Transactions that logged deliveries or the replica's own messages in "
                      "its store; synced: made durable by a disk sync (own messages; in place "
                      "or on the sync thread), else deliveries alone, without one",
                      ["replica", "synced"])
ECHO_SILENT = Gauge("crdt_ops_echo_silent_seconds",
                    "How long the replica's queue has been silent while its own confirmed "
                    "messages await their echo, once past the patience (else 0)", ["replica"])
ECHO_LOSSES = Counter("crdt_ops_echo_losses_total",
                      "Times the echo watch found the path from the exchange to the replica's "
                      "queue broken and declared the topology again", ["replica"])
PUBLISHES_UNROUTABLE = Counter("crdt_ops_publishes_unroutable_total",
                               "Own messages the broker returned as unroutable (the "
                               "exchange had no binding left); published again after the "
                               "topology was declared again", ["replica"])
PUBLISHES_REFUSED = Counter("crdt_ops_publishes_refused_total",
                            "Own messages the broker nacked (a queue bound to the exchange "
                            "refused them); they are published straight into the stream",
                            ["replica"])
LOOP_LAG = Histogram("crdt_ops_event_loop_lag_seconds",
                     "How late the event loop's probe woke (crdt_ops.transport.loop_lag): "
                     "the loop was held that long by work that did not yield", ["replica"],
                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


def serve(port: int) -> threading.Thread | None:
    """Serve every metric at ``http://0.0.0.0:<port>/metrics`` (Prometheus's text format,
    prometheus-client's WSGI app) from a daemon thread, and say so in one log line; port
    0: nothing (None). Returns the thread. Raises OSError when the port is taken.

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

    httpd = make_server("0.0.0.0", port, make_wsgi_app(), ThreadingWSGIServer,
                        handler_class=Quiet)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": None},
                              name=f"metrics :{port}", daemon=True)
    thread.start()
    logging.getLogger(__name__).info("metrics on http://0.0.0.0:%d/metrics", port)
    return thread
