"""The RabbitMQ transport against a real broker, replicas in separate OS processes."""

from __future__ import annotations

import asyncio
import signal
import time

import aio_pika

from tests.broker import converged, dead_letters, explain, wait_until
from tests.conftest import Group


def test_three_processes_converge(group: Group) -> None:
    procs = [group.replica(f"r{i}", ops=1500, seed=i).start() for i in range(3)]
    wait_until(lambda: converged(procs, {p.replica_id: 1500 for p in procs}), 90,
               "3 replicas to converge", explain(procs))


def test_late_replica_joins_from_the_stream(group: Group) -> None:
    early = [group.replica(f"r{i}", ops=800, seed=i).start() for i in range(2)]
    issued = {p.replica_id: 800 for p in early}
    wait_until(lambda: converged(early, issued), 90, "2 replicas", explain(early))
    late = group.replica("late", ops=100, seed=9).start()
    issued["late"] = 100
    wait_until(lambda: converged([*early, late], issued), 90, "the late replica to catch up",
               explain([*early, late]))


def test_sigkilled_replica_restarts_and_nothing_is_lost_or_doubled(group: Group) -> None:
    import random

    rng = random.Random(5)
    steady = group.replica("steady", ops=4000, seed=1, rate=1000).start()
    victim = group.replica("victim", ops=4000, seed=2, rate=1000).start()
    procs = [steady, victim]
    for round_ in range(3):  # killed at three arbitrary instants, restarted each time
        busy = 500 * (round_ + 1)
        wait_until(lambda b=busy: victim.report().get("issued", 0) > b, 60,  # type: ignore[misc]
                   "the victim to be busy", explain(procs))
        time.sleep(rng.uniform(0, 0.5))
        victim.kill(signal.SIGKILL)
        time.sleep(0.5)
        victim.start()
    wait_until(lambda: converged(procs, {"steady": 4000, "victim": 4000}), 120,
               "convergence after SIGKILLs", explain(procs))


def test_quorum_queues(group: Group) -> None:
    procs = [group.replica(f"r{i}", ops=400, seed=i, extra=["--queue-type", "quorum"]).start()
             for i in range(2)]
    wait_until(lambda: converged(procs, {"r0": 400, "r1": 400}), 90, "convergence",
               explain(procs))
    from tests.broker import rabbitmqctl

    queues = rabbitmqctl("list_queues", "name", "type", "-q")
    assert f"crdt.{group.name}.r0\tquorum" in queues


def test_garbage_is_dead_lettered_and_the_others_go_on(group: Group) -> None:
    procs = [group.replica(f"r{i}", ops=500, seed=i, rate=500).start() for i in range(2)]
    wait_until(lambda: all(p.report() for p in procs), 60, "replicas up", explain(procs))

    async def publish_garbage() -> None:
        conn = await aio_pika.connect(group.url)
        async with conn:
            ch = await conn.channel()
            ex = await ch.get_exchange(f"crdt.{group.name}")
            for body in (b"\x00garbage", b"\xff" * 64, b""):
                await ex.publish(aio_pika.Message(body), routing_key="")

    asyncio.run(publish_garbage())
    wait_until(lambda: converged(procs, {"r0": 500, "r1": 500}), 90, "convergence",
               explain(procs))
    wait_until(lambda: all(p.report().get("dead_lettered", 0) >= 3 for p in procs), 30,
               "each replica to dead-letter the 3 garbage messages", explain(procs))

    headers = dead_letters(group.url, group.name)
    assert len(headers) == 6
    assert {h["x-crdt-reason"] for h in headers} <= {"undecodable", "bad-version", "empty-message"}
    assert {h["x-crdt-replica"] for h in headers} == {"r0", "r1"}


def test_a_message_delivered_twice_is_applied_once(group: Group) -> None:
    a = group.replica("a", ops=300, seed=1).start()
    b = group.replica("b").start()
    wait_until(lambda: converged([a, b], {"a": 300}), 60, "convergence", explain([a, b]))

    async def republish_stream() -> int:
        # the whole history, published again: every message arrives a second time
        conn = await aio_pika.connect(group.url)
        async with conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=500)
            stream = await ch.get_queue(f"crdt.{group.name}.log")
            ex = await ch.get_exchange(f"crdt.{group.name}")
            bodies: list[bytes] = []
            done = asyncio.Event()

            async def take(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                bodies.append(m.body)
                await m.ack()
                if len(bodies) >= 20:
                    done.set()

            tag = await stream.consume(take, arguments={"x-stream-offset": "first"})
            await asyncio.wait_for(done.wait(), 30)
            await stream.cancel(tag)
            for body in bodies:
                await ex.publish(aio_pika.Message(body), routing_key="")
            return len(bodies)

    assert asyncio.run(republish_stream()) >= 20
    time.sleep(2)
    wait_until(lambda: converged([a, b], {"a": 300}), 60, "still exact after duplicates",
               explain([a, b]))


def test_a_retired_replica_stops_holding_back_stability(group: Group) -> None:
    import subprocess
    import sys

    managed = ["--membership", "managed"]  # an open group is never stable
    r0 = group.replica("r0", ops=600, seed=1, rate=300, extra=managed).start()
    r1 = group.replica("r1", ops=600, seed=2, rate=300, extra=managed).start()
    ghost = group.replica("ghost", ops=10, seed=3, extra=managed).start()
    procs = [r0, r1, ghost]
    wait_until(lambda: ghost.report().get("done") and r0.report().get("issued", 0) > 50, 60,
               "the ghost to have written", explain(procs))

    def retire(rid: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", "retire", rid,
                               "--amqp-url", group.url, "--group", group.name],
                              capture_output=True, text=True)
    running = retire("ghost")  # refused while it runs: it would write no more
    assert running.returncode == 1 and "ghost still runs" in running.stderr, running.stderr
    typo = retire("ghots")  # refused: nothing of it in the stream
    assert typo.returncode == 1 and "holds no message of ghots" in typo.stderr, typo.stderr
    ghost.stop()  # gone, and never coming back
    wait_until(lambda: converged([r0, r1], {"r0": 600, "r1": 600, "ghost": 10}), 90,
               "the others to finish", explain(procs))
    time.sleep(2)  # heartbeats go round: still the ghost never saw r0's later operations
    assert r0.report()["stable_lag"] > 0
    done = retire("ghost")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: r0.report()["stable_lag"] == 0 and r1.report()["stable_lag"] == 0, 30,
               "stability to stop waiting for the ghost", explain([r0, r1]))
    # started again on its store, which never heard of its retirement: before it writes it
    # reads the stream from a little before its last commit, finds its retirement there,
    # says so and refuses to run
    ghost.start()
    wait_until(lambda: ghost.returncode is not None, 60, "the ghost to learn it was retired",
               explain([ghost]))
    assert ghost.returncode != 0 and "was retired from group" in ghost.tail()
    # a new store under the retired id: the stream it replays has the retirement
    again = group.replica("ghost", ops=10, seed=4, extra=managed)
    again.store = again.store.with_name("ghost-again.sqlite")
    again.start()
    wait_until(lambda: again.returncode is not None, 60, "the retired ghost to refuse",
               explain([again]))
    assert again.returncode != 0 and "its retirement is in the stream" in again.tail()


def test_metrics_endpoint(group: Group) -> None:
    import json
    import re
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r0 = group.replica("r0", ops=50, seed=1, extra=["--metrics-port", str(port)]).start()
    wait_until(lambda: r0.report().get("done"), 60, "r0", explain([r0]))

    def scrape() -> str:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read(
                ).decode()
        except OSError:
            return ""

    def has(name: str, text: str) -> bool:  # (prometheus-client sorts the labels)
        return re.search(name + r'\{group="[^"]+",replica="r0"\}', text) is not None

    wait_until(lambda: has("crdt_ops_operations_applied_total", scrape()), 30, "metrics")
    text = scrape()
    for name in ("crdt_ops_messages_published_total", "crdt_ops_causal_buffer_operations",
                 "crdt_ops_clock_entries", "crdt_ops_stable_lag_operations",
                 "crdt_ops_outbox_messages"):
        assert name in text
    # the counters an alert watches exist from the start (at 0), the store's gauge says up
    for series in ("crdt_ops_store_failures_total", "crdt_ops_reconnects_total",
                   "crdt_ops_store_up", "crdt_ops_resent_messages_total",
                   "crdt_ops_relayed_messages_total",
                   "crdt_ops_asking_channels"):
        assert has(series, text), series
    # and the process's health, on the same port: 200 and JSON while every part is ok
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        health = json.loads(resp.read())
    assert resp.status == 200 and health["ok"] is True, health
    assert any(k.startswith("r0 in ") and k.endswith(": broker") for k in health["parts"]), health
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
        raise AssertionError("another path answered")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_a_replica_missing_operations_reads_them_again_from_the_stream(group: Group) -> None:
    from crdt_ops import Replica

    procs = [group.replica(f"r{i}", extra=["--gap-timeout-s", "1"]).start() for i in range(2)]
    wait_until(lambda: all(p.report() for p in procs), 60, "replicas up", explain(procs))
    x = Replica("x", members=[])
    x.found()  # a writer of its own (the group's replicas take its founding as valid)
    x.counter("gap").increment()
    first = x.outgoing()
    x.counter("gap").increment(10)
    second = x.outgoing()

    async def publish() -> None:
        conn = await aio_pika.connect(group.url)
        async with conn:
            ch = await conn.channel()
            for body in first:  # only into the stream: no replica's queue gets it
                await ch.default_exchange.publish(aio_pika.Message(body),
                                                  routing_key=f"crdt.{group.name}.log")
            ex = await ch.get_exchange(f"crdt.{group.name}")
            for body in second:
                await ex.publish(aio_pika.Message(body), routing_key="")

    asyncio.run(publish())
    wait_until(lambda: all(p.report().get("state", {}).get("gap") == 11 for p in procs), 60,
               "the gap to be filled from the stream", explain(procs))


def test_broker_restart_mid_stream_loses_nothing(group: Group) -> None:
    from tests.broker import restart_broker_app

    procs = [group.replica(f"r{i}", ops=3000, seed=i, rate=600).start() for i in range(3)]
    wait_until(lambda: all(p.report().get("issued", 0) > 300 for p in procs), 60, "writes",
               explain(procs))
    restart_broker_app(downtime=3)
    # writes went on while the broker was down
    wait_until(lambda: converged(procs, {p.replica_id: 3000 for p in procs}), 180,
               "convergence after the broker restart", explain(procs))


def test_a_connection_closed_by_the_broker_comes_back(group: Group) -> None:
    from tests.broker import rabbitmqctl

    procs = [group.replica(f"r{i}", ops=2000, seed=i, rate=500).start() for i in range(2)]
    wait_until(lambda: all(p.report().get("issued", 0) > 200 for p in procs), 60, "writes",
               explain(procs))
    lines = rabbitmqctl("list_connections", "pid", "client_properties", "-q").splitlines()
    pids = [line.split("\t")[0] for line in lines if "crdt-ops r0" in line]
    assert pids, lines
    for pid in pids:
        rabbitmqctl("close_connection", pid, "test closes r0's connection")
    wait_until(lambda: converged(procs, {"r0": 2000, "r1": 2000}), 120,
               "convergence after the closed connection", explain(procs))


def test_a_new_replica_bootstraps_from_a_peers_snapshot(group: Group) -> None:
    import subprocess
    import sys

    r0 = group.replica("r0", ops=500, seed=1).start()
    r1 = group.replica("r1", ops=500, seed=2).start()
    wait_until(lambda: converged([r0, r1], {"r0": 500, "r1": 500}), 90, "r0 and r1",
               explain([r0, r1]))
    r1.stop()
    snap = group.workdir / "r1.snapshot"
    subprocess.run([sys.executable, "-m", "services.cli", "snapshot", "--store", str(r1.store),
                    "--out", str(snap)], check=True, capture_output=True)
    r1.start()
    new = group.replica("new", ops=100, seed=3, extra=["--bootstrap", str(snap)]).start()
    wait_until(lambda: converged([r0, r1, new], {"r0": 500, "r1": 500, "new": 100}), 90,
               "the bootstrapped replica to converge", explain([r0, r1, new]))


def test_replicas_started_together_found_the_group_once_and_admit_the_others(
        group: Group) -> None:
    procs = [group.replica(f"r{i}", ops=50, seed=i, extra=["--membership", "managed"]).start()
             for i in range(3)]
    wait_until(lambda: converged(procs, {p.replica_id: 50 for p in procs}), 90,
               "convergence", explain(procs))
    reports = [p.report() for p in procs]
    assert all(r["member"] for r in reports)
    admissions = reports[0]["admissions"]
    assert sorted(admissions) == ["r0", "r1", "r2"]
    founders = [r for r, by in admissions.items() if r in by]
    assert len(founders) == 1, admissions  # exactly one claim won on the broker
    assert all(r["admissions"] == admissions for r in reports)


def test_a_heartbeat_naming_a_lost_batch_starts_a_re_read(group: Group) -> None:
    """The lost last batch: only the stream has it, and nothing waits in the buffer."""
    from crdt_ops import Replica

    procs = [group.replica(f"r{i}", extra=["--gap-timeout-s", "1"]).start() for i in range(2)]
    wait_until(lambda: all(p.report() for p in procs), 60, "replicas up",
               explain(procs))
    x = Replica("x", members=[])
    x.found()
    x.counter("lost").increment()
    first = x.outgoing()
    x.counter("lost").increment(10)
    last = x.outgoing()
    x.heartbeat()
    beat = x.outgoing()

    async def publish() -> None:
        conn = await aio_pika.connect(group.url)
        async with conn:
            ch = await conn.channel()
            ex = await ch.get_exchange(f"crdt.{group.name}")
            for body in first:
                await ex.publish(aio_pika.Message(body), routing_key="")
            for body in last:  # only into the stream: no replica's queue gets it
                await ch.default_exchange.publish(aio_pika.Message(body),
                                                  routing_key=f"crdt.{group.name}.log")
            for body in beat:  # x says it has delivered x:3
                await ex.publish(aio_pika.Message(body), routing_key="")

    asyncio.run(publish())
    wait_until(lambda: all(p.report().get("state", {}).get("lost") == 11 for p in procs), 60,
               "the lost batch to be read from the stream", explain(procs))
