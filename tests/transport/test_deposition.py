"""A store marked deposed (its process was cut off while a standby took over) is set aside
when it is opened again, and the replica starts with a new one: what it committed while
cut off is never sent (:mod:`crdt_ops.transport.deposition`). No broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crdt_ops.transport import deposition
from crdt_ops.transport.amqp.holder import Holder
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.store import Store
from crdt_ops.transport.topology import Topology


def _settings(tmp_path: Path, replica_id: str = "") -> Settings:
    return Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", group="g",
                    replica_id=replica_id, store=str(tmp_path / "logic.sqlite"),
                    membership="open")


def _written(tmp_path: Path, replica_id: str = "", depose: bool = True) -> str:
    """A replica that wrote 3 operations to its store, marked deposed (``depose``) and
    closed; its id."""
    durable = DurableReplica.open(_settings(tmp_path, replica_id))
    durable.replica.counter("c").increment(3)
    durable.replica.register("home").set("x")
    durable.replica.register("home").set("y")
    durable.commit()
    assert len(durable.store.unconfirmed()) == 1  # never sent: in the outbox
    if depose:
        assert durable.depose()
    rid = durable.replica_id
    asyncio.run(durable.close())
    return rid


def _asides(tmp_path: Path) -> list[Path]:
    return sorted(p for p in tmp_path.iterdir() if ".deposed-" in p.name)


def test_a_deposed_store_is_set_aside_and_its_replica_starts_anew_under_a_new_id(
        tmp_path: Path) -> None:
    old = _written(tmp_path)
    again = DurableReplica.open(_settings(tmp_path))
    try:
        assert again.replica_id != old and again.replica_id.startswith("replica.")
        assert again.replica.clock == {} and again.store.unconfirmed() == []
        assert again.replaces == (old,)  # to retire once a member
        assert again.aside is not None and again.aside in _asides(tmp_path)
        assert again.set_aside_id == old
        again.replaced_retired(old)
        assert again.replaces == ()
    finally:
        asyncio.run(again.close())
    kept = Store(_asides(tmp_path)[0])
    try:  # whole, to inspect: its unsent operations, and the mark (a replica set aside
        # on it would set it aside again: it is never run again)
        assert len(kept.unconfirmed()) == 1 and deposition.deposed(kept)
        assert kept.get("replica_id") == old.encode()
    finally:
        kept.close()


def test_under_the_same_id_given_again_it_starts_anew_and_retires_nobody(
        tmp_path: Path) -> None:
    _written(tmp_path, "logic.a")
    again = DurableReplica.open(_settings(tmp_path, "logic.a"))
    try:
        assert again.replica_id == "logic.a" and again.replica.clock == {}
        assert again.replaces == () and len(_asides(tmp_path)) == 1
    finally:
        asyncio.run(again.close())


def test_a_store_not_deposed_is_opened_as_it_is(tmp_path: Path) -> None:
    old = _written(tmp_path, depose=False)
    again = DurableReplica.open(_settings(tmp_path))
    try:
        assert again.replica_id == old and again.replica.clock == {old: 3}
        assert again.aside is None and _asides(tmp_path) == []
    finally:
        asyncio.run(again.close())


def test_a_store_of_an_id_the_process_set_aside_elsewhere_is_set_aside_too(
        tmp_path: Path) -> None:
    """One identity per process: its first group's store was set aside (a new id), so
    each other store of the old id is, marked or not (a crash between two marks)."""
    old = _written(tmp_path, depose=False)
    again = DurableReplica.open(_settings(tmp_path, "replica.new"), deposed_id=old)
    try:
        assert again.replica_id == "replica.new" and again.replaces == (old,)
        assert again.replica.clock == {} and len(_asides(tmp_path)) == 1
    finally:
        asyncio.run(again.close())


def test_a_replacement_deposed_before_it_retired_its_predecessor_passes_it_on(
        tmp_path: Path) -> None:
    first = _written(tmp_path)
    second = DurableReplica.open(_settings(tmp_path))  # deposed in its turn, at once
    assert second.replaces == (first,) and second.depose()
    asyncio.run(second.close())
    third = DurableReplica.open(_settings(tmp_path))
    try:
        assert third.replaces == (first, second.replica_id)
        assert len(_asides(tmp_path)) == 2
    finally:
        asyncio.run(third.close())


def test_a_deposed_holder_never_takes_its_queues_again_and_says_so_once() -> None:
    holder = Holder(Topology("g"), "logic.a", "crdt.g.logic.held")
    called: list[str] = []
    holder.on_deposed += [lambda: called.append("first"), lambda: called.append("second")]
    holder.depose()
    holder.depose()
    assert called == ["first", "second"] and holder.sole_lost.is_set()
    # refused before it asks the broker (no connection is touched)
    assert asyncio.run(holder.take(None)) is False  # type: ignore[arg-type]


def test_a_store_that_cannot_take_the_mark_says_what_to_do(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    durable = DurableReplica.open(_settings(tmp_path))
    try:
        durable.store.db.close()  # every statement fails: StoreUnavailable
        assert durable.depose() is False
        assert "move the store aside before this replica starts again" in caplog.text
    finally:
        durable.store.db = durable.store._connect()
        asyncio.run(durable.close())


def test_a_deposed_store_that_cannot_be_moved_aside_is_refused_saying_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _written(tmp_path)

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(deposition.os, "replace", refuse)
    with pytest.raises(OSError, match=r"cannot be moved aside .* move it and its -wal/-shm"):
        DurableReplica.open(_settings(tmp_path))
    monkeypatch.undo()
    again = DurableReplica.open(_settings(tmp_path))  # (once it can: as ever)
    try:
        assert again.aside is not None and again.replica.clock == {}
    finally:
        asyncio.run(again.close())
