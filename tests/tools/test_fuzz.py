"""Hostile messages against real replica processes over the real broker.

``crdt-ops fuzz`` as a subprocess (bounded: 3,000 messages, a per-origin cap of 5
so ``gap-cap`` happens), and the per-origin cap of the causal buffer end to end:
a legitimate sender whose early operations reached only the stream gets its
over-cap messages dead-lettered, then applied from the stream re-read, while a
forged sender whose gap never fills stays bounded and named.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import aio_pika

from crdt_ops import Replica
from crdt_ops.ops import Batch, Kind, ObjType, Op
from crdt_ops.wire import codec
from tests.broker import dead_letters, explain, wait_until
from tests.conftest import Group

LAST = re.compile(r"^messages=(\d+) dead_lettered=(\d+) crashes=(\d+) state_changed=(true|false)$")


def test_fuzz_command_3000_hostile_messages(amqp_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "fuzz", "--messages", "3000", "--replicas", "3",
         "--max-waiting-per-origin", "5", "--amqp-url", amqp_url],
        capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    m = LAST.match(lines[-1])
    assert m, done.stdout + done.stderr[-3000:]
    messages, dead, crashes, changed = int(m[1]), int(m[2]), int(m[3]), m[4]
    assert (messages, crashes, changed) == (3000, 0, "false"), done.stdout
    assert "check: ok" in lines  # K == 3 x the oracle's rejections, every one with a reason
    oracle = next(line for line in lines if line.startswith("oracle (per replica):"))
    rejected = sum(int(v) for k, v in re.findall(r"rejected:([\w-]+)=(\d+)", oracle))
    assert dead == 3 * rejected and 0 < dead <= 3 * messages
    assert "gap-cap=" in next(line for line in lines if line.startswith("dead letters by"))
    assert done.returncode == 0, done.stdout


def test_over_the_per_origin_cap_is_dead_lettered_then_applied_from_the_stream(
        group: Group) -> None:
    # an open group: x below writes without being admitted (the cap is what is tested)
    procs = [group.replica(f"r{i}", extra=["--gap-timeout-s", "1", "--membership", "open",
                                           "--max-waiting-per-origin", "3"]).start()
             for i in range(2)]
    wait_until(lambda: all(p.report() for p in procs), 60, "replicas up", explain(procs))
    x = Replica("x")
    msgs = []
    for _ in range(10):
        x.counter("gap").increment()
        msgs += x.outgoing()
    forged = codec.encode_batch(Batch("forged", 2**63 - 1, {}, [
        Op(("gap",), ObjType.PNCOUNTER, Kind.COUNTER_ADD, p=1000)]))

    async def publish() -> None:
        conn = await aio_pika.connect(group.url)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            # x:1 only into the stream: no replica's queue gets it, so x:2.. wait for it
            await ch.default_exchange.publish(aio_pika.Message(msgs[0]),
                                              routing_key=f"crdt.{group.name}.log")
            ex = await ch.get_exchange(f"crdt.{group.name}")
            for body in [forged, *msgs[1:]]:
                await ex.publish(aio_pika.Message(body), routing_key="")

    asyncio.run(publish())
    # 3 of x's operations wait (the cap), 6 are dead-lettered as gap-cap: all 10 arrive
    wait_until(lambda: all(p.report().get("state", {}).get("gap") == 10 for p in procs), 60,
               "x's operations, over the cap too, to be applied from the stream", explain(procs))
    wait_until(lambda: all(p.report().get("buffered") == 1 for p in procs), 10,
               "only the forged operation to wait", explain(procs))
    assert all(p.report()["dead_lettered"] == 6 for p in procs), explain(procs)()
    wait_until(lambda: all("the stream does not hold" in p.tail() and "forged" in p.tail()
                           for p in procs), 20, "a warning naming the stuck sender",
               explain(procs))

    reasons = [str(h["x-crdt-reason"]) for h in dead_letters(group.url, group.name)]
    assert reasons == ["gap-cap"] * 12
