"""``crdt-ops fuzz --messages N``: hostile messages against real replica processes.

What it does, in order:

1. starts ``--replicas`` (3) ``crdt-ops replica`` processes in a new group
   ``fuzz-<random>`` (each issues ``--ops`` seeded operations, then idles), with
   ``--max-waiting-per-origin`` (default 100, small so the cap is exercised) and
   waits until they converge; records each one's state, clock and RSS
   (``/proc/<pid>/status`` VmRSS);
2. builds an *oracle*: a sans-IO :class:`~crdt_ops.replica.Replica` fed with the
   group's stream ``crdt.<group>.log`` until it has the replicas' clock, with the
   same buffer bounds as the replicas;
3. generates N hostile messages (seeded, deterministic for a ``--seed``): random
   bytes, truncated and bit-flipped valid messages, raw protobuf with wrong wire
   types and unknown fields, operations with wrong types, NaN or empty values,
   empty or over-deep paths, amounts and seqs beyond 2**63-1, clocks with
   thousands of entries or huge counters, sequence gaps of up to 2**63 (from fake
   origins and from the real ones), writes of another type to existing keys,
   oversized messages (1-2 MB: the codec has no size limit, the broker's is 128 MB),
   heartbeats with huge clocks, retirements of unknown replicas, replays of the
   real history, and, when ``atheris`` is installed and ``--atheris-seconds`` > 0,
   the corpus a coverage-guided atheris run over ``Replica.receive`` produced.
   Every candidate is first given to the oracle; one the oracle would *apply* (a
   forged but valid write, e.g. a fake origin's first operation: without
   authentication indistinguishable from a new replica's) is not sent and another
   is drawn. So every message sent is one a replica must reject, hold forever or
   drop as a duplicate/heartbeat, never apply;
4. publishes them to the exchange ``crdt.<group>`` with publisher confirms, in
   rounds of 1,000, showing progress on stderr; waits until every replica's
   queue is empty and its dead-letter count stops at what the oracle predicts;
5. checks: every process alive; each state and clock equal to the recorded one
   (``state_changed``); then sends SIGUSR1 to the first replica, which issues
   ``--more`` legitimate operations, and waits until all replicas converge with
   them (a replica that died or does not converge counts in ``crashes``); drains
   ``crdt.<group>.dead`` and checks every dead letter carries ``x-crdt-reason``;
6. prints the RSS of each replica before/after and, as the last line,
   ``messages=N dead_lettered=K crashes=C state_changed=B``; deletes the group.

``dead_lettered`` (K) is the number of messages found in ``crdt.<group>.dead``:
one per (hostile message, replica that rejected it). Every replica rejects the
same messages (same state, same bounds, same order), so K = replicas x the
oracle's rejections (reasons: the codec's, ``type-conflict``, ``gap-cap``,
``buffer-full``); held messages, duplicates, heartbeats and retirements are not
dead-lettered. The exit status is 1 when crashes > 0, state_changed is true, or
K differs from that prediction (the line before the last says so).

atheris: optional (``pip install atheris``; 3.0.0 installs from a wheel on
Linux/CPython 3.11). Without it ``--atheris-seconds`` is ignored with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika

from crdt_ops.clock import Clock
from crdt_ops.errors import BufferFull, InvalidMessage, WaitingCapReached
from crdt_ops.ops import MAX_DEPTH, Batch, Heartbeat, Kind, ObjType, Op
from crdt_ops.replica import Replica
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology
from crdt_ops.wire import codec
from services.process import run_stoppable
from tools.harness import converged
from tools.replica_process import ReplicaProcess

MAX_SEQ = codec.MAX_SEQ
FAKE_ORIGINS = 20  # fake origins hostile batches come from (a pool: bounded by the caps)
NAME_POOL = 3000  # replica names used in forged clocks


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- raw protobuf wire


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field(number: int, value: int | bytes, wire: int | None = None) -> bytes:
    """One protobuf field: an int as a varint, bytes length-delimited (or ``wire`` forced)."""
    if wire is None:
        wire = 0 if isinstance(value, int) else 2
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(int(value) if isinstance(value, int) else len(value))
    if wire == 1:
        raw = value if isinstance(value, bytes) else (value % 2**64).to_bytes(8, "little")
        return key + raw[:8]
    if wire == 5:
        raw = value if isinstance(value, bytes) else (value % 2**32).to_bytes(4, "little")
        return key + raw[:4]
    data = value if isinstance(value, bytes) else _varint(value)
    return key + _varint(len(data)) + data


# ---------------------------------------------------------------- the hostile messages


def _is_join_request(body: bytes) -> bool:
    """Whether ``body`` decodes as a request to be admitted to the group."""
    try:
        msg = codec.decode(body)
    except Exception:
        return False
    return isinstance(msg, Heartbeat) and msg.join


class Hostile:
    """A seeded generator of hostile message bodies, by kind."""

    def __init__(self, seed: int, history: list[bytes], clock: Clock, state: dict[str, Any],
                 corpus: list[bytes]) -> None:
        self.rng = random.Random(seed)
        self.history = history or [codec.encode_heartbeat(Heartbeat("x", {}))]
        self.clock = dict(clock)
        self.real = sorted(clock)
        self.keys = sorted(state)
        self.corpus = corpus
        self.fakes = [f"fuzz-fake-{i}" for i in range(FAKE_ORIGINS)]
        self.names = [f"fuzz-name-{i}" for i in range(NAME_POOL)]
        self.kinds: list[tuple[str, Callable[[], bytes], int]] = [
            ("random-bytes", self.random_bytes, 10), ("truncated", self.truncated, 10),
            ("bit-flip", self.bit_flip, 12), ("raw-protobuf", self.raw_protobuf, 10),
            ("bad-operation", self.bad_operation, 12), ("type-conflict", self.type_conflict, 6),
            ("huge-clock", self.huge_clock, 4), ("gap", self.gap, 10),
            ("oversized", self.oversized, 0), ("heartbeat", self.heartbeat, 6),
            ("retire-unknown", self.retire, 5), ("replay", self.replay, 5),
            ("atheris", self.from_corpus, 10 if corpus else 0)]

    def draw(self, i: int) -> tuple[str, bytes]:
        """The i-th message: every 3,000th is oversized (1-2 MB), the rest by weight.
        A draw that came out a well-formed join request (a bit flip of a member's
        heartbeat can make one) is drawn again: without ``--auth`` a join request is
        valid input that members answer by admitting the sender, not hostile input."""
        if i % 3000 == 1499:
            return "oversized", self.oversized()
        names = [k for k, _, w in self.kinds if w]
        weights = [w for _, _, w in self.kinds if w]
        table = dict((k, f) for k, f, _ in self.kinds)
        while True:
            kind = self.rng.choices(names, weights)[0]
            body = table[kind]()
            if not _is_join_request(body):
                return kind, body

    # -- helpers

    def valid(self) -> bytes:
        return self.rng.choice(self.history)

    def origin(self) -> str:
        return self.rng.choice(self.fakes)

    def op(self) -> Op:
        r = self.rng
        key = r.choice(self.keys) if self.keys and r.random() < 0.5 else f"k{r.randrange(50)}"
        return r.choice([
            Op((key,), ObjType.PNCOUNTER, Kind.COUNTER_ADD, p=r.randrange(1, 10)),
            Op((key,), ObjType.LWW_REGISTER, Kind.REGISTER_SET, value="v", timestamp=1),
            Op((key,), ObjType.ORSET, Kind.SET_ADD, value=r.randrange(100)),
            Op((key, "f"), ObjType.EWFLAG, Kind.FLAG_ENABLE)])

    def gapped(self, ops: list[Op], deps: Clock | None = None) -> Batch:
        """A batch that waits forever: a fake origin at a huge seq, or a real one far ahead."""
        r = self.rng
        n = len(ops)
        if r.random() < 0.3 and self.real:
            origin = r.choice(self.real)
            ahead = r.choice([2**32, 2**62, MAX_SEQ - n + 1 - self.clock[origin]])
            first = self.clock[origin] + ahead
        else:
            origin = self.origin()
            first = r.choice([2, 1000, 2**32, 2**62, 2**63 - n, r.randrange(2, 2**63 - n)])
        return Batch(origin, max(first, 2), deps or {}, ops)

    def clock_of(self, size: int, huge: bool) -> Clock:
        r = self.rng
        return {n: (r.randrange(2**62, MAX_SEQ) if huge else r.randrange(1, 2**20))
                for n in r.sample(self.names, size)}

    # -- kinds

    def random_bytes(self) -> bytes:
        r = self.rng
        return r.randbytes(r.choice([0, 1, 2, r.randrange(3, 64), r.randrange(64, 512), 4096]))

    def truncated(self) -> bytes:
        m = self.valid() if self.rng.random() < 0.5 else codec.encode_batch(
            self.gapped([self.op() for _ in range(self.rng.randrange(1, 4))]))
        return m[: self.rng.randrange(len(m))]

    def bit_flip(self) -> bytes:
        r = self.rng
        m = bytearray(self.valid() if r.random() < 0.5 else codec.encode_batch(
            self.gapped([self.op()])))
        for _ in range(r.randrange(1, 9)):
            i = r.randrange(len(m) * 8)
            m[i // 8] ^= 1 << (i % 8)
        return bytes(m)

    def raw_protobuf(self) -> bytes:
        r = self.rng
        body = self.valid()
        choice = r.randrange(8)
        if choice == 0:  # another version
            return pb_field(1, r.choice([0, 2, 99, 2**32 - 1])) + body[2:]
        if choice == 1:  # the batch as a varint, a fixed64, a fixed32
            return pb_field(1, 1) + pb_field(2, r.randrange(2**40), r.choice([0, 1, 5]))
        if choice == 2:  # unknown fields only
            return pb_field(1, 1) + pb_field(r.randrange(4, 2**20), r.randbytes(8))
        if choice == 3:  # a batch whose fields have the wrong wire types
            inner = pb_field(1, 7) + pb_field(2, b"seq") + pb_field(4, 3)
            return pb_field(1, 1) + pb_field(2, inner)
        if choice == 4:  # a string that is not UTF-8
            inner = pb_field(1, b"\xff\xfe" + r.randbytes(4)) + pb_field(2, 5)
            return pb_field(1, 1) + pb_field(3, inner)
        if choice == 5:  # deeply nested length-delimited garbage
            inner = r.randbytes(4)
            for _ in range(r.randrange(10, 200)):
                inner = pb_field(r.randrange(1, 20), inner)
            return pb_field(1, 1) + inner
        if choice == 6:  # valid message then trailing garbage fields
            return body + pb_field(r.randrange(1, 5), r.randbytes(r.randrange(1, 32)))
        return pb_field(1, 1)  # an envelope with no body

    def bad_operation(self) -> bytes:
        r = self.rng
        o = self.origin()
        key = (r.choice(self.keys) if self.keys else "k",)
        bad = [
            [Op(key, ObjType.ORSET, Kind.COUNTER_ADD, p=1)],  # wrong type for the action
            [Op(key, ObjType.GCOUNTER, Kind.COUNTER_ADD, n=1)],  # decrementing a gcounter
            [Op(key, ObjType.PNCOUNTER, Kind.COUNTER_ADD, p=2**64 - 1)],  # amount > 2**63-1
            [Op(key, ObjType.LWW_REGISTER, Kind.REGISTER_SET, value=math.nan)],  # NaN
            [Op((), ObjType.PNCOUNTER, Kind.COUNTER_ADD, p=1)],  # no key
            [Op(("a",) * (MAX_DEPTH + 1 + r.randrange(50)), ObjType.EWFLAG, Kind.FLAG_ENABLE)],
            [Op(("a", ""), ObjType.EWFLAG, Kind.FLAG_ENABLE)],  # an empty name
            [Op((), ObjType.ORMAP, Kind.MAP_REMOVE, field="")],  # a remove of no field
            [Op((), ObjType.ORMAP, Kind.MAP_REMOVE, field="x",
                seen={"r": MAX_SEQ + 1 + r.randrange(2**62)})],
            [],  # an empty batch
        ]
        ops = r.choice(bad)
        first = r.choice([1, 2, 2**62, MAX_SEQ, MAX_SEQ + 1, 2**64 - 1])
        if r.random() < 0.2:  # a batch whose last seq passes 2**63-1
            first, ops = MAX_SEQ, [self.op(), self.op()]
        if r.random() < 0.1:
            o = "" if r.random() < 0.5 else "o" * (codec.MAX_ID + 1)
        return codec.encode_batch(Batch(o, first, {}, ops))

    def type_conflict(self) -> bytes:
        """A fake origin that saw everything (deps = the group's clock) writes an existing
        key with another type: every replica rejects it (TypeConflict)."""
        r = self.rng
        key = r.choice(self.keys) if self.keys else "k"
        ops = [Op((key,), t, k, value=1, p=1) for t, k in r.sample([
            (ObjType.LWW_REGISTER, Kind.REGISTER_SET), (ObjType.PNCOUNTER, Kind.COUNTER_ADD),
            (ObjType.ORSET, Kind.SET_ADD), (ObjType.EWFLAG, Kind.FLAG_ENABLE),
            (ObjType.MV_REGISTER, Kind.REGISTER_SET)], 1)]
        return codec.encode_batch(Batch(f"fuzz-tc-{uuid.UUID(int=r.getrandbits(128)).hex}", 1,
                                        dict(self.clock), ops))

    def huge_clock(self) -> bytes:
        r = self.rng
        choice = r.randrange(3)
        if choice == 0:  # waits on thousands of forged dependencies
            return codec.encode_batch(self.gapped([self.op()],
                                                  self.clock_of(r.randrange(1000, 3000), True)))
        if choice == 1:  # a dependency beyond 2**63-1
            deps = pb_field(1, b"ghost") + pb_field(2, MAX_SEQ + 1 + r.randrange(2**62))
            batch = (pb_field(1, self.origin().encode()) + pb_field(2, 1) + pb_field(3, deps)
                     + pb_field(4, pb_field(1, b"k") + pb_field(2, 2) + pb_field(10, b"\x08\x01")))
            return pb_field(1, 1) + pb_field(2, batch)
        entry = pb_field(1, b"twice") + pb_field(2, 5)  # one replica named twice
        batch = pb_field(1, b"o") + pb_field(2, 1) + pb_field(3, entry) + pb_field(3, entry)
        return pb_field(1, 1) + pb_field(2, batch)

    def gap(self) -> bytes:
        n = self.rng.choice([1, 1, 3])
        return codec.encode_batch(self.gapped([self.op() for _ in range(n)]))

    def oversized(self) -> bytes:
        r = self.rng
        size = r.randrange(1 << 20, 2 << 20)
        choice = r.randrange(3)
        if choice == 0:
            return r.randbytes(size)
        op = Op(("big",), ObjType.LWW_REGISTER, Kind.REGISTER_SET, value=r.randbytes(size),
                timestamp=1)
        m = codec.encode_batch(self.gapped([op]))
        return m if choice == 1 else m[: len(m) - r.randrange(1, 1000)]

    def heartbeat(self) -> bytes:
        r = self.rng
        choice = r.randrange(4)
        if choice == 0:  # a valid heartbeat with a huge clock (thousands of entries)
            return codec.encode_heartbeat(Heartbeat(self.origin(),
                                                    self.clock_of(r.randrange(1, 3000), True)))
        if choice == 1:  # counters beyond 2**63-1
            e = pb_field(1, r.choice(self.real or ["r"]).encode()) + pb_field(2, 2**64 - 1)
            return pb_field(1, 1) + pb_field(3, pb_field(1, self.origin().encode())
                                             + pb_field(2, e))
        if choice == 2:  # no origin
            return pb_field(1, 1) + pb_field(3, pb_field(3, 1))
        return codec.encode_heartbeat(Heartbeat(self.origin(), {o: MAX_SEQ for o in self.real}))

    def retire(self) -> bytes:
        name = f"fuzz-unknown-{uuid.UUID(int=self.rng.getrandbits(128)).hex}"
        return codec.encode_heartbeat(Heartbeat(name, {}, retired=True))

    def replay(self) -> bytes:
        return self.valid()

    def from_corpus(self) -> bytes:
        return self.rng.choice(self.corpus)


class Oracle:
    """Predicts what a replica (with the recorded state) does with each hostile message."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.base = replica.snapshot()
        self.scratch = Replica.from_snapshot(self.base, replica_id="fuzz-scratch")
        self.outcomes: collections.Counter[str] = collections.Counter()

    def would_apply(self, data: bytes) -> bool:
        """True when ``data`` is a valid batch the replica would deliver and apply."""
        try:
            msg = codec.decode(data)
        except InvalidMessage:
            return False
        if isinstance(msg, Heartbeat):
            return False
        clock = self.replica.clock
        have = clock.get(msg.origin, 0)
        if msg.last_seq <= have or have < msg.first_seq - 1:
            return False
        if any(clock.get(r, 0) < s for r, s in msg.deps.items()):
            return False
        try:  # deliverable: does validation reject it?
            self.scratch.receive(data)
        except InvalidMessage:
            return False  # rejected; the scratch replica is unchanged
        self.scratch = Replica.from_snapshot(self.base, replica_id="fuzz-scratch")
        return True

    def take(self, data: bytes) -> str | None:
        """Give ``data`` to the oracle; the dead-letter reason, or None if not rejected."""
        held = self.replica.buffered
        dups = self.replica.stats["duplicates"]
        try:
            self.replica.receive(data)
        except InvalidMessage as e:
            self.outcomes[f"rejected:{e.reason}"] += 1
            return e.reason
        except BufferFull as e:
            reason = "gap-cap" if isinstance(e, WaitingCapReached) else "buffer-full"
            self.outcomes[f"rejected:{reason}"] += 1
            return reason
        if self.replica.buffered > held:
            self.outcomes["held"] += 1
        elif self.replica.stats["duplicates"] > dups:
            self.outcomes["duplicate"] += 1
        else:
            self.outcomes["accepted (heartbeat/retire)"] += 1
        return None


# ---------------------------------------------------------------- replica processes


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    say(f"fuzz: timed out after {timeout:.0f}s waiting for {what}")
    return False


# ---------------------------------------------------------------- the broker side


async def read_oracle(url: str, s: Settings, clock: Clock, oracle: Replica,
                      timeout: float) -> list[bytes]:
    """Feed the group's stream to ``oracle`` until it has ``clock``; the bodies read."""
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=1000)
        stream = await ch.get_queue(Topology.of(s).stream)
        bodies: list[bytes] = []
        done = asyncio.Event()

        async def take(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            bodies.append(m.body)
            with contextlib.suppress(InvalidMessage, BufferFull):
                oracle.receive(m.body)
            await m.ack()
            if all(oracle.clock.get(r, 0) >= n for r, n in clock.items()):
                done.set()

        tag = await stream.consume(take, arguments={"x-stream-offset": "first"})
        await asyncio.wait_for(done.wait(), timeout)
        await stream.cancel(tag)
        return bodies


async def publish_all(url: str, s: Settings, bodies: Iterator[bytes], total: int) -> None:
    """Publish to the group's exchange with confirms, 1,000 in flight per round."""
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(Topology.of(s).exchange)
        sent, last, start = 0, 0.0, time.monotonic()
        while True:
            chunk = [b for _, b in zip(range(1000), bodies, strict=False)]
            if not chunk:
                break
            await asyncio.gather(*(ex.publish(aio_pika.Message(b, app_id="crdt-ops-fuzz"),
                                              routing_key="", timeout=60) for b in chunk))
            sent += len(chunk)
            if time.monotonic() - last > 1 or sent == total:
                last = time.monotonic()
                say(f"fuzz: published {sent:,}/{total:,} "
                    f"({sent / max(last - start, 1e-9):,.0f}/s)")


async def queue_depths(url: str, names: list[str]) -> list[int]:
    conn = await aio_pika.connect(url)
    async with conn:
        out = []
        for n in names:
            ch = await conn.channel()
            q = await ch.declare_queue(n, passive=True)
            out.append(q.declaration_result.message_count or 0)
        return out


async def drain_dead(url: str, s: Settings, expect: int, timeout: float
                     ) -> tuple[int, collections.Counter[str]]:
    """Consume ``crdt.<group>.dead``: (messages, count per x-crdt-reason; '(none)' if absent)."""
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=2000)
        q = await ch.declare_queue(Topology.of(s).dead_letter_queue, durable=True)
        reasons: collections.Counter[str] = collections.Counter()
        quiet = time.monotonic()
        got = asyncio.Event()

        async def take(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal quiet
            reasons[str((m.headers or {}).get("x-crdt-reason", "(none)"))] += 1
            quiet = time.monotonic()
            got.set()

        tag = await q.consume(take, no_ack=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            n = sum(reasons.values())
            if (n >= expect and time.monotonic() - quiet > 1.0) or time.monotonic() - quiet > 15:
                break
        await q.cancel(tag)
        return sum(reasons.values()), reasons


# ---------------------------------------------------------------- atheris


def atheris_corpus(seed_messages: list[bytes], seconds: float,
                   work: Path) -> tuple[list[bytes], list[Path]]:
    """Run atheris (coverage-guided, libFuzzer) over ``Replica.receive`` for ``seconds``
    in a child process, seeded with valid messages; return the corpus it kept and the
    inputs it found crashing ``receive`` (any exception but InvalidMessage/BufferFull)."""
    try:
        import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        say("fuzz: atheris is not installed (pip install atheris); its corpus is left out")
        return [], []
    corpus = work / "atheris-corpus"
    corpus.mkdir(exist_ok=True)
    for i, m in enumerate(seed_messages[:200]):
        (corpus / f"seed-{i}").write_bytes(m)
    say(f"fuzz: atheris over Replica.receive for {seconds:.0f}s ...")
    subprocess.run([sys.executable, "-m", "tools.fuzz", "--atheris-child", str(corpus),
                    f"-max_total_time={int(seconds)}", "-max_len=4096", "-seed=1",
                    f"-artifact_prefix={work}/atheris-",
                    "-print_final_stats=0"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=seconds + 120, check=False)
    found = [p.read_bytes() for p in sorted(corpus.iterdir()) if not p.name.startswith("seed-")]
    crashes = sorted(work.glob("atheris-crash-*"))
    say(f"fuzz: atheris kept {len(found)} inputs" +
        (f"; {len(crashes)} CRASHING inputs: {', '.join(map(str, crashes))}" if crashes else ""))
    return found, crashes


def _atheris_child(argv: list[str]) -> None:
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    from crdt_ops.replica import Replica as Target

    atheris.instrument_all()  # crdt_ops is loaded already (this module imports it)
    base = Target("a")
    base.counter("hits").increment()
    base.set("nodes").add("n1")
    base.map("containers/c1").register("power_desired").set("on")
    snap = base.snapshot()

    def one(data: bytes) -> None:
        r = Target.from_snapshot(snap, replica_id="t")
        with contextlib.suppress(InvalidMessage, BufferFull):
            r.receive(data)

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> int:
    from tools.bench.broker import delete_group

    url = args.amqp_url
    group = f"fuzz-{uuid.uuid4().hex[:10]}"
    s = Settings(amqp_url=url, group=group)
    work = Path(tempfile.mkdtemp(prefix=f"crdt-ops-{group}-"))
    rids = [f"r{i}" for i in range(args.replicas)]
    common = ["--ops", str(args.ops), "--per-write", "10", "--heartbeat-s", "1",
              "--gap-timeout-s", str(args.gap_timeout_s),
              "--max-waiting-per-origin", str(args.max_waiting_per_origin)]
    say(f"fuzz: group {group}, {args.replicas} replicas, work dir {work}")
    procs: list[ReplicaProcess] = []
    # SIGTERM (e.g. a CI timeout) stops like Ctrl-C: the replicas and the group are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        procs = [ReplicaProcess(url, group, rid, work, [*common, "--seed", str(i),
                                                        "--more-on-signal", str(args.more)]).start()
                 for i, rid in enumerate(rids)]
        issued = dict.fromkeys(rids, args.ops)
        if not wait_for(lambda: converged(procs, issued), 120, "the replicas to converge"):
            return _fail(procs, "the replicas did not converge before the fuzzing")
        reports = [p.report() for p in procs]
        state0, clock0 = reports[0]["state"], reports[0]["clock"]
        rss0 = [p.rss_kb() for p in procs]

        oracle_replica = Replica("fuzz-oracle", max_waiting_per_origin=args.max_waiting_per_origin)
        history = run_stoppable(read_oracle(url, s, clock0, oracle_replica, 60))
        oracle = Oracle(oracle_replica)
        corpus, receive_crashes = (atheris_corpus(history, args.atheris_seconds, work)
                                   if args.atheris_seconds else ([], []))
        gen = Hostile(args.seed, history, clock0, state0, corpus)
        kinds: collections.Counter[str] = collections.Counter()
        rejected = 0
        skipped = 0

        def bodies() -> Iterator[bytes]:
            nonlocal rejected, skipped
            i = 0
            while i < args.messages:
                kind, body = gen.draw(i)
                if oracle.would_apply(body):
                    skipped += 1
                    continue
                if oracle.take(body) is not None:
                    rejected += 1
                kinds[kind] += 1
                i += 1
                yield body

        start = time.monotonic()
        run_stoppable(publish_all(url, s, bodies(), args.messages))
        published_s = time.monotonic() - start
        per_replica = rejected
        say(f"fuzz: published {args.messages:,} in {published_s:.1f}s; each replica should "
            f"dead-letter {per_replica:,}; waiting for the replicas to take them ...")

        queues = [Topology.of(s).queue(r) for r in rids]

        def drained() -> bool:
            depths = run_stoppable(queue_depths(url, queues))
            dead = [p.report().get("dead_lettered", 0) for p in procs]
            say(f"fuzz: queues {depths}, dead-lettered {dead} of {per_replica:,} each")
            return not any(depths) and all(d >= per_replica for d in dead)

        wait_for(drained, args.timeout, "the replicas to take the hostile messages")
        time.sleep(2)  # the last batch's acks and reports
        after = [p.report() for p in procs]
        state_changed = any(r.get("state") != state0 or r.get("clock") != clock0 for r in after)
        rss1 = [p.rss_kb() for p in procs]

        crashes = sum(not p.alive() for p in procs)
        for p in procs:
            if not p.alive():
                say(f"fuzz: replica {p.replica_id} died (exit {p.returncode}); log {p.log}")
        if procs[0].alive():
            procs[0].signal(signal.SIGUSR1)
        issued[rids[0]] += args.more
        live = [p for p in procs if p.alive()]
        if not wait_for(lambda: converged(live, issued, idle=False), 120,
                        "the legitimate operations"):
            stalled = [p.replica_id for p in live if p.report().get("state", {}).get(
                f"issued/{rids[0]}") != issued[rids[0]]]
            say(f"fuzz: replicas not consuming any more: {stalled}")
            crashes += len(stalled) or 1

        if receive_crashes:  # receive() raised what no consumer expects: a crash
            crashes += len(receive_crashes)
            args.keep = True
        k, reasons = run_stoppable(drain_dead(url, s, per_replica * len(procs), 120))
        print(f"replicas={len(procs)} max_waiting_per_origin={args.max_waiting_per_origin} "
              f"publish_s={published_s:.1f} total_s={time.monotonic() - start:.1f}")
        print("sent: " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
        print("oracle (per replica): " + " ".join(
            f"{k}={v}" for k, v in sorted(oracle.outcomes.items()))
            + f" not-sent(would apply)={skipped}")
        print("dead letters by x-crdt-reason: " + " ".join(
            f"{k}={v}" for k, v in sorted(reasons.items())))
        for p, a, b, r in zip(procs, rss0, rss1, after, strict=True):
            print(f"{p.replica_id}: rss_kb before={a} after={b} buffered={r.get('buffered')} "
                  f"dead_lettered={r.get('dead_lettered')}")
        bad = []
        if k != per_replica * len(procs):
            bad.append(f"dead_lettered {k} != replicas x oracle rejections "
                       f"{per_replica * len(procs)}")
        if reasons.get("(none)"):
            bad.append(f"{reasons['(none)']} dead letters without x-crdt-reason")
        print("check: " + ("; ".join(bad) if bad else "ok"))
        print(f"messages={args.messages} dead_lettered={k} crashes={crashes} "
              f"state_changed={'true' if state_changed else 'false'}")
        return 1 if crashes or state_changed or bad else 0
    finally:
        for p in procs:
            p.stop()
        delete_group(url, group, rids, say)
        if args.keep:
            say(f"fuzz: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _fail(procs: list[ReplicaProcess], why: str) -> int:
    say(f"fuzz: {why}")
    for p in procs:
        say(f"--- {p.replica_id} ---\n{p.tail(2000)}")
    return 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=100_000, help="hostile messages (N)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--ops", type=int, default=200, help="seeded operations per replica")
    parser.add_argument("--more", type=int, default=5,
                        help="legitimate operations issued after the hostile ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-waiting-per-origin", type=int, default=100)
    parser.add_argument("--gap-timeout-s", type=float, default=10.0)
    parser.add_argument("--atheris-seconds", type=float, default=0,
                        help="run atheris this long first and send its corpus too (0: no)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for the replicas to take the messages")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, stores)")
    parser.add_argument("--amqp-url", default=os.environ.get(
        "CRDT_OPS_AMQP_URL", os.environ.get("AMQP_URL", Settings.amqp_url)))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--atheris-child":
        _atheris_child(sys.argv[2:])
    else:
        p = argparse.ArgumentParser(prog="crdt-ops fuzz")
        add_arguments(p)
        raise SystemExit(run(p.parse_args()))
