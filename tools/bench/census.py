"""Messages per Start: what each crdt-ops service received, dropped as duplicates, and
published over a benchmark's timed phase, and the transactions its stores committed (of
them, those made durable by a disk sync), read from its Prometheus endpoint (the counters
of :mod:`crdt_ops.transport.metrics`, summed over the service's groups).

A message a replica publishes reaches every member queue of its group, its own included,
and the replica drops its own copy as a duplicate: the census shows how much of a
service's work is that echo."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping, Sequence

from tools.bench.report import first_left, markdown_table

#: What the census counts -> the Prometheus series it sums (over every label; a series
#: named with one label, ``name{label="value"}``, over the samples with that label's value).
SERIES = {
    "received": "crdt_ops_batch_messages_sum",  # messages its consumers handled
    "duplicates": "crdt_ops_duplicates_dropped_total",  # of those, dropped as already had
    "published": "crdt_ops_messages_published_total",  # its own, confirmed by the broker
    "commits": "crdt_ops_log_commits_total",  # transactions of its log
    "synced": 'crdt_ops_log_commits_total{synced="true"}',  # of those, with a disk sync
}


def metric_sums(port: int) -> dict[str, float]:
    """Every series the Prometheus endpoint on ``127.0.0.1:port`` shows, summed over its
    labels (series name -> value), and for each of its labels, summed over the samples
    with each value of that label (``name{label="value"}`` -> value). Raises OSError if
    the endpoint does not answer in 5 s."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        for key in (name, *(f"{name}{{{pair}}}" for pair in labels.rstrip("}").split(",")
                            if pair)):
            sums[key] = sums.get(key, 0.0) + float(value)
    return sums


def census(ports: Mapping[str, int]) -> dict[str, float]:
    """Each service's counters now (``ports``: service -> its Prometheus port), as
    ``"<service> <what>"`` -> value, ``what`` one of :data:`SERIES`."""
    out = {}
    for service, port in ports.items():
        sums = metric_sums(port)
        for what, series in SERIES.items():
            out[f"{service} {what}"] = sums.get(series, 0.0)
    return out


def census_table(grown: Mapping[str, float], services: Sequence[str], starts: int) -> str:
    """Per service, how much each counter of :func:`census` grew (``grown``) per Start, over
    ``starts`` Starts, and the total over the services."""
    whats = tuple(SERIES)
    rows = []
    totals = dict.fromkeys(whats, 0.0)
    for s in services:
        values = [grown.get(f"{s} {w}", 0.0) for w in whats]
        for w, v in zip(whats, values, strict=True):
            totals[w] += v
        rows.append((s, *(f"{v / starts:.2f}" for v in values)))
    rows.append(("all", *(f"{totals[w] / starts:.2f}" for w in whats)))
    head = ("service", "received / Start", "of which duplicates", "published / Start",
            "log commits / Start", "of which synced")
    return markdown_table(head, rows, first_left(len(head)))
