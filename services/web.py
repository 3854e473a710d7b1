"""web: the JSON API and the live page. It reads and writes only its own replica.

Routes: ``POST /api/containers``, ``GET /api/containers`` (a page, filtered;
``Link`` to the next), ``GET /api/containers/{id}``,
``POST /api/containers/{id}/start|stop|restart``, ``DELETE /api/containers/{id}``,
``GET /api/events`` (Server-Sent Events), ``GET /healthz``, ``GET /metrics``, ``/``;
for the page: ``GET /api/nodes``, ``GET /api/containers/{id}/history``,
``GET /api/events?nodes=1`` (node records too) and ``/static/``.
A request answers as soon as its write is durable locally; it never waits for
another service, nor for the broker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import unicodedata
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from crdt_ops.errors import InvalidValue, NotAMember
from crdt_ops.events import ChangeEvent
from crdt_ops.transport import Node
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.store import StoreUnavailable
from crdt_ops.transport.waiting import wait_set
from crdt_ops.values import check_text
from services import lease, model
from services.containers import Containers
from services.history import History
from services.listing import (
    ACTUAL_VALUES,
    DEFAULT_LIMIT,
    DESIRED_VALUES,
    FILTERS,
    MAX_LIMIT,
    Filter,
    Listing,
    listed_fields,
)

MAX_NAME = 200
STATIC = Path(__file__).parent / "static"
#: The files web serves under ``/static/`` (the page's), by name.
STATIC_FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file())
#: a node whose worker announced no lease yet is shown as silent when its last heartbeat is
#: older; one with a lease, after ``services.lease.silent_after_s`` of it
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
    except NotAMember as e:  # retired (or not admitted yet): another web must answer
        return _error(503, f"this web may not write to its group, nothing was written: {e}")
    except web.HTTPException as e:
        if e.status < 400 or e.content_type == "application/json":
            raise
        return _error(e.status, e.reason)


@web.middleware
async def query_params(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every ``/api/`` route refuses a query parameter it does not take, or one given twice,
    with a 400 before its handler runs (:func:`route_params`)."""
    resource = request.match_info.route.resource
    if resource is not None and resource.canonical.startswith("/api/"):
        route_params(request)
    return await handler(request)  # type: ignore[no-any-return]


def route_params(request: web.Request) -> dict[str, str]:
    """The query parameters of ``request``, those its route takes (:data:`ROUTE_PARAMS`;
    none for a route not in it), each at most once: a 400 otherwise (:func:`_params`; a
    misspelt filter must not list everything, nor a flag be ignored)."""
    resource = request.match_info.route.resource
    canonical = "" if resource is None else resource.canonical
    method = "GET" if request.method == "HEAD" else request.method  # (aiohttp's HEAD of a GET)
    return _params(request, ROUTE_PARAMS.get((method, canonical), ()))


def _record(containers: Containers, cid: str) -> dict[str, Any] | None:
    rec = containers.get(model.CONTAINERS + cid)
    if not isinstance(rec, dict) or not rec.get("name"):
        return None
    return model.Container.of(model.CONTAINERS + cid, rec).as_json()


def _bad_request(message: str) -> web.HTTPBadRequest:
    """A 400 to raise, with the JSON body ``{"error": message}``."""
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")


def json_type(value: object) -> str:
    """The JSON name (RFC 8259) of a parsed JSON value's type: ``object``, ``array``,
    ``string``, ``number``, ``true``, ``false`` or ``null``: what a client sent, in its
    own terms, for error messages."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    for kind, name in ((dict, "object"), (list, "array"), (str, "string"),
                       ((int, float), "number")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _text_field(body: dict[str, Any], field: str, required: bool) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if field not in body:
        raise _bad_request(f"'{field}' is required: a non-empty string")
    if not isinstance(value, str):
        raise _bad_request(f"'{field}' must be a non-empty string, not {json_type(value)}")
    if not value.strip():
        raise _bad_request(f"'{field}' must be a non-empty string")
    if len(value) > MAX_NAME:
        raise _bad_request(f"'{field}' is longer than {MAX_NAME} characters")
    try:  # checked before anything is written: a lone surrogate cannot be replicated
        check_text(value, field)
    except InvalidValue:
        raise _bad_request(f"'{field}' is not valid Unicode text") from None
    bad = _CONTROL.search(value)
    if bad:  # a label: a NUL, a newline or an escape would garble logs, pages and terminals
        raise _bad_request(f"'{field}' holds the control character "
                           f"U+{ord(bad.group()):04X}: send printable text")
    if not any(unicodedata.category(c) not in _UNSEEN for c in value):
        raise _bad_request(f"'{field}' has no visible character: send printable text")
    return value


#: What is refused in a name or an owner: Unicode's control characters (category Cc), its
#: line and paragraph separators (Zl, Zp: line breaks to a log reader) and its bidirectional
#: embeddings, overrides and isolates (they reorder the text shown after them).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: The categories of characters that show nothing on their own: a name of only these
#: (spaces, format characters such as U+200B, combining marks) would show as empty.
_UNSEEN = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"})
#: The fields a create takes; the others are written by the services (power by start and
#: stop, the home and placement by logic, the reports by the workers).
CREATE_FIELDS = ("name", "owner")


# ------------------------------------------------------------------ query parameters

_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,1400}")
LIST_PARAMS = ("limit", "cursor", *FILTERS)
EVENT_PARAMS = ("nodes", *FILTERS)
#: The query parameters of each ``/api/`` route that takes any: (method, path) -> names.
ROUTE_PARAMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("GET", "/api/containers"): LIST_PARAMS,
    ("GET", "/api/events"): EVENT_PARAMS,
}


def encode_cursor(key: str) -> str:
    """The opaque cursor of a page that starts after the record at ``key``."""
    cid = key[len(model.CONTAINERS):]
    return base64.urlsafe_b64encode(cid.encode("utf-8", "surrogatepass")).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> str:
    """The key a cursor names; a 400 for anything :func:`encode_cursor` does not give."""
    bad = _bad_request("'cursor' must be a cursor this API gave (take the next page's URL "
                       "from the Link header)")
    if not _CURSOR.fullmatch(cursor):
        raise bad
    try:
        cid = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    key = model.CONTAINERS + cid
    if encode_cursor(key) != cursor:  # one spelling per cursor
        raise bad
    return key


def _params(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and each one of ``allowed`` (a 400
    otherwise: a misspelt filter must not list everything)."""
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            raise _bad_request(f"unknown query parameter '{name[:50]}'; this route takes "
                               f"{', '.join(allowed) or 'none'}")
        if name in out:
            raise _bad_request(f"query parameter '{name}' is given more than once")
        out[name] = value
    return out


def _limit(params: Mapping[str, str]) -> int:
    raw = params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4
            and 1 <= int(raw) <= MAX_LIMIT):
        raise _bad_request(f"'limit' must be an integer from 1 to {MAX_LIMIT}, "
                           f"not {raw[:50]!r}")
    return int(raw)


def _filter(params: Mapping[str, str]) -> Filter:
    """The :class:`Filter` of the query (a 400 for a bad value)."""
    values: dict[str, str] = {}
    for name, allowed in (("desired", DESIRED_VALUES), ("actual", ACTUAL_VALUES)):
        raw = params.get(name)
        if raw is not None:
            if raw not in allowed:
                raise _bad_request(f"'{name}' must be one of {', '.join(allowed)}, "
                                   f"not {raw[:50]!r}")
            values[name] = raw
    for name in ("owner", "node"):
        raw = params.get(name)
        if raw is not None:
            if not raw or len(raw) > MAX_NAME:
                raise _bad_request(f"'{name}' must be from 1 to {MAX_NAME} characters")
            values[name] = raw
    return Filter(**values)


def _node_json(n: model.Node, now_ms: int, timeout_ms: int | None) -> dict[str, Any]:
    """A node record for the page: ``name``, ``cell``, ``capacity``, ``running`` (containers),
    ``heartbeat_ms`` (the worker's wall clock at its last beat, Unix ms), ``age_ms``
    (web's wall clock now minus that; the two clocks are assumed close),
    ``timeout_ms`` (``timeout_ms`` if given, else two of its worker's beats and a second:
    ``services.lease.silent_after_s``, or :data:`NODE_TIMEOUT_S` without a lease),
    ``epoch`` and ``lease_ms`` (its worker's lease, services/lease.py; None and 0 if not
    announced); ``live``: ``age_ms <= timeout_ms``. A silent node is not necessarily
    dead: logic decides that by its own rule (services/liveness.py)."""
    if timeout_ms is None:
        timeout_ms = int(1000 * (lease.silent_after_s(n.lease_ms / 1000) if n.lease_ms
                                 else NODE_TIMEOUT_S))
    age = now_ms - n.heartbeat
    return {"name": n.name, "cell": n.cell, "capacity": n.capacity, "running": n.running,
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

    def __init__(self, containers: Filter | None = None) -> None:
        self._keys: dict[str, str] = {}
        self._ready = asyncio.Event()
        self._filter = containers

    def note(self, event: ChangeEvent) -> None:
        """A change callback. With a filter, a container's change is noted only if
        the record matched it before the change or matches it after."""
        flt = self._filter
        if not event.key.startswith(model.CONTAINERS):
            if model.node_name(event.key) is None:  # another record of a cell: not sent
                return
        elif flt and not (flt.matches(event.old) or flt.matches(event.new)):
            return
        self._keys[event.key] = event.origin
        self._ready.set()

    async def next(self, timeout_s: float) -> tuple[str, str] | None:
        """The oldest pending key and its origin, waiting for one up to ``timeout_s``
        seconds (None then)."""
        if not self._keys:
            self._ready.clear()
            if not await wait_set(self._ready, timeout_s):
                return None
        key = next(iter(self._keys))
        return key, self._keys.pop(key)


def make_app(node: NodeGroups[Node], *, node_timeout_s: float | None = None
             ) -> web.Application:
    """The API and the page on ``node``'s replica. ``node_timeout_s``: how old a
    node's heartbeat may be for the page to show it live (None: by its worker's lease,
    see ``_node_json``)."""
    routes = web.RouteTableDef()
    streams: set[asyncio.Task[Any]] = set()  # the open GET /api/events handlers
    timeout_ms = None if node_timeout_s is None else int(node_timeout_s * 1000)
    history = History(model.CONTAINERS)
    containers = Containers(node.groups)  # each record joined with its placement
    listing = Listing(containers)

    @routes.post("/api/containers")
    async def create(request: web.Request) -> web.Response:
        example = 'send a JSON object such as {"name": "db", "owner": "ada"}'
        try:
            body = await request.json()
        except json.JSONDecodeError as e:
            return _error(400, f"the body is not valid JSON ({e}): {example}")
        except UnicodeDecodeError:
            return _error(400, f"the body is not UTF-8 text: {example}")
        except RecursionError:
            return _error(400, f"the body's JSON nests too deep: {example}")
        except ValueError as e:  # Python's bound on a number's digits (int_max_str_digits)
            return _error(400, f"the body's JSON holds a number too long ({e}): {example}")
        except RequestPayloadError as e:  # e.g. Content-Encoding: gzip, and it is not
            return _error(400, f"the body does not decode as its Content-Encoding says "
                               f"({e}): {example}")
        if not isinstance(body, dict):
            return _error(400, f"the body must be a JSON object, not {json_type(body)}: "
                               f"{example}")
        unknown = [f for f in body if f not in CREATE_FIELDS]
        if unknown:
            return _error(400, f"unknown field '{str(unknown[0])[:50]}': a create takes "
                               f"{', '.join(CREATE_FIELDS)} (a container is created off; "
                               "POST /api/containers/{id}/start starts it)")
        name = _text_field(body, "name", required=True)
        owner = _text_field(body, "owner", required=False) or "anonymous"
        cid = uuid.uuid4().hex[:12]
        async with node.write() as r:
            rec = model.container(r, cid)
            rec.register("name").set(name)
            rec.register("owner").set(owner)
            rec.register("power_desired").set("off")
        return web.json_response(_record(containers, cid), status=201)

    @routes.get("/api/containers")
    async def list_page(request: web.Request) -> web.Response:
        """One page of the container records web lists (those with a name), as a JSON
        array of records, in container id order (by code point).

        Query parameters, each at most once (a 400 ``{"error": ...}`` names a bad one
        and the values it takes): ``limit``: records per page, 1 to 1000 (default
        100); ``cursor``: the page starts after it (opaque: take it from the ``Link``
        header); filters ``owner``, ``desired`` (``power_desired``: on, off),
        ``actual`` (``power_actual``: on, off, failed) and ``node``
        (``assigned_node``): only records whose field equals the value.

        Headers: ``Link: <URL>; rel="next"`` (RFC 8288; the same query with the next
        cursor), absent on the last page; ``X-Total-Count``: how many records web
        lists, without a filter only. A cursor is a position in the id order, so a
        record created or deleted between two requests never makes another one
        appear twice or be skipped.

        Cost: without a filter, O(log n + limit) for n records. With one, web reads
        candidates from an index it keeps per filter and checks each against the
        record, at most ``limit + 1000`` a request: a filtered page may then be
        short, or empty, and still have a ``next`` link; follow it to go on."""
        params = route_params(request)
        limit = _limit(params)
        flt = _filter(params)
        cursor = params.get("cursor")
        after = None if cursor is None else decode_cursor(cursor)
        page = listing.page(flt, after, limit)
        response = web.json_response([model.Container.of(key, rec).as_json()
                                      for key, rec in page.records])
        if page.after is not None:
            query = flt.query()
            if "limit" in params:
                query["limit"] = str(limit)
            query["cursor"] = encode_cursor(page.after)
            response.headers["Link"] = f'<{request.rel_url.with_query(query)}>; rel="next"'
        if not flt:
            response.headers["X-Total-Count"] = str(listing.count)
        return response

    @routes.get("/api/containers/{cid}")
    async def get_one(request: web.Request) -> web.Response:
        rec = _record(containers, request.match_info["cid"])
        return _error(404, "no such container") if rec is None else web.json_response(rec)

    async def change(request: web.Request, action: str) -> web.Response:
        cid = request.match_info["cid"]
        if _record(containers, cid) is None:
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
        return web.json_response(_record(containers, cid), status=202)

    for action in ("start", "stop", "restart"):
        async def handler(request: web.Request, action: str = action) -> web.Response:
            return await change(request, action)

        routes.post(f"/api/containers/{{cid}}/{action}")(handler)

    @routes.delete("/api/containers/{cid}")
    async def delete(request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if _record(containers, cid) is None:
            return _error(404, "no such container")
        async with node.write() as r:
            r.remove(model.CONTAINERS + cid)
        return web.json_response({"id": cid, "deleted": True}, status=202)

    @routes.get("/api/containers/{cid}/history")
    async def container_history(request: web.Request) -> web.Response:
        """``{"id", "since_ms", "complete_since_ms", "limit", "total", "entries":
        [...]}``: web's history of the container since web started (``since_ms``,
        Unix ms), oldest first (services/history.py), in memory and bounded: the
        last ``limit`` (50) entries of each container, and ``total`` (5,000) in all,
        the oldest of all dropped first. Changes at or after ``complete_since_ms``
        are all there (up to ``limit``); older ones may have been dropped. 404 if
        there is no such container."""
        cid = request.match_info["cid"]
        if _record(containers, cid) is None:
            return _error(404, "no such container")
        return web.json_response({"id": cid, "since_ms": history.since_ms,
                                  "complete_since_ms": history.complete_since_ms,
                                  "limit": history.limit, "total": history.total,
                                  "entries": [e.as_json() for e in history.entries(cid)]})

    @routes.get("/api/nodes")
    async def list_nodes(request: web.Request) -> web.Response:
        """Every worker node record, by name (see ``_node_json``)."""
        now = _now_ms()
        return web.json_response([_node_json(n, now, timeout_ms) for n in
                                  sorted(model.nodes(node.groups, model.held_cells(node.groups)),
                                         key=lambda n: n.name)])

    @routes.get("/api/events")
    async def events(request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ``event: container`` with ``{"id", "record" (None:
        deleted, or not listed), "origin", "matches"}`` after each change of a
        container; with ``?nodes=1`` also ``event: node`` with ``{"name", "node"
        (see ``/api/nodes``; None: removed), "origin"}``. A record is sent as it is
        when sent: changes it had meanwhile are sent once (``origin``: the latest
        one's).

        Filters, as for ``GET /api/containers`` (``owner``, ``desired``, ``actual``,
        ``node``; a bad or unknown parameter: a 400 before the stream starts): only
        changes of records that match the filter before or after the change are
        sent. A record that stops matching is sent once more, with its new state and
        ``"matches": false`` (the client drops it); later changes of it are not sent
        until it matches again. ``matches``: whether the record as sent matches the
        filter (without one: whether it is listed, i.e. ``record`` is not None).

        The stream starts with the comment ``: connected`` once it is subscribed: a
        list read after that misses no change."""
        params = route_params(request)
        flt = _filter(params)
        nodes = params.get("nodes", "0")
        if nodes not in ("0", "1"):
            raise _bad_request(f"'nodes' must be 1 (node events too) or 0, not {nodes[:50]!r}")
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if request.method == "HEAD":  # the headers alone: a HEAD's answer has no body
            return web.Response(headers=headers)
        task = asyncio.current_task()
        assert task is not None
        pending = _Pending(flt)
        unsubscribes = [containers.subscribe(model.CONTAINERS, pending.note)]
        if nodes == "1":
            unsubscribes.append(node.groups.subscribe(model.CELLS, pending.note))
        resp = web.StreamResponse(headers=headers)
        streams.add(task)
        try:
            await resp.prepare(request)
            await resp.write(b": connected\n\n")
            while True:
                change = await pending.next(15)
                if change is None:
                    await resp.write(b": keep-alive\n\n")
                    continue
                key, origin = change
                if not key.startswith(model.CONTAINERS):
                    kind, data = "node", _node_event(key, origin)
                else:
                    cid = key[len(model.CONTAINERS):]
                    kind = "container"
                    rec = containers.get(key)
                    view = (model.Container.of(key, rec).as_json()
                            if listed_fields(rec) is not None else None)
                    data = {"id": cid, "record": view, "origin": origin,
                            "matches": flt.matches(rec)}
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
        """200 when every part of the node is ``"ok"`` in every group web holds (broker,
        membership, delivery, store, publish, echo: :meth:`AmqpNode.health`,
        :meth:`NodeGroups.overall_health`), else 503 with what is wrong; with the numbers
        behind it, for the routing's default group and, under ``groups``, for each:
        ``clock``, ``buffered`` (operations waiting for earlier ones) and ``missing``
        (sender -> [first, last] sequence numbers not delivered here)."""
        health = node.overall_health()
        ok = all(v == "ok" for v in health.values())
        groups = {g: {"clock": dict(n.replica.clock), "buffered": n.replica.buffered,
                      "missing": {o: list(span) for o, span in n.replica.missing().items()}}
                  for g, n in node.nodes.items()}
        return web.json_response({"ok": ok, "replica": node.replica_id,
                                  **groups[node.routing.default], "groups": groups, **health},
                                 status=200 if ok else 503)

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _node_event(key: str, origin: str) -> dict[str, Any]:
        rec = node.groups.get(key)
        view = (_node_json(model.Node.of(key, rec), _now_ms(), timeout_ms)
                if isinstance(rec, dict) else None)
        return {"name": model.node_name(key), "node": view, "origin": origin}

    @routes.get("/")
    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    @routes.get("/static/{name}")
    async def static_file(request: web.Request) -> web.FileResponse:
        """One of the page's files (``services/static``); a 404 with ``{"error": ...}``
        for any other name (aiohttp's static route answered an empty 404)."""
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound(reason=f"no static file {name!r}: the page's are "
                                          f"{', '.join(sorted(STATIC_FILES))}")
        return web.FileResponse(STATIC / name)

    async def end_streams(app: web.Application) -> None:
        """Shutting down: event streams end now (they would hold shutdown for
        up to the keep-alive interval otherwise); clients reconnect elsewhere."""
        for t in list(streams):
            t.cancel()

    async def forget_history(app: web.Application) -> None:
        unsubscribe_history()
        listing.close()

    app = web.Application(middlewares=[json_errors, query_params])
    app.add_routes(routes)
    app.on_shutdown.append(end_streams)
    unsubscribe_history = containers.subscribe(model.CONTAINERS, history.record)
    app.on_cleanup.append(forget_history)
    return app


class AccessLog(AbstractAccessLogger):
    """One line per request, at INFO on the ``aiohttp.access`` logger (a ``/healthz`` answered
    200 at DEBUG: probes come every few seconds): the client's address,
    the method and path with its query, the status, the body's size in bytes and how long
    web took to answer in ms, e.g. ``127.0.0.1 "POST /api/containers" 201 212 B 1.4 ms``.
    The services' log format adds the time (services/logs.py). Nothing is formatted when
    INFO is off."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # a health probe that finds all well, every few seconds, is not an event: DEBUG
        level = (logging.DEBUG if request.path == "/healthz" and response.status == 200
                 else logging.INFO)
        self.logger.log(level, '%s "%s %s" %d %d B %.1f ms', request.remote, request.method,
                        request.path_qs, response.status, response.body_length, 1000 * time)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """What aiohttp's request handler logs through (its ``logger``; ``aiohttp.server``): a
    request it could not read (a header over 8,190 bytes, a malformed request line: a 4xx
    ``HttpProcessingError`` its parser raises before any route runs) in one line at
    WARNING, not with a traceback at ERROR: the client's error, not web's. Anything else as
    aiohttp logs it."""

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            self.logger.warning("%s: %d %s", str(msg) % args, exc_info.code,
                                exc_info.message.splitlines()[0] if exc_info.message else "")
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def starting_app(node: NodeGroups[Node]) -> web.Application:
    """What web answers while it joins its group, before :func:`make_app`'s routes serve:
    ``GET /healthz`` 503 with each part's health (:meth:`NodeGroups.overall_health`: the
    broker it connects to, or the membership it waits for), every other request 503 with
    ``{"error": ...}`` saying so, and ``Retry-After``. So a page, a client or a load
    balancer finds the port open and learns why web does not serve yet (a broker that does
    not answer, a refused password: the log says which), instead of a refused connection."""

    async def answer(request: web.Request) -> web.Response:
        health = node.overall_health()
        if request.path == "/healthz":
            return web.json_response({"ok": False, "replica": node.replica_id, **health},
                                     status=503)
        wrong = "; ".join(f"{part}: {text}" for part, text in health.items() if text != "ok")
        response = _error(503, f"web is starting: it serves once it has joined its group "
                               f"({wrong or 'starting'}); retry in a few seconds")
        response.headers["Retry-After"] = "2"
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def serve(node: NodeGroups[Node], host: str, port: int,
                app: web.Application | None = None) -> web.AppRunner:
    """Serve ``app`` (web's, :func:`make_app`, by default) on ``host``:``port`` until the
    runner returned is cleaned up. Raises OSError if the port cannot be bound. Another
    ``app`` (:func:`starting_app`) does not linger for the unread body of a request it
    answered: its cleanup, as web goes on to serve, does not wait for a client."""
    options: dict[str, Any] = {} if app is None else {"lingering_time": 0}
    app = make_app(node) if app is None else app
    runner = web.AppRunner(app, access_log_class=AccessLog,
                           logger=ServerLog(logging.getLogger("aiohttp.server")), **options)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

