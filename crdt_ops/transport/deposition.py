"""A process deposed while it was cut off never sends what it committed meanwhile.

Of the processes of a *sole* principal (the services' logic, a node's worker), one runs
and the others wait as standbys, by an exclusive holder queue on the broker
(:mod:`crdt_ops.transport.amqp.holder`). When the broker drops the running one's
connection (a partition, a frozen process), a standby takes over. The one cut off goes on
deciding from a state that no longer grows, and commits what it decides: a write is
accepted once it is in the store, without the broker. Those operations wait in its
outbox; published when it next ran, they would undo its successor's decisions: a
placement that the successor had made elsewhere would start the container a second time.

The same holds for a process that committed and went down before it sent (killed, its
machine rebooted) while another ran in its place. So a process learns that it was
deposed:

- as it reconnects: its holder queue is taken
  (:attr:`Holder.sole_lost <crdt_ops.transport.amqp.holder.Holder.sole_lost>`); or it is
  free again (the other process stopped before the link came back), and the process's
  read of its groups' streams, from where it stood when it was cut off, shows operations
  of another replica of its principal, while its outbox holds operations the broker
  never confirmed (:mod:`~crdt_ops.transport.amqp.retake`: before it publishes on the new
  connection). A link that broke on the process's side only leaves the broker holding
  its old connection, and both its holder queues, until its heartbeat timeout: the
  process tells that from another process of its principal by its own holder queue,
  which such a process does not hold, and waits
  (:class:`~crdt_ops.transport.amqp.holder.Holder`); a refusal of both that outlasts two
  heartbeat timeouts and 10 s is another process under its replica id (a
  misconfiguration), and deposes it;
- or as it starts again on a used store: its resumed read of the group's stream shows
  operations of another replica of its principal, while its outbox holds operations the
  broker never confirmed (``AmqpNode._refuse_if_superseded``; the
  start raises :class:`~crdt_ops.errors.Deposed`). That read comes before its outbox is
  sent (the nodes of a process with several groups send theirs once every one passed
  it).

Then:

1. it marks each of its stores deposed (:func:`mark`, a disk-synced write: store key
   :data:`DEPOSED`), before anything else, and publishes nothing more (its holder refuses
   to take the queue again);
2. opened again (:meth:`DurableReplica.open <crdt_ops.transport.durable.DurableReplica.open>`),
   a store marked deposed is set aside (:func:`set_aside`: renamed to
   ``<path>.deposed-<UTC time>``, kept for inspection, never opened by a replica again),
   and the replica starts with a new store, as a new replica would: from the group's
   stream, or from a peer's snapshot (``--bootstrap``);
3. under a new replica id (the services' default, when none is given), the new store
   remembers the old id (store key :data:`REPLACES`), and the replica retires it once it
   is a member (:meth:`AmqpNode.retire <crdt_ops.transport.amqp.node.AmqpNode.retire>`:
   stability stops waiting for it after its last operation in the stream). Under the same
   id (``--replica-id`` given), the replica reads the stream from its start, as any new
   store under a used id does, and numbers its next operation after the last one of its
   own it finds there: the ones it never sent had reached nobody. When the stream no
   longer holds its first operations it refuses to start
   (:class:`~crdt_ops.errors.OwnPastMissing`), saying what to do.

Why the operations set aside reached nobody: the broker deletes an exclusive queue when it
closes the connection that held it, after routing what it read of that connection
(RabbitMQ "Queues", exclusive queues; docs/latency.md measures it), and the standby took
the queue after that; the deposed process never publishes on a connection that does not
hold it. What it published and the broker routed before the cut is in the group, as it
would be anyway. The probe and the marker it publishes while it checks (heartbeats, sent
outside its outbox's order) name its own operations only up to the first one the broker
never confirmed (``AmqpNode._clock_message``): named there, they would be gaps that its
peers, and its retirement, wait for for good.

Not covered yet:

- a message the broker confirmed counts as unsent until the store marks it so (with its
  next transaction), and so does one a peer asked for again (the stream lost it) until it
  is confirmed again: a process that went down then, and starts again after another of its
  principal ran, is deposed for it, though the group has it (it runs on as a new replica).
  So is a process stopped while its outbox still held messages the broker had not
  confirmed (a stop waits for them at most 2 s, and only while connected), when another
  ran before it starts again;
- the old id is retired once its replacement is a member, not while that waits as a
  standby; a crash between setting a store aside and recording the old id in the new
  one (:data:`REPLACES`) leaves it for an operator to retire (``crdt-ops retire``);
- a process with a queue of its own (a worker) reads back from 10 s before its last
  commit (as it starts) or before the last time the broker answered it (as it
  reconnects): a machine whose clock runs further ahead of the broker's may not see the
  other one's first operations.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

from crdt_ops.transport.store import Store, StoreUnavailable
from crdt_ops.transport.store_files import sync_dir, take_lock

log = logging.getLogger(__name__)

#: Store key: this store's replica was deposed while cut off (b"1"); what its outbox holds
#: must never be sent.
DEPOSED = "deposed"
#: Store key: the ids of the deposed replicas this one replaces and has not retired yet,
#: one per line (a replacement deposed in its turn before it retired its own passes them
#: on).
REPLACES = "replaces"
#: The suffixes SQLite gives a database's other files (WAL mode).
SQLITE_SIDE_FILES = ("-wal", "-shm")


def mark(store: Store, replica_id: str, group: str) -> bool:
    """Mark ``store`` deposed (synced to the disk before it returns); True if it took the
    mark. A store that fails is said in an error: started again on it, the replica would
    send what it committed while cut off."""
    try:
        store.put(DEPOSED, b"1")
    except StoreUnavailable as e:
        log.error("replica %s of group %s was deposed, and its store %s could not be marked "
                  "so (%s): move the store aside before this replica starts again, or it "
                  "sends what it committed while cut off", replica_id, group, store.path, e)
        return False
    log.warning("replica %s of group %s was deposed (another process of its principal ran "
                "while it was cut off or down): its store %s is marked so, and is set aside "
                "when it is opened again",
                replica_id, group, store.path)
    return True


def deposed(store: Store) -> bool:
    """Whether ``store`` was marked deposed (:func:`mark`)."""
    return store.get(DEPOSED) == b"1"


def replaced(store: Store) -> tuple[str, ...]:
    """The deposed replicas whose stores were set aside for ``store``'s, not retired yet."""
    ids = store.get(REPLACES)
    return tuple(ids.decode().splitlines()) if ids else ()


def replace(store: Store, replica_ids: list[str]) -> None:
    """Record ``replica_ids`` as the deposed replicas ``store``'s is to retire."""
    store.put(REPLACES, "\n".join(replica_ids).encode())


def set_aside(store: Store, now: datetime.datetime | None = None) -> tuple[Store, Path]:
    """Close ``store``, rename its database and SQLite's side files to
    ``<path>.deposed-<UTC time>`` (each keeping its suffix), under the store's lock, and
    open a new, empty store at the path. Returns it and where the old one went.
    Raises OSError, saying what to do, when the files cannot be renamed (the store stays
    closed)."""
    path = store.path
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.deposed-{stamp}")
    store.close()
    try:
        with take_lock(path):  # (no other process opens it meanwhile)
            for suffix in ("", *SQLITE_SIDE_FILES):
                old = Path(f"{path}{suffix}")
                if old.exists():
                    os.replace(old, f"{aside}{suffix}")
            sync_dir(path.parent)  # the renames on the disk before the new store is written
    except OSError as e:
        raise OSError(e.errno, f"store {path} was deposed (what it holds must never be "
                      f"sent) and cannot be moved aside ({e.strerror}): move it and its "
                      f"{'/'.join(SQLITE_SIDE_FILES)} files away by hand, then start again") \
            from e
    return Store(path), aside
