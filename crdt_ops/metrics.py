"""Prometheus metrics of a replica process (prometheus-client), labelled by replica."""

from __future__ import annotations

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
