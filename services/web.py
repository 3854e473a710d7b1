"""web: the JSON API and the live page. It reads and writes only its own replica.

Routes: ``POST /api/containers``, ``GET /api/containers[/{id}]``,
``POST /api/containers/{id}/start|stop|restart``, ``DELETE /api/containers/{id}``,
``GET /api/events`` (Server-Sent Events), ``GET /healthz``, ``GET /metrics``, ``/``;
for the page: ``GET /api/nodes``, ``GET /api/containers/{id}/history``,
``GET /api/events?nodes=1`` (node records too) and ``/static/``.
A request answers as soon as its write is durable locally; it never waits for
another service, nor for the broker.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from crdt_ops.errors import InvalidValue
from crdt_ops.events import ChangeEvent
from crdt_ops.transport import Node as ReplicaNode
from crdt_ops.transport.store import StoreUnavailable
from crdt_ops.values import check_text
from services import model
from services.history import History

MAX_NAME = 200
STATIC = Path(__file__).parent / "static"
#: a node whose last heartbeat is older is shown as silent (logic's default node timeout)
NODE_TIMEOUT_S = 5.0


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error answer has a JSON body ``{"error": ...}``: aiohttp's own 4xx pages
    (unknown route, method not allowed, body too large) are text otherwise."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except StoreUnavailable as e:  # nothing was written: the client may retry
        response = _error(503, f"this service's store is failing, nothing was written; "
                          f"retry in a few seconds ({e})")
        response.headers["Retry-After"] = "2"
        return response
    except web.HTTPException as e:
        if e.status < 400 or e.content_type == "application/json":
            raise
        return _error(e.status, e.reason)


def _record(node: ReplicaNode, cid: str) -> dict[str, Any] | None:
    rec = node.replica.get(model.CONTAINERS + cid)
    if not isinstance(rec, dict) or not rec.get("name"):
        return None
    return model.Container.of(model.CONTAINERS + cid, rec).as_json()


def _bad_request(message: str) -> web.HTTPBadRequest:
    """A 400 to raise, with the JSON body ``{"error": message}``."""
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")


def _text_field(body: dict[str, Any], field: str, required: bool) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad_request(f"'{field}' must be a non-empty string")
    if len(value) > MAX_NAME:
        raise _bad_request(f"'{field}' is longer than {MAX_NAME} characters")
    try:  # checked before anything is written: a lone surrogate cannot be replicated
        check_text(value, field)
    except InvalidValue:
        raise _bad_request(f"'{field}' is not valid Unicode text") from None
    return value


def _node_json(n: model.Node, now_ms: int, timeout_ms: int) -> dict[str, Any]:
    """A node record for the page: ``name``, ``capacity``, ``running`` (containers),
    ``heartbeat_ms`` (the worker's wall clock at its last beat, Unix ms), ``age_ms``
    (web's wall clock now minus that; the two clocks are assumed close),
    ``timeout_ms``, ``epoch`` and ``lease_ms`` (its worker's lease, services/lease.py;
    None and 0 if not announced); ``live``: ``age_ms <= timeout_ms``. A silent node is
    not necessarily dead: logic decides that by its own rule (services/liveness.py)."""
    age = now_ms - n.heartbeat
    return {"name": n.name, "capacity": n.capacity, "running": n.running,
            "heartbeat_ms": n.heartbeat, "age_ms": age, "timeout_ms": timeout_ms,
            "live": n.heartbeat > 0 and age <= timeout_ms, "epoch": n.epoch,
            "lease_ms": n.lease_ms}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Pending:
    """What one event stream has yet to send: the keys changed since it last sent
    them, oldest first, each with the origin of its latest change. A burst of
    changes of one key is sent once, with the record as it is then, so a stream
    never falls behind by more than one entry per key and never drops one."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._ready = asyncio.Event()

    def note(self, event: ChangeEvent) -> None:
        """A change callback."""
        self._keys[event.key] = event.origin
        self._ready.set()

    async def next(self, timeout_s: float) -> tuple[str, str] | None:
        """The oldest pending key and its origin, waiting for one up to ``timeout_s``
        seconds (None then)."""
        if not self._keys:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except TimeoutError:
                return None
        key = next(iter(self._keys))
        return key, self._keys.pop(key)


def make_app(node: ReplicaNode, *, node_timeout_s: float = NODE_TIMEOUT_S) -> web.Application:
    """The API and the page on ``node``'s replica. ``node_timeout_s``: how old a
    node's heartbeat may be for the page to show it live."""
    routes = web.RouteTableDef()
    streams: set[asyncio.Task[Any]] = set()  # the open GET /api/events handlers
    timeout_ms = int(node_timeout_s * 1000)
    history = History(model.CONTAINERS)

    @routes.post("/api/containers")
    async def create(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # too deep a nesting
            return _error(400, "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        name = _text_field(body, "name", required=True)
        owner = _text_field(body, "owner", required=False) or "anonymous"
        cid = uuid.uuid4().hex[:12]
        async with node.write() as r:
            rec = model.container(r, cid)
            rec.register("name").set(name)
            rec.register("owner").set(owner)
            rec.register("power_desired").set("off")
        return web.json_response(_record(node, cid), status=201)

    @routes.get("/api/containers")
    async def list_all(request: web.Request) -> web.Response:
        return web.json_response([c.as_json() for c in model.containers(node.replica)
                                  if c.name is not None])

    @routes.get("/api/containers/{cid}")
    async def get_one(request: web.Request) -> web.Response:
        rec = _record(node, request.match_info["cid"])
        return _error(404, "no such container") if rec is None else web.json_response(rec)

    async def change(request: web.Request, action: str) -> web.Response:
        cid = request.match_info["cid"]
        if _record(node, cid) is None:
            return _error(404, "no such container")
        async with node.write() as r:
            rec = model.container(r, cid)
            if action == "start":
                rec.register("power_desired").set("on")
            elif action == "stop":
                rec.register("power_desired").set("off")
            else:
                rec.counter("restart_generation").increment()
                rec.register("power_desired").set("on")
        return web.json_response(_record(node, cid), status=202)

    for action in ("start", "stop", "restart"):
        async def handler(request: web.Request, action: str = action) -> web.Response:
            return await change(request, action)

        routes.post(f"/api/containers/{{cid}}/{action}")(handler)

    @routes.delete("/api/containers/{cid}")
    async def delete(request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if _record(node, cid) is None:
            return _error(404, "no such container")
        async with node.write() as r:
            r.remove(model.CONTAINERS + cid)
        return web.json_response({"id": cid, "deleted": True}, status=202)

    @routes.get("/api/containers/{cid}/history")
    async def container_history(request: web.Request) -> web.Response:
        """``{"id", "since_ms", "limit", "entries": [...]}``: web's history of the
        container since web started, oldest first (services/history.py); 404 if
        there is no such container."""
        cid = request.match_info["cid"]
        if _record(node, cid) is None:
            return _error(404, "no such container")
        return web.json_response({"id": cid, "since_ms": history.since_ms,
                                  "limit": history.limit,
                                  "entries": [e.as_json() for e in history.entries(cid)]})

    @routes.get("/api/nodes")
    async def list_nodes(request: web.Request) -> web.Response:
        """Every worker node record, by name (see ``_node_json``)."""
        now = _now_ms()
        return web.json_response([_node_json(n, now, timeout_ms) for n in
                                  sorted(model.nodes(node.replica), key=lambda n: n.name)])

    @routes.get("/api/events")
    async def events(request: web.Request) -> web.StreamResponse:
        """``event: container`` with ``{"id", "record" (None: deleted), "origin"}``
        after each change of a container; with ``?nodes=1`` also ``event: node``
        with ``{"name", "node" (see ``/api/nodes``; None: removed), "origin"}``.
        A record is sent as it is when sent: changes it had meanwhile are sent once
        (``origin``: the latest one's)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        streams.add(task)
        pending = _Pending()
        unsubscribes = [node.replica.subscribe(model.CONTAINERS, pending.note)]
        if request.query.get("nodes") == "1":
            unsubscribes.append(node.replica.subscribe(model.NODES, pending.note))
        try:
            await resp.write(b": connected\n\n")
            while True:
                change = await pending.next(15)
                if change is None:
                    await resp.write(b": keep-alive\n\n")
                    continue
                key, origin = change
                if key.startswith(model.NODES):
                    kind, data = "node", _node_event(key, origin)
                else:
                    cid = key[len(model.CONTAINERS):]
                    kind = "container"
                    data = {"id": cid, "record": _record(node, cid), "origin": origin}
                await resp.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            for unsubscribe in unsubscribes:
                unsubscribe()
            streams.discard(task)
        return resp

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        """200 when every part of the node is ``"ok"`` (broker, membership, delivery,
        store, echo: :meth:`AmqpNode.health`), else 503 with what is wrong; with the
        numbers behind it: ``buffered`` (operations waiting for earlier ones) and
        ``missing`` (sender -> [first, last] sequence numbers not delivered here)."""
        r = node.replica
        health = node.health()
        ok = all(v == "ok" for v in health.values())
        missing = {origin: list(span) for origin, span in r.missing().items()}
        return web.json_response({"ok": ok, "replica": node.replica_id, "clock": dict(r.clock),
                                  "buffered": r.buffered, "missing": missing, **health},
                                 status=200 if ok else 503)

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _node_event(key: str, origin: str) -> dict[str, Any]:
        rec = node.replica.get(key)
        view = (_node_json(model.Node.of(key, rec), _now_ms(), timeout_ms)
                if isinstance(rec, dict) else None)
        return {"name": key[len(model.NODES):], "node": view, "origin": origin}

    @routes.get("/")
    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    routes.static("/static/", STATIC)

    async def end_streams(app: web.Application) -> None:
        """Shutting down: event streams end now (they would hold shutdown for
        up to the keep-alive interval otherwise); clients reconnect elsewhere."""
        for t in list(streams):
            t.cancel()

    async def forget_history(app: web.Application) -> None:
        unsubscribe_history()

    app = web.Application(middlewares=[json_errors])
    app.add_routes(routes)
    app.on_shutdown.append(end_streams)
    unsubscribe_history = node.replica.subscribe(model.CONTAINERS, history.record)
    app.on_cleanup.append(forget_history)
    return app


async def serve(node: ReplicaNode, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(node))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
