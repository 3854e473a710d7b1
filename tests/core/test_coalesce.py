"""Joining consecutive batches of one origin into one message (``codec.coalesce``, what
the publisher does with an outbox backlog): a replica that receives the joined messages,
in any order and alongside the originals, ends where one receiving the originals does, and
a batch that depends on something new is never joined."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_ops import Replica
from crdt_ops.ops import Batch
from crdt_ops.wire import codec

# a program: ("w", key) a write at the writer; ("o", key) a write at the other replica (which
# has received all the writer's messages so far), delivered to the writer before its next
# write; ("x", key) the writer removes a map (an observed-remove: applied before the writes
# it observed, it would miss them); ("hb",) a heartbeat of the writer
STEPS = st.lists(st.one_of(st.tuples(st.sampled_from(["w", "o", "x"]), st.integers(0, 3)),
                           st.just(("hb",))), min_size=1, max_size=30)


def _write(r: Replica, key: int, n: int) -> None:
    r.counter(f"c{key}").increment(n)
    r.map(f"m{key}").register("v").set(f"{r.replica_id}-{n}")


def _run(steps: list[tuple[object, ...]]) -> tuple[list[bytes], list[bytes], Replica]:
    w, o = Replica("w"), Replica("o")
    sent: list[bytes] = []  # the writer's messages, in order (its outbox)
    others: list[bytes] = []
    others_seen: list[bytes] = []
    for n, step in enumerate(steps):
        if step[0] == "w":
            _write(w, int(step[1]), n)  # type: ignore[call-overload]
            sent += w.outgoing()
        elif step[0] == "o":
            for m in sent[len(others_seen):]:
                o.receive(m)
            others_seen = list(sent)
            _write(o, int(step[1]), n)  # type: ignore[call-overload]
            for m in o.outgoing():
                others.append(m)
                w.receive(m)
        elif step[0] == "x":
            if f"m{step[1]}" in w.state():
                w.remove(f"m{step[1]}")
                sent += w.outgoing()
        else:
            w.heartbeat()
            sent += w.outgoing()
    return sent, others, w


@settings(max_examples=200, deadline=None)
@given(steps=STEPS, seed=st.integers(0, 2**32 - 1))
def test_joined_messages_converge_like_the_originals(steps: list[tuple[object, ...]],
                                                     seed: int) -> None:
    sent, others, w = _run(steps)
    joined = codec.coalesce(sent)
    assert sum(n for n, _ in joined) == len(sent)
    rng = random.Random(seed)
    plain, merged, mixed = Replica("r1"), Replica("r2"), Replica("r3")
    some = rng.sample(sent, k=min(3, len(sent)))  # originals too (a round published again)
    for r, msgs in ((plain, sent), (merged, [m for _, m in joined]),
                    (mixed, [m for _, m in joined] + some)):
        msgs = msgs + others
        rng.shuffle(msgs)
        for m in msgs:
            r.receive(m)
    assert merged.state() == mixed.state() == plain.state() == w.state()
    assert merged.clock == mixed.clock == plain.clock


def test_batches_with_nothing_new_in_between_join_into_one() -> None:
    sent, _, _ = _run([("w", 0), ("w", 1), ("w", 0), ("w", 2)])
    assert len(sent) == 4
    [(n, body)] = codec.coalesce(sent)
    batch = codec.decode(body)
    assert n == 4 and isinstance(batch, Batch)
    assert (batch.first_seq, batch.last_seq) == (codec.decode(sent[0]).first_seq,  # type: ignore[union-attr]
                                                 codec.decode(sent[-1]).last_seq)  # type: ignore[union-attr]


def test_a_batch_that_depends_on_something_new_starts_a_message() -> None:
    sent, _, _ = _run([("w", 0), ("w", 1), ("o", 0), ("w", 2), ("w", 3), ("hb",), ("w", 0)])
    assert [n for n, _ in codec.coalesce(sent)] == [2, 2, 1, 1]


def test_max_ops_and_what_is_not_a_batch() -> None:
    sent, _, _ = _run([("w", 0)] * 5)
    sizes = [len(codec.decode(m).ops) for m in sent]  # type: ignore[union-attr]
    joined = codec.coalesce(sent, max_ops=4)
    assert sizes == [1, 2, 2, 2, 2] and [n for n, _ in joined] == [2, 2, 1]
    assert [len(codec.decode(m).ops) for _, m in joined] == [3, 4, 2]  # type: ignore[union-attr]
    assert codec.coalesce([b"not a message", sent[0]]) == [(1, b"not a message"), (1, sent[0])]
    assert codec.coalesce([]) == []
