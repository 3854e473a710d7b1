"""Benchmarks, run as ``python -m crdt_ops.bench <command>``.

Commands (see ``python -m crdt_ops.bench --help``):

``core``
    Remote operations applied per second through ``Replica.receive`` (decode,
    causal buffer, apply) for counters, registers, OR-sets and nested maps, at 1
    and 100 operations per message, with the same nested map workload applied
    through pycrdt (Yjs) for comparison. See :mod:`crdt_ops.bench.core`.

The pieces the benchmarks share each have a module: :mod:`~crdt_ops.bench.report`
(progress lines, headers, Markdown tables), :mod:`~crdt_ops.bench.machine` (what
a result was measured on), :mod:`~crdt_ops.bench.cpu` (CPU time of processes and
of the local broker), :mod:`~crdt_ops.bench.stats` (nearest-rank quantiles),
:mod:`~crdt_ops.bench.broker` (the broker's URL and version, unique names,
deleting what a run declared) and :mod:`~crdt_ops.bench.retry` (running a
disturbed measurement again, retrying clean-ups).

Benchmarks only read the public API of the core and time it; they never change
what the core does, and each one checks, untimed, that the replica it measured
ended in the state its origins converged to.
"""
