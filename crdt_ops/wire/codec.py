"""Protobuf <-> Python for messages and snapshots.

The only module that touches the generated code; everything else sees
:mod:`crdt_ops.ops` objects. ``decode`` validates everything a replica relies
on and raises :class:`InvalidMessage` (with a reason tag) for anything else.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.message import DecodeError

from crdt_ops.clock import Clock, Dot, Spans
from crdt_ops.errors import InvalidMessage
from crdt_ops.hlc import MAX_TIMESTAMP
from crdt_ops.ops import (
    KIND_TARGETS,
    MAX_AMOUNT,
    MAX_DEPTH,
    Batch,
    CounterFloor,
    Heartbeat,
    Kind,
    ObjType,
    Op,
)
from crdt_ops.snapshot import Snapshot
from crdt_ops.subgroups import SEP, channel
from crdt_ops.types import (
    Crdt,
    EWFlag,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    new_object,
)
from crdt_ops.types.ormap import Field
from crdt_ops.types.settled import entry_type, freeze, frozen_items, is_frozen
from crdt_ops.values import Value, value_key
from crdt_ops.wire import crdt_pb2 as pb
from crdt_ops.wire import frozen

VERSION = 1
#: The most a message this library produces may hold, bytes (about: see :func:`op_bytes`).
#: RabbitMQ refuses a larger message than its ``max_message_size`` (128 MiB by default up
#: to 3.13, 16 MiB from 4.0: the RabbitMQ "Configuration" guide), and a publisher whose
#: message is refused would retry it for ever, every later operation of its writer behind
#: it. So a local write that would not fit is refused (:class:`~crdt_ops.errors.InvalidValue`)
#: and batches are sealed and joined below this.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_intern = sys.intern
MAX_SEQ = 2**63 - 1
MAX_ID = 256
_OBJ_TYPES = {t.value: t for t in ObjType}
_COUNTERS = (ObjType.GCOUNTER, ObjType.PNCOUNTER)


def _bad(reason: str, detail: str) -> InvalidMessage:
    return InvalidMessage(reason, detail)


# ---------------------------------------------------------------- values


def _put_value(msg: pb.Value, v: Value) -> None:
    if v is None:
        msg.null_value = True
    elif v is True or v is False:
        msg.bool_value = v
    elif isinstance(v, int):
        msg.int_value = v
    elif isinstance(v, float):
        msg.float_value = v
    elif isinstance(v, str):
        msg.str_value = v
    else:
        msg.bytes_value = v


def _get_value(msg: pb.Value) -> Value:
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise _bad("bad-value", "a value has none of its fields set")
    if kind == "null_value":
        return None
    v: Value = getattr(msg, kind)
    if kind == "float_value" and math.isnan(v):  # type: ignore[arg-type]
        raise _bad("bad-value", "NaN is not a replicable value")
    if kind == "str_value" and len(v) <= frozen.SHARED_VALUE:  # type: ignore[arg-type]
        return _intern(v)  # type: ignore[arg-type]
    return v


# ---------------------------------------------------------------- ids, dots, clocks


def _id(value: str, what: str) -> str:
    if not value or len(value) > MAX_ID:
        raise _bad("bad-id", f"{what} must be 1..{MAX_ID} characters, got {len(value)}")
    return _intern(value)


def _seq(value: int, what: str) -> int:
    if not 1 <= value <= MAX_SEQ:
        raise _bad("bad-seq", f"{what} must be in 1..2^63-1, got {value}")
    return value


def _timestamp(value: int, what: str) -> int:
    if value > MAX_TIMESTAMP:  # (uint64 on the wire: never negative)
        raise _bad("bad-timestamp", f"{what} must be at most 2^63-1, got {value}")
    return value


def _put_clock(entries: Any, clock: Mapping[str, int]) -> None:
    for r, s in clock.items():
        e = entries.add()
        e.replica = r
        e.seq = s


def _get_clock(entries: Iterable[pb.ClockEntry], what: str, zeros: bool = False) -> Clock:
    """A clock's entries; one of 0 is dropped (nothing delivered), or kept with ``zeros``
    (a retirement of a replica that never wrote: its last operation is 0)."""
    out: Clock = {}
    for e in entries:
        r, s = e.replica, e.seq
        if not r or len(r) > MAX_ID or s > MAX_SEQ or r in out:
            _id(r, f"{what} replica")
            _seq(s, f"{what} seq")
            raise _bad("bad-clock", f"{what} names {r!r} twice")
        if s or zeros:
            out[_intern(r)] = s
    return out


#: The most ranges a heartbeat's ``wants`` may name (one per channel).
MAX_WANTS = 256


def _put_spans(entries: Any, spans: Mapping[str, tuple[int, int]]) -> None:
    for ch, (first, last) in spans.items():
        e = entries.add()
        e.channel, e.first, e.last = ch, first, last


def _get_spans(entries: Sequence[pb.SeqRange], what: str) -> Spans:
    """Ranges of sequence numbers by channel: each 1 <= first <= last, a channel once,
    at most :data:`MAX_WANTS` of them."""
    if len(entries) > MAX_WANTS:
        raise _bad("bad-wants", f"{what} names {len(entries)} ranges, more than {MAX_WANTS}")
    out: Spans = {}
    for e in entries:
        ch = _id(e.channel, f"{what} channel")
        first, last = _seq(e.first, f"{what} first"), _seq(e.last, f"{what} last")
        if first > last or ch in out:
            raise _bad("bad-wants", f"{what} names {ch!r} twice or {first}..{last} (first "
                       "after last)")
        out[ch] = (first, last)
    return out


def _put_dots(entries: Any, dots: Iterable[Dot]) -> None:
    for r, s in dots:
        d = entries.add()
        d.replica = r
        d.seq = s


def _get_dots(entries: Iterable[pb.Dot]) -> tuple[Dot, ...]:
    out = []
    for d in entries:
        r, s = d.replica, d.seq
        if not r or len(r) > MAX_ID or not 1 <= s <= MAX_SEQ:
            _id(r, "dot replica")
            _seq(s, "dot seq")
        out.append((_intern(r), s))
    return tuple(out)


# ---------------------------------------------------------------- operations


def _put_op(msg: pb.Operation, op: Op) -> None:
    msg.path.extend(op.path)
    msg.type = op.type.value  # type: ignore[assignment]
    k = op.kind
    if k is Kind.COUNTER_ADD:
        a = msg.counter_add
        a.p = op.p
        a.n = op.n
    elif k is Kind.REGISTER_SET:
        r = msg.register_set
        _put_value(r.value, op.value)
        r.timestamp = op.timestamp
        _put_dots(r.observed, op.observed)
    elif k is Kind.SET_ADD or k is Kind.SET_REMOVE:
        s = msg.set_add if k is Kind.SET_ADD else msg.set_remove
        _put_value(s.element, op.value)
        _put_dots(s.observed, op.observed)
    elif k is Kind.FLAG_ENABLE or k is Kind.FLAG_DISABLE:
        flag = msg.flag_enable if k is Kind.FLAG_ENABLE else msg.flag_disable
        flag.SetInParent()
        _put_dots(flag.observed, op.observed)
    elif k is Kind.ADMIT:
        msg.admit.replica = str(op.value)
    else:
        m = msg.map_remove
        m.field = op.field
        _put_clock(m.seen, op.seen)
        for f in op.floors:
            cf = m.counters.add()
            cf.path.extend(f.path)
            cf.type = f.type.value  # type: ignore[assignment]
            cf.origin = f.origin
            cf.p = f.p
            cf.n = f.n


_ACTION_KIND = {
    "counter_add": Kind.COUNTER_ADD, "register_set": Kind.REGISTER_SET,
    "set_add": Kind.SET_ADD, "set_remove": Kind.SET_REMOVE,
    "flag_enable": Kind.FLAG_ENABLE, "flag_disable": Kind.FLAG_DISABLE,
    "map_remove": Kind.MAP_REMOVE, "admit": Kind.ADMIT,
}


def _get_type(value: int, what: str) -> ObjType:
    t = _OBJ_TYPES.get(value)
    if t is None:
        raise _bad("bad-type", f"{what} has unknown object type {value}")
    return t


def _get_path(names: Sequence[str]) -> tuple[str, ...]:
    path = tuple(map(_intern, names))
    if len(path) > MAX_DEPTH:
        raise _bad("bad-path", f"path has {len(path)} levels (max {MAX_DEPTH})")
    if "" in path:
        raise _bad("bad-path", "a path holds an empty name")
    return path


def _amount(value: int, what: str) -> int:
    if value > MAX_AMOUNT:
        raise _bad("bad-amount", f"{what} {value} exceeds 2^63-1")
    return value


def _get_op(msg: pb.Operation) -> Op:
    action = msg.WhichOneof("action")
    if action is None:
        raise _bad("unknown-operation", "an operation has no known action (newer sender?)")
    kind = _ACTION_KIND[action]
    t = _get_type(msg.type, "an operation")
    if t not in KIND_TARGETS[kind]:
        raise _bad("wrong-type", f"{action} cannot apply to a {t.name}")
    path = _get_path(msg.path)
    if kind is Kind.MAP_REMOVE:
        m = msg.map_remove
        floors = []
        for f in m.counters:
            ft = _get_type(f.type, "a counter floor")
            if ft not in _COUNTERS:
                raise _bad("wrong-type", f"a counter floor names a {ft.name}")
            floors.append(CounterFloor(_get_path(f.path), ft, _id(f.origin, "floor origin"),
                                       _amount(f.p, "floor p"), _amount(f.n, "floor n")))
        if not m.field:
            raise _bad("bad-path", "a map remove names no field")
        return Op(path, t, kind, field=m.field, seen=_get_clock(m.seen, "remove"),
                  floors=tuple(floors))
    if kind is Kind.ADMIT or not path:  # one test for both on the common path
        if kind is not Kind.ADMIT:
            raise _bad("bad-path", f"{action} needs a key: only maps are at the root")
        if path:
            raise _bad("bad-path", "an admission applies to the root: its path is empty")
        return Op(path, t, kind, value=_id(msg.admit.replica, "admitted replica"))
    if kind is Kind.COUNTER_ADD:
        a = msg.counter_add
        if t is ObjType.GCOUNTER and a.n:
            raise _bad("wrong-type", "a GCOUNTER cannot be decremented")
        return Op(path, t, kind, p=_amount(a.p, "increment"), n=_amount(a.n, "decrement"))
    if kind is Kind.REGISTER_SET:
        r = msg.register_set
        return Op(path, t, kind, value=_get_value(r.value),
                  timestamp=_timestamp(r.timestamp, "an assignment's timestamp"),
                  observed=_get_dots(r.observed))
    if kind is Kind.SET_ADD or kind is Kind.SET_REMOVE:
        s = msg.set_add if kind is Kind.SET_ADD else msg.set_remove
        return Op(path, t, kind, value=_get_value(s.element), observed=_get_dots(s.observed))
    flag = msg.flag_enable if kind is Kind.FLAG_ENABLE else msg.flag_disable
    return Op(path, t, kind, observed=_get_dots(flag.observed))


# ---------------------------------------------------------------- messages


def _fill_batch(msg: pb.Batch, batch: Batch) -> None:
    msg.origin = batch.origin
    msg.first_seq = batch.first_seq
    if batch.subgroup:
        msg.subgroup = batch.subgroup
    _put_clock(msg.deps, batch.deps)
    for op in batch.ops:
        _put_op(msg.ops.add(), op)


def _read_batch(msg: pb.Batch) -> Batch:
    origin = _id(msg.origin, "origin")
    first = _seq(msg.first_seq, "first_seq")
    if not msg.ops:
        raise _bad("empty-batch", "a batch holds no operation")
    _seq(first + len(msg.ops) - 1, "last seq")
    deps = _get_clock(msg.deps, "deps")
    subgroup = msg.subgroup
    if subgroup:
        if SEP in subgroup or "/" in subgroup or SEP in origin:
            raise _bad("bad-subgroup", f"sub-group {subgroup!r} of origin {origin!r}: neither "
                       "may hold '#', nor the sub-group '/'")
        _id(channel(origin, subgroup), "channel")
    batch = Batch(origin, first, deps, [_get_op(o) for o in msg.ops], _intern(subgroup))
    deps.pop(batch.channel, None)
    return batch


_Versioned = TypeVar("_Versioned", pb.Envelope, pb.Snapshot)


def _parse(msg: _Versioned, data: bytes, what: str) -> _Versioned:
    """Parse ``data`` into ``msg`` and check its version."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _bad("not-bytes", f"expected bytes, got {type(data).__name__}")
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, RuntimeError, ValueError) as e:
        raise _bad("undecodable", f"not a crdt_ops.v1.{type(msg).__name__} ({e})") from None
    if not data:
        raise _bad("empty-message", f"an empty {what}: no bytes at all")
    if msg.version != VERSION:
        raise _bad("bad-version", f"{what} version {msg.version}, this replica reads {VERSION}")
    return msg


def encode_batch(batch: Batch) -> bytes:
    env = pb.Envelope(version=VERSION)
    _fill_batch(env.batch, batch)
    return env.SerializeToString()


def encode_heartbeat(hb: Heartbeat) -> bytes:
    env = pb.Envelope(version=VERSION)
    env.heartbeat.origin = hb.origin
    _put_clock(env.heartbeat.clock, hb.clock)
    env.heartbeat.retired = hb.retired
    env.heartbeat.join = hb.join
    _put_clock(env.heartbeat.retirements, hb.retirements)
    _put_spans(env.heartbeat.wants, hb.wants)
    return env.SerializeToString()


def decode(data: bytes) -> Batch | Heartbeat:
    """Parse and validate one message; raise :class:`InvalidMessage` if it is not one."""
    env = _parse(pb.Envelope(), data, "message")
    body = env.WhichOneof("body")
    if body == "batch":
        return _read_batch(env.batch)
    if body == "heartbeat":
        hb = env.heartbeat
        if hb.retired and hb.join:
            raise _bad("bad-heartbeat", "a heartbeat both retires and joins")
        return Heartbeat(_id(hb.origin, "origin"), _get_clock(hb.clock, "heartbeat"),
                         hb.retired, hb.join, _get_clock(hb.retirements, "retirements", zeros=True),
                         _get_spans(hb.wants, "wants"))
    raise _bad("empty-message", "the envelope holds neither a batch nor a heartbeat")


def subgroup_of(data: bytes) -> str:
    """The sub-group of a message this replica produced (:mod:`crdt_ops.subgroups`): a
    batch's, else (a heartbeat, anything else) the common part's, ``""``."""
    return route_of(data)[0]


def _envelope(data: bytes) -> pb.Envelope | None:
    """``data`` parsed as an envelope, unchecked (a message this replica produced), or
    None if it does not parse."""
    env = pb.Envelope()
    try:
        env.ParseFromString(data)
    except DecodeError:
        return None
    return env


def route_of(data: bytes) -> tuple[str, bool]:
    """``(sub-group, plain)`` of a message this replica produced: its sub-group as
    :func:`subgroup_of` says, and whether it is a *plain* heartbeat, one that reports a
    clock only (no join request, no retirement, none relayed, nothing asked for again)."""
    env = _envelope(data)
    if env is None:
        return "", False
    body = env.WhichOneof("body")
    if body == "batch":
        return env.batch.subgroup, False
    hb = env.heartbeat
    return "", body == "heartbeat" and not (hb.join or hb.retired or hb.retirements
                                             or hb.wants)


def span_of(data: bytes) -> tuple[str, int, int] | None:
    """``(channel, first, last)``: the channel and sequence numbers of the operations of
    a message this replica produced; None for a heartbeat (or what is not a batch)."""
    env = _envelope(data)
    if env is None or env.WhichOneof("body") != "batch":
        return None
    b = env.batch
    return _channel(b), b.first_seq, b.first_seq + len(b.ops) - 1


#: The most operations :func:`coalesce` joins into one message.
MAX_COALESCED_OPS = 1_000


def op_bytes(op: Op) -> int:
    """About the bytes ``op`` takes in a message, at least as many as it does: its path,
    field and value, its clocks and floors, and a fixed allowance for the rest (tags,
    lengths, numbers). For :data:`MAX_MESSAGE_BYTES` (a bound, not an accounting)."""
    size = 64 + 4 * (sum(map(len, op.path)) + len(op.field))
    v = op.value
    if type(v) is str:
        size += 4 * len(v) if len(v) < 4096 else len(v.encode("utf-8", "surrogatepass"))
    elif type(v) is bytes:
        size += len(v)
    if op.observed:
        size += 24 * len(op.observed)
    if op.seen:
        size += sum(map(len, op.seen)) + 12 * len(op.seen)
    if op.floors:
        size += sum(24 + 4 * sum(map(len, f.path)) for f in op.floors)
    return size


def coalesce(messages: Sequence[bytes], max_ops: int = MAX_COALESCED_OPS,
             max_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[int, bytes]]:
    """Join runs of consecutive batches of one origin into one message each, in order:
    ``[(how many of the input messages, the message to send), ...]``. A run of one is
    its message unchanged; heartbeats and anything that is not a batch go alone.

    A batch joins the one before it only when it continues its sequence numbers (same
    ``origin`` and ``subgroup``, ``first_seq`` one past the previous last) and names no
    dependency of its
    own (empty ``deps``: the origin delivered nothing new between the two), so that the
    joined message needs exactly what the first one needed. Joining a batch with
    dependencies would hold the earlier operations back until those are delivered, and
    forever if one of them depends on an earlier operation. Operations are copied as
    encoded (no re-validation: these are messages this replica produced). At most
    ``max_ops`` operations and ``max_bytes`` bytes (the inputs' sizes summed) per joined
    message."""
    out: list[tuple[int, bytes]] = []
    run: pb.Envelope | None = None
    run_body = b""
    count = last = run_bytes = 0

    def close() -> None:
        if run is not None:
            out.append((count, run_body if count == 1 else run.SerializeToString()))

    for body in messages:
        env = pb.Envelope()
        try:
            env.ParseFromString(body)
        except DecodeError:
            env.Clear()
        b = env.batch if env.version == VERSION and env.WhichOneof("body") == "batch" \
            and env.batch.ops else None
        if run is not None and b is not None and b.origin == run.batch.origin \
                and b.subgroup == run.batch.subgroup \
                and b.first_seq == last + 1 and len(run.batch.ops) + len(b.ops) <= max_ops \
                and run_bytes + len(body) <= max_bytes \
                and all(d.replica == _channel(b) or not d.seq for d in b.deps):
            run.batch.ops.extend(b.ops)
            last += len(b.ops)
            run_bytes += len(body)
            count += 1
            continue
        close()
        if b is None:
            run = None
            out.append((1, body))
        else:
            run, run_body, count, run_bytes = env, body, 1, len(body)
            last = b.first_seq + len(b.ops) - 1
    close()
    return out


def _channel(batch: pb.Batch) -> str:
    """The channel of an encoded batch (:func:`crdt_ops.subgroups.channel`)."""
    return channel(batch.origin, batch.subgroup)


# ---------------------------------------------------------------- snapshots


def _put_counter(msg: pb.ObjectState, obj: PNCounter) -> None:
    c = msg.counter
    for o in sorted(obj.p.keys() | obj.n.keys() | obj.floor_p.keys() | obj.floor_n.keys()):
        c.origins.append(o)
        c.p.append(obj.p.get(o, 0))
        c.n.append(obj.n.get(o, 0))
        c.floor_p.append(obj.floor_p.get(o, 0))
        c.floor_n.append(obj.floor_n.get(o, 0))


def _get_counter(msg: pb.ObjectState, obj: PNCounter) -> None:
    c = msg.counter
    if not len(c.origins) == len(c.p) == len(c.n) == len(c.floor_p) == len(c.floor_n):
        raise _bad("bad-snapshot", "a counter's per-origin arrays differ in length")
    for i, o in enumerate(c.origins):
        for part, values in ((obj.p, c.p), (obj.n, c.n), (obj.floor_p, c.floor_p),
                             (obj.floor_n, c.floor_n)):
            if values[i]:
                part[o] = values[i]
    obj.reset({}, (), 0)


def _put_lww(msg: pb.ObjectState, obj: LWWRegister) -> None:
    for (r, s), (ts, v) in sorted(obj.entries.items()):
        e = msg.entries.add()
        e.dot.replica, e.dot.seq, e.timestamp = r, s, ts
        _put_value(e.value, v)


def _get_lww(msg: pb.ObjectState, obj: LWWRegister) -> None:
    for e in msg.entries:
        obj.entries[(e.dot.replica, e.dot.seq)] = (_timestamp(e.timestamp, "a register's "
                                                              "timestamp"),
                                                   _get_value(e.value))
    obj.reset({}, (), 0)


def _put_mv(msg: pb.ObjectState, obj: MVRegister) -> None:
    for (r, s), v in sorted(obj.entries.items()):
        e = msg.entries.add()
        e.dot.replica, e.dot.seq = r, s
        _put_value(e.value, v)


def _get_mv(msg: pb.ObjectState, obj: MVRegister) -> None:
    for e in msg.entries:
        obj.entries[(e.dot.replica, e.dot.seq)] = _get_value(e.value)


def _put_set(msg: pb.ObjectState, obj: ORSet) -> None:
    for _, (v, dots) in sorted(obj.elements.items(), key=lambda kv: repr(kv[0])):
        el = msg.elements.add()
        _put_value(el.element, v)
        _put_dots(el.dots, sorted(dots))


def _get_set(msg: pb.ObjectState, obj: ORSet) -> None:
    for el in msg.elements:
        v = _get_value(el.element)
        obj.elements[value_key(v)] = (v, set(_get_dots(el.dots)))


def _put_flag(msg: pb.ObjectState, obj: EWFlag) -> None:
    _put_dots(msg.dots, sorted(obj.dots))


def _get_flag(msg: pb.ObjectState, obj: EWFlag) -> None:
    obj.dots.update(_get_dots(msg.dots))


def _put_map(msg: pb.ObjectState, obj: ORMap) -> None:
    blob, rest = frozen.split(obj.settled)
    if blob:
        msg.settled = blob
    for name in rest:
        _put_settled(msg.fields.add(), name, obj.settled[name])
    for name, typed in obj.fields.items():
        for t, f in typed.items():
            fs = msg.fields.add()
            fs.name = name
            fs.type = t.value  # type: ignore[assignment]
            fs.fixed = f.fixed
            _put_clock(fs.presence, f.presence)
            _put_clock(fs.first, f.first)
            put_object(fs.object, f.obj)


def _put_settled(fs: pb.FieldState, name: str, entry: Any) -> None:
    """A settled entry (crdt_ops/types/settled.py) as a field marked ``settled``."""
    fs.name = name
    fs.settled = True
    t = entry_type(entry)
    fs.type = t.value  # type: ignore[assignment]
    if is_frozen(entry):
        fs.object.type = t.value  # type: ignore[assignment]
        for n, e in frozen_items(entry):
            _put_settled(fs.object.fields.add(), n, e)
    elif isinstance(entry, Crdt):
        put_object(fs.object, entry)
    else:
        fs.object.type = t.value  # type: ignore[assignment]
        _put_value(fs.object.entries.add().value, entry)


def _get_map(msg: pb.ObjectState, obj: ORMap) -> None:
    if msg.settled:
        obj.settled = frozen.join(msg.settled)
    for fs in msg.fields:
        if not fs.name:
            raise _bad("bad-snapshot", "a map field has an empty name")
        name = _intern(fs.name)
        t = _get_type(fs.type, "a field")
        if fs.settled:
            if name in obj.settled or name in obj.fields:
                raise _bad("bad-snapshot", f"settled field {name!r} is listed twice")
            obj.settled[name] = _get_settled(fs, t)
            continue
        f = Field(get_object(fs.object), fixed=fs.fixed)
        f.presence = _get_clock(fs.presence, "presence")
        f.first = _get_clock(fs.first, "first")
        obj.fields.setdefault(name, {})[t] = f
    for name in obj.settled.keys() & obj.fields.keys():
        raise _bad("bad-snapshot", f"field {name!r} is both settled and live")


def _get_settled(fs: pb.FieldState, t: ObjType) -> Any:
    if t is ObjType.LWW_REGISTER:
        if len(fs.object.entries) != 1:
            raise _bad("bad-snapshot", f"settled register {fs.name!r} holds "
                       f"{len(fs.object.entries)} values, not one")
        return _get_value(fs.object.entries[0].value)
    obj = get_object(fs.object)
    if obj.TYPE is not t:
        raise _bad("bad-snapshot", f"settled field {fs.name!r} is a {t.name} holding a "
                   f"{obj.TYPE.name}")
    if isinstance(obj, ORMap) and obj.freezable():
        return freeze(obj.settled)
    return obj


#: Each type's state in a snapshot: (write it into ObjectState, read it from one into an
#: empty object of the type). A new type adds its pair here.
_STATE: dict[ObjType, tuple[Callable[[pb.ObjectState, Any], None],
                            Callable[[pb.ObjectState, Any], None]]] = {
    ObjType.GCOUNTER: (_put_counter, _get_counter),
    ObjType.PNCOUNTER: (_put_counter, _get_counter),
    ObjType.LWW_REGISTER: (_put_lww, _get_lww),
    ObjType.MV_REGISTER: (_put_mv, _get_mv),
    ObjType.ORSET: (_put_set, _get_set),
    ObjType.EWFLAG: (_put_flag, _get_flag),
    ObjType.ORMAP: (_put_map, _get_map),
}


def put_object(msg: pb.ObjectState, obj: Crdt) -> None:
    """Write an object's full state (recursively for maps)."""
    msg.type = obj.TYPE.value  # type: ignore[assignment]
    _STATE[obj.TYPE][0](msg, obj)


def get_object(msg: pb.ObjectState) -> Crdt:
    """Rebuild an object written by :func:`put_object`."""
    t = _get_type(msg.type, "a snapshot object")
    obj = new_object(t)
    _STATE[t][1](msg, obj)
    return obj


def encode_snapshot(snap: Snapshot) -> bytes:
    """Serialize a :class:`~crdt_ops.snapshot.Snapshot`."""
    msg = pb.Snapshot(version=VERSION, replica_id=snap.replica_id, hlc=snap.hlc)
    _put_clock(msg.clock, snap.clock)
    put_object(msg.root, snap.root)
    for field, clocks in (("known", snap.known), ("deps_of", snap.deps_of)):
        for r, clock in sorted(clocks.items()):
            k = getattr(msg, field).add()
            k.replica = r
            _put_clock(k.clock, clock)
    msg.retired.extend(sorted(snap.retired))
    msg.managed = snap.managed
    msg.founders.extend(sorted(snap.founders))
    for r, by in sorted(snap.admissions.items()):
        k = msg.admissions.add()
        k.replica = r
        _put_clock(k.clock, by)
    _put_clock(msg.retiring, snap.retiring)
    _put_clock(msg.reported, snap.reported)
    for b in snap.waiting:
        _fill_batch(msg.waiting.add(), b)
    for b in snap.unsent:  # the common part's in unsent, the sub-groups' after
        _fill_batch(msg.unsent if not b.subgroup else msg.unsent_subgroups.add(), b)
    for b in snap.sealed:
        _fill_batch(msg.sealed.add(), b)
    return msg.SerializeToString()


def decode_snapshot(data: bytes) -> Snapshot:
    """Parse a snapshot; raise :class:`InvalidMessage` if it is not a valid one."""
    msg = _parse(pb.Snapshot(), data, "snapshot")
    root = get_object(msg.root)
    if not isinstance(root, ORMap):
        raise _bad("bad-snapshot", "the snapshot's root is not a map")
    return Snapshot(
        replica_id=_id(msg.replica_id, "replica_id"),
        clock=_get_clock(msg.clock, "clock"),
        hlc=_timestamp(msg.hlc, "the snapshot's hybrid logical clock"),
        root=root,
        known={k.replica: _get_clock(k.clock, "known") for k in msg.known},
        deps_of={k.replica: _get_clock(k.clock, "deps_of") for k in msg.deps_of},
        retired=frozenset(msg.retired),
        managed=msg.managed,
        founders=frozenset(_id(f, "founder") for f in msg.founders),
        admissions={k.replica: _get_clock(k.clock, "admissions") for k in msg.admissions},
        retiring=_get_clock(msg.retiring, "retiring"),
        reported=_get_clock(msg.reported, "reported"),
        waiting=[_read_batch(b) for b in msg.waiting],
        unsent=[_read_batch(b) for b in
                ([msg.unsent] if msg.HasField("unsent") else []) + list(msg.unsent_subgroups)],
        sealed=[_read_batch(b) for b in msg.sealed],
    )
