"""Benchmarks, run as ``python -m tools.bench <command>``.

Commands (see ``python -m tools.bench --help``):

``core``
    Remote operations applied per second through ``Replica.receive`` (decode,
    causal buffer, apply) for counters, registers, OR-sets and nested maps, at 1
    and 100 operations per message, with the same nested map workload applied
    through pycrdt (Yjs) for comparison. See :mod:`tools.bench.core`.

``amqp``
    The RabbitMQ transport: throughput of many writers, latency of one, replay from the
    stream, each beside raw aio-pika doing the same in the same run. See
    :mod:`tools.bench.amqp`.

``services``
    Start to ``power_actual`` "on" through the real web, logic and worker processes,
    beside the same hops done as plain AMQP request/reply, and as the origin's database
    and casts (PostgreSQL LISTEN/NOTIFY, :mod:`tools.bench.dbflow`). See
    :mod:`tools.bench.services`.

``hop``
    One durable hop: two replicas' ping-pong beside raw aio-pika's in the same run, the
    latency under 1,000 and 10,000 ops/s from concurrent writers, and each side's worst
    event-loop stall (issue 14). See :mod:`tools.bench.hop`.

``platform``
    How the services' cost grows with the platform (500 -> 5,000 -> 50,000 records): create
    rate, Start->on one at a time and in a burst, resident bytes per record and CPU per
    Start, per service. See :mod:`tools.bench.platform`.

``cells``
    The services with 40 workers in 4 cells beside 2 workers in one: Start->on, the
    messages a worker receives and its memory, and a whole cell's workers killed (its
    containers move to other cells). See :mod:`tools.bench.cells`.

The pieces the benchmarks share each have a module: :mod:`~tools.bench.report`
(progress lines, headers, Markdown tables), :mod:`~tools.bench.machine` (what
a result was measured on), :mod:`~tools.bench.cpu` (CPU time of processes and
of the local broker), :mod:`~tools.bench.stats` (nearest-rank quantiles),
:mod:`~tools.bench.broker` (the broker's URL and version, unique names,
deleting what a run declared) and :mod:`~tools.bench.retry` (running a
disturbed measurement again, retrying clean-ups).

Benchmarks only read the public API of the core and time it; they never change
what the core does, and each one checks, untimed, that the replica it measured
ended in the state its origins converged to.
"""
