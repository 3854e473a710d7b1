"""Benchmarks, run as ``python -m crdt_ops.bench <command>``.

Commands (see ``python -m crdt_ops.bench --help``):

``core``
    Remote operations applied per second through ``Replica.receive`` (decode,
    causal buffer, apply) for counters, registers, OR-sets and nested maps, at 1
    and 100 operations per message, with the same nested map workload applied
    through pycrdt (Yjs) for comparison. See :mod:`crdt_ops.bench.core`.

Benchmarks only read the public API of the core and time it; they never change
what the core does, and each one checks, untimed, that the replica it measured
ended in the state its origins converged to.
"""
