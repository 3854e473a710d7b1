"""What the page reads from web, without a browser: web's per-container history
(services/history.py) and the routes ``GET /api/containers/{id}/history``,
``GET /api/nodes`` and ``GET /api/events?nodes=1``, on the in-memory network.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from crdt_ops import Replica
from crdt_ops.events import ChangeEvent
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from services import model
from services.containers import Containers
from services.history import History, service_of
from services.web import make_app
from tests.support import with_cell


def test_service_of_names_the_principal() -> None:
    assert service_of("web") == "web" and service_of("web.host-2") == "web"
    assert service_of("logic") == "logic"
    assert service_of("worker.w1") == "worker.w1" and service_of("worker.w1.b") == "worker.w1"
    assert service_of("webby") is None and service_of("worker") is None


def test_history_without_a_loop_keeps_every_change_bounded() -> None:
    h = History(model.CONTAINERS, limit=3, now_ms=lambda: 7)
    r = Replica("web", policy=model.POLICY)
    r.subscribe(model.CONTAINERS, h.record)
    rec = model.container(r, "c1")
    rec.register("name").set("one")
    for i in range(5):
        rec.counter("restart_generation").increment()
        assert [e.as_json()["changes"][-1]["new"] for e in h.entries("c1")][-1] == i + 1
    entries = [e.as_json() for e in h.entries("c1")]
    assert len(entries) == 3  # the last 3 of 6
    assert entries[-1] == {"at_ms": 7, "origin": "web", "service": "web", "kind": "changed",
                           "changes": [{"field": "restart_generation", "old": 4, "new": 5}]}
    r.remove(model.CONTAINERS + "c1")
    assert h.entries("c1") == []


@pytest.mark.asyncio
async def test_one_request_or_one_batch_is_one_entry() -> None:
    bus, cell_bus = MemoryBus(), MemoryBus()  # the platform's group, and the cell's
    web, logic = (with_cell(MemoryNode(bus, rid, policy=model.POLICY), cell_bus)
                  for rid in ("web", "logic"))
    for n in (web, logic):
        await n.start()
    h = History(model.CONTAINERS)
    Containers(web.groups).subscribe(model.CONTAINERS, h.record)
    async with web.write() as r:  # as POST /api/containers writes it
        rec = model.container(r, "c1")
        rec.register("name").set("x")
        rec.register("owner").set("o")
        rec.register("power_desired").set("off")
    await asyncio.sleep(0)  # the next request: a later loop iteration
    async with web.write() as r:
        model.container(r, "c1").register("power_desired").set("on")
    await asyncio.sleep(0.05)
    async with logic.write() as r:  # as logic places it: in two groups
        model.name_home(r, "c1", (model.DEFAULT_CELL, "w1"))
        model.container(r, "c1").register("rejected_reason").set(None)  # a no-op: no change
        model.placement(r, (model.DEFAULT_CELL, "w1"), "c1").register("assigned_node").set("w1")
    await asyncio.sleep(0.05)
    entries = [e.as_json() for e in h.entries("c1")]
    assert [(e["kind"], e["service"]) for e in entries[:2]] == [
        ("created", "web"), ("changed", "web")]
    assert entries[0]["changes"] == [{"field": "name", "old": None, "new": "x"},
                                     {"field": "owner", "old": None, "new": "o"},
                                     {"field": "power_desired", "old": None, "new": "off"}]
    assert entries[1]["changes"] == [{"field": "power_desired", "old": "off", "new": "on"}]
    # logic's block reached web as one batch per group: one entry, or one per group
    assert 3 <= len(entries) <= 4 and {e["service"] for e in entries[2:]} == {"logic"}
    assert sorted((c["field"], c["new"]) for e in entries[2:] for c in e["changes"]) == [
        ("assigned_node", "w1"), ("cell", model.DEFAULT_CELL), ("node", "w1")]
    h.record(ChangeEvent(model.CONTAINERS + "c1", {"a": 1}, {"a": 1}, "web"))  # no change
    assert len(h.entries("c1")) == len(entries)


@pytest_asyncio.fixture
async def app() -> AsyncIterator[tuple[TestClient[Any, Any], MemoryBus]]:
    bus, cell_bus = MemoryBus(), MemoryBus()  # the platform's group, and the cell's
    web = MemoryNode(bus, "web", policy=model.POLICY)
    await web.start()
    app = make_app(with_cell(web, cell_bus))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    yield client, cell_bus
    await client.close()


async def beat(bus: MemoryBus, name: str, age_s: float, capacity: int, running: int,
               lease_ms: int = 0) -> None:
    n = MemoryNode(bus, f"worker.{name}", policy=model.POLICY)
    await n.start()
    async with n.write() as r:
        rec = model.node(r, model.DEFAULT_CELL, name)
        rec.register("heartbeat").set(int((time.time() - age_s) * 1000))
        rec.register("capacity").set(capacity)
        rec.register("running").set(running)
        if lease_ms:
            rec.register("lease_ms").set(lease_ms)
    await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_routes_for_the_page(app: tuple[TestClient[Any, Any], MemoryBus]) -> None:
    client, bus = app
    assert await (await client.get("/api/nodes")).json() == []
    await beat(bus, "b", age_s=0, capacity=3, running=1)
    await beat(bus, "a", age_s=9, capacity=2, running=0)
    # a worker under a 30 s lease beats every 6 s: silent after two beats and a second
    await beat(bus, "c", age_s=9, capacity=1, running=0, lease_ms=30_000)
    nodes = await (await client.get("/api/nodes")).json()
    assert [(n["name"], n["capacity"], n["running"], n["live"], n["timeout_ms"])
            for n in nodes] == [("a", 2, 0, False, 5000), ("b", 3, 1, True, 5000),
                                ("c", 1, 0, True, 13_000)]
    assert 9000 <= nodes[0]["age_ms"] < 12_000 and 0 <= nodes[1]["age_ms"] < 3000

    r = await client.get("/api/containers/nope/history")
    assert r.status == 404 and "error" in await r.json()
    cid = (await (await client.post("/api/containers", json={"name": "n"})).json())["id"]
    await client.post(f"/api/containers/{cid}/start")
    history = await (await client.get(f"/api/containers/{cid}/history")).json()
    assert history["id"] == cid and history["limit"] == 50
    assert [(e["kind"], e["origin"]) for e in history["entries"]] == [
        ("created", "web"), ("changed", "web")]
    await client.delete(f"/api/containers/{cid}")
    assert (await client.get(f"/api/containers/{cid}/history")).status == 404


async def read_events(client: TestClient[Any, Any], path: str, bus: MemoryBus,
                      node: str, want: int) -> list[tuple[str, Any]]:
    """The first ``want`` events of the stream at ``path``, after a new node ``node``
    beats and a container is created."""
    out: list[tuple[str, Any]] = []
    async with client.get(path) as resp:
        assert (await resp.content.readline()).startswith(b": connected")
        await beat(bus, node, age_s=0, capacity=1, running=0)
        await client.post("/api/containers", json={"name": "e"})
        kind = ""
        while len(out) < want:
            line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().strip()
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


@pytest.mark.asyncio
async def test_node_events_only_for_who_asks(app: tuple[TestClient[Any, Any], MemoryBus]
                                             ) -> None:
    client, bus = app
    plain = await read_events(client, "/api/events", bus, "v", 1)
    assert [k for k, _ in plain] == ["container"]  # existing clients see what they saw
    both = await read_events(client, "/api/events?nodes=1", bus, "w", 2)
    assert [k for k, _ in both] == ["node", "container"]
    node = both[0][1]
    assert node["name"] == "w" and node["origin"] == "worker.w"
    assert node["node"]["capacity"] == 1 and node["node"]["live"] is True
