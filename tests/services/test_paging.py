"""``GET /api/containers`` by pages and filters, the filtered event stream, and web's
bounded history (issue 13: the API at 50,000 records), on the in-memory network.

Asserted: pages cover every record once, in id order, with an RFC 8288 ``Link`` to the
next page and none on the last; a cursor stays valid while records are created and
deleted between pages (nothing seen twice, nothing present throughout skipped); the
filters' indexes, kept from change events, list what a full pass lists after any
sequence of changes; a page reads a bounded number of records (without a filter,
not more than the page and one; with one, at most ``limit + SCAN_BEYOND``); bad
parameters get a 400 naming them and change nothing; the event stream sends only
the changes of records that match, and a record that stops matching once; the index
adds under 100 bytes per record; the history keeps at most ``total`` entries in all.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt_ops import Replica
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from services import listing as listing_module
from services import model
from services.containers import Containers
from services.history import History
from services.listing import SCAN_BEYOND, Filter, Listing
from services.web import decode_cursor, encode_cursor, make_app
from tests.support import cell_only, with_cell

Client = TestClient[Any, Any]
#: the buses of the platform's group and of its default cell's
Buses = tuple[MemoryBus, MemoryBus]


@pytest_asyncio.fixture
async def app() -> AsyncIterator[tuple[Client, Buses, MemoryNode]]:
    """web, holding the platform's group (its node is returned) and the default cell's."""
    bus, cell_bus = MemoryBus(), MemoryBus()
    web = MemoryNode(bus, "web", policy=model.POLICY)
    groups = with_cell(web, cell_bus)
    await groups.start()
    client: Client = TestClient(TestServer(make_app(groups)))
    await client.start_server()
    yield client, (bus, cell_bus), web
    await client.close()


async def seed(web: MemoryNode, n: int, owner: str | Any = "op") -> list[str]:
    """``n`` records as web's POST writes them (``owner``: a str, or a function of the
    index); their ids."""
    ids = []
    async with web.write() as r:
        for i in range(n):
            cid = uuid.uuid4().hex[:12]
            rec = model.container(r, cid)
            rec.register("name").set(f"c-{i}")
            rec.register("owner").set(owner(i) if callable(owner) else owner)
            rec.register("power_desired").set("off")
            ids.append(cid)
    return ids


def next_link(headers: Any) -> str | None:
    """The target of the ``Link`` header's ``rel="next"``, or None."""
    link = headers.get("Link")
    if link is None:
        return None
    target, _, params = link.partition(";")
    assert params.strip() == 'rel="next"' and target.startswith("<") and target.endswith(">")
    return str(target[1:-1])


async def every_page(client: Client, url: str) -> list[list[dict[str, Any]]]:
    """Every page from ``url`` on, following the next links."""
    pages = []
    next_url: str | None = url
    while next_url is not None:
        r = await client.get(next_url)
        assert r.status == 200, await r.text()
        pages.append(await r.json())
        next_url = next_link(r.headers)
    return pages


@pytest.mark.asyncio
async def test_pages_cover_every_record_once_in_id_order(
        app: tuple[Client, Buses, MemoryNode]) -> None:
    client, bus, web = app
    r = await client.get("/api/containers")
    assert r.status == 200 and await r.json() == [] and "Link" not in r.headers
    ids = await seed(web, 250)
    r = await client.get("/api/containers")
    first = await r.json()
    assert len(first) == 100 and r.headers["X-Total-Count"] == "250"
    link = next_link(r.headers)
    assert link is not None and link.startswith("/api/containers?")
    assert "limit" not in parse_qs(urlsplit(link).query)  # the default stays the default
    pages = await every_page(client, "/api/containers")
    assert [len(p) for p in pages] == [100, 100, 50]
    listed = [c["id"] for p in pages for c in p]
    assert listed == sorted(ids)
    assert {(c["owner"], c["power_desired"], c["power_actual"]) for p in pages for c in p
            } == {("op", "off", "off")}
    pages = await every_page(client, "/api/containers?limit=1000")
    assert [len(p) for p in pages] == [250]
    pages = await every_page(client, "/api/containers?limit=50")
    assert [len(p) for p in pages] == [50] * 5  # the last full page: no link after it
    # a record without a name (logic's answer that survived a delete) is not listed
    logic = MemoryNode(bus[0], "logic", policy=model.POLICY)
    await logic.start()
    async with logic.write() as w:
        model.container(w, "zzz-nameless").register("rejected_reason").set("quota")
    await asyncio.sleep(0.05)
    assert [c["id"] for p in await every_page(client, "/api/containers?limit=7")
            for c in p] == sorted(ids)
    assert (await client.get("/api/containers")).headers["X-Total-Count"] == "250"


@pytest.mark.asyncio
async def test_a_cursor_is_stable_while_records_come_and_go(
        app: tuple[Client, Buses, MemoryNode]) -> None:
    client, _, web = app
    rng = random.Random(13)
    ids = await seed(web, 300)
    for _ in range(5):
        present = set(ids)
        ever = set(ids)  # present at some moment
        throughout = set(ids)  # present from the first page to the last
        seen: list[str] = []
        next_url: str | None = "/api/containers?limit=37"
        while next_url is not None:
            r = await client.get(next_url)
            seen += [c["id"] for c in await r.json()]
            next_url = next_link(r.headers)
            # between two pages: some records deleted, some created (anywhere in the order)
            for cid in rng.sample(sorted(present), 5):
                async with web.write() as w:
                    w.remove(model.CONTAINERS + cid)
                present.discard(cid)
                throughout.discard(cid)
            created = set(await seed(web, 5))
            present |= created
            ever |= created
        assert seen == sorted(set(seen)), "a record twice, or out of order"
        assert throughout <= set(seen), "a record present throughout was skipped"
        assert set(seen) <= ever
        ids = sorted(present)


# ------------------------------------------------------------------ the filters' indexes

CIDS = [f"c{i}" for i in range(10)]
OWNERS: list[Any] = ["ann", "bob", "cy", 7, None]  # an odd writer: not text
NODES = ["n1", "n2"]
CELLS = ["a", "b"]
change = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(CIDS), st.sampled_from(OWNERS),
              st.sampled_from([None, "x"])),
    st.tuples(st.just("desired"), st.sampled_from(CIDS), st.sampled_from(["on", "off"])),
    st.tuples(st.just("assign"), st.sampled_from(CIDS), st.sampled_from(CELLS),
              st.sampled_from([None, *NODES])),
    st.tuples(st.just("report"), st.sampled_from(CIDS), st.sampled_from(CELLS),
              st.sampled_from(NODES),
              st.sampled_from(["on", "off", "failed", "starting", None])),
    st.tuples(st.just("unplace"), st.sampled_from(CIDS), st.sampled_from(CELLS),
              st.sampled_from(NODES)),
    st.tuples(st.just("delete"), st.sampled_from(CIDS)),
)
FILTERS = [Filter(), Filter(owner="ann"), Filter(owner="nobody"), Filter(owner="7"),
           Filter(desired="on"),
           Filter(desired="off"), Filter(actual="on"), Filter(actual="off"),
           Filter(actual="failed"), Filter(node="n1"), Filter(node="n2"),
           Filter(owner="bob", desired="on"), Filter(owner="ann", actual="on", node="n1"),
           Filter(desired="on", actual="off")]


def apply_change(r: Replica, ch: tuple[Any, ...]) -> None:
    """One change, to ``r`` (a replica holding every key: the platform's and the cells')."""
    kind, cid = ch[0], ch[1]
    rec = model.container(r, cid)
    if kind == "create":
        rec.register("owner").set(ch[2])
        rec.register("name").set(ch[3])
    elif kind == "desired":
        rec.register("power_desired").set(ch[2])
    elif kind == "assign":  # as logic places: the record names the home; the placement
        home = (ch[2], ch[3] or NODES[0])  # (None: a placement that names no node)
        rec.register("cell").set(home[0])
        rec.register("node").set(home[1])
        model.placement(r, home, cid).register("assigned_node").set(ch[3])
    elif kind == "report":  # into the placement at any home (an orphan's shows nowhere)
        model.report(r, (ch[2], ch[3]), cid).register("power_actual").set(ch[4])
    elif kind == "unplace":
        r.remove(model.placement_key((ch[2], ch[3]), cid))
    else:
        r.remove(model.CONTAINERS + cid)


def full_pass(r: Replica, flt: Filter) -> list[str]:
    """What the listing must list: every named record whose fields equal the filter's."""
    return [c.id for c in model.containers(r) if c.name and all(
        want is None or want == have for want, have in zip(
            flt.values(), (c.owner, c.power_desired, c.power_actual, c.assigned_node),
            strict=True))]


def listed(listing: Listing, flt: Filter, limit: int) -> list[str]:
    out: list[str] = []
    after = None
    while True:
        page = listing.page(flt, after, limit)
        assert len(page.records) <= limit
        out += [k[len(model.CONTAINERS):] for k, _ in page.records]
        if page.after is None:
            return out
        assert after is None or page.after > after, "a cursor that does not move on"
        after = page.after


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(change, max_size=15), after=st.lists(change, max_size=40),
       limit=st.integers(1, 4), small=st.sampled_from([2, listing_module.SMALL_BUCKET]))
def test_the_filters_list_what_a_full_pass_lists(before: list[tuple[Any, ...]],
                                                  after: list[tuple[Any, ...]],
                                                  limit: int, small: int) -> None:
    # small=2: buckets become SortedLists
    saved, listing_module.SMALL_BUCKET = listing_module.SMALL_BUCKET, small
    try:
        check_against_a_full_pass(before, after, limit)
    finally:
        listing_module.SMALL_BUCKET = saved


def check_against_a_full_pass(before: list[tuple[Any, ...]], after: list[tuple[Any, ...]],
                              limit: int) -> None:
    r = Replica("web")  # no policy: one replica writes every field
    for ch in before:  # there before web starts: the index is built from the records
        apply_change(r, ch)
    listing = Listing(Containers(r))
    for ch in after:  # then kept from change events
        apply_change(r, ch)
    rebuilt = Listing(Containers(r))
    for flt in FILTERS:
        want = full_pass(r, flt)
        assert listed(listing, flt, limit) == want, flt
        assert listed(rebuilt, flt, limit) == want, flt
    assert listing.count == rebuilt.count == len(full_pass(r, Filter()))
    for kept, fresh in zip(listing._indexes, rebuilt._indexes, strict=True):
        assert kept.buckets() == fresh.buckets()


class CountingReplica:
    """A replica's reads for :class:`Listing`, counted: the records it computed."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.reads = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.reads += 1
        return self.replica.get(key, default)

    def items(self, prefix: str = "", *, after: str | None = None,
              limit: int | None = None) -> list[tuple[str, Any]]:
        out = self.replica.items(prefix, after=after, limit=limit)
        self.reads += len(out)
        return out

    def subscribe(self, prefix: str, callback: Any) -> Any:
        return self.replica.subscribe(prefix, callback)


def test_a_page_reads_a_bounded_number_of_records() -> None:
    r = Replica("web")
    n = 3000
    for i in range(n):  # owner x: off, owner y: on; one record of x is on, the last one
        rec = model.container(r, f"c{i:05d}")
        rec.register("name").set("n")
        rec.register("owner").set("x" if i % 2 == 0 or i == n - 1 else "y")
        rec.register("power_desired").set("on" if i % 2 else "off")
    counted = CountingReplica(r)
    listing = Listing(Containers(counted))  # type: ignore[arg-type]
    counted.reads = 0
    page = listing.page(Filter(), None, 100)
    assert len(page.records) == 100 and counted.reads <= 101  # not n
    counted.reads = 0
    page = listing.page(Filter(), model.CONTAINERS + "c02000", 100)
    assert page.records[0][0] == model.CONTAINERS + "c02001" and counted.reads <= 101
    # with a filter: the smallest bucket's candidates, at most limit + SCAN_BEYOND a page
    flt = Filter(owner="x", desired="on")
    pages, reads, after = [], [], None
    while True:
        counted.reads = 0
        page = listing.page(flt, after, 10)
        reads.append(counted.reads)
        pages.append([k for k, _ in page.records])
        if page.after is None:
            break
        after = page.after
    assert max(reads) <= 10 + SCAN_BEYOND
    assert pages[0] == [] and pages[-1] == [model.CONTAINERS + f"c{n - 1:05d}"]
    assert len(pages) == 2  # 1,500 candidates: one short (empty) page, then the record


# ------------------------------------------------------------------ the HTTP side


@pytest.mark.asyncio
async def test_filters_over_http_and_their_links(
        app: tuple[Client, Buses, MemoryNode]) -> None:
    client, bus, web = app
    odd = "a b&c=d>e<f\"g,h;i é"  # an owner a URL must quote
    ids = await seed(web, 60, owner=lambda i: odd if i % 3 == 0 else f"o{i % 3}")
    theirs = sorted(cid for i, cid in enumerate(ids) if i % 3 == 0)
    pages = await every_page(client, "/api/containers?" + urlencode({"owner": odd,
                                                                      "limit": 7}))
    assert [c["id"] for p in pages for c in p] == theirs
    assert [len(p) for p in pages] == [7, 7, 6]
    r = await client.get("/api/containers", params={"owner": odd, "limit": "7"})
    link = next_link(r.headers)
    assert link is not None and "X-Total-Count" not in r.headers  # filtered: no count
    query = parse_qs(urlsplit(link).query)
    assert query["owner"] == [odd] and query["limit"] == ["7"]
    assert decode_cursor(query["cursor"][0]) == model.CONTAINERS + theirs[6]
    # desired, actual and node, from what logic and a worker write
    logic = with_cell(MemoryNode(bus[0], "logic", policy=model.POLICY), bus[1])
    worker = cell_only(MemoryNode(bus[1], "worker.w1", policy=model.POLICY))
    for n in (logic, worker):
        await n.start()
    on = sorted(ids[:5])
    for cid in on:
        assert (await client.post(f"/api/containers/{cid}/start")).status == 202
    async with logic.write() as w:
        for cid in on[:3]:
            model.container(w, cid).register("cell").set(model.DEFAULT_CELL)
            model.container(w, cid).register("node").set("w1")
            model.placement(w, (model.DEFAULT_CELL, "w1"), cid).register("assigned_node").set(
                "w1")
    await asyncio.sleep(0.05)
    async with worker.write() as w:
        for cid in on[:2]:
            model.report(w, (model.DEFAULT_CELL, "w1"), cid).register("power_actual").set("on")
    await asyncio.sleep(0.05)

    async def ids_of(query: str) -> list[str]:
        return [c["id"] for p in await every_page(client, "/api/containers?" + query)
                for c in p]
    assert await ids_of("desired=on") == on
    assert await ids_of("desired=off&limit=1000") == sorted(set(ids) - set(on))
    assert await ids_of("node=w1") == on[:3]
    assert await ids_of("actual=on") == on[:2]
    assert await ids_of("actual=on&node=w1&desired=on") == on[:2]
    assert await ids_of("actual=off&node=w1") == on[2:3]
    assert await ids_of("actual=failed") == []
    assert await ids_of("node=w2") == []


BAD_LISTS = [
    ("limit=0", "'limit' must be an integer from 1 to 1000"),
    ("limit=1001", "'limit' must be an integer from 1 to 1000"),
    ("limit=-1", "'limit' must be an integer from 1 to 1000"),
    ("limit=abc", "'limit' must be an integer from 1 to 1000"),
    ("limit=1.5", "'limit' must be an integer from 1 to 1000"),
    ("limit=", "'limit' must be an integer from 1 to 1000"),
    ("limit=%D9%A1", "'limit' must be an integer from 1 to 1000"),  # an Arabic-Indic 1
    ("limit=" + "9" * 5000, "'limit' must be an integer from 1 to 1000"),
    ("limit=10&limit=20", "'limit' is given more than once"),
    ("cursor=", "'cursor' must be a cursor this API gave"),
    ("cursor=not%20base64", "'cursor' must be a cursor this API gave"),
    ("cursor=_w", "'cursor' must be a cursor this API gave"),  # bytes that are not UTF-8
    ("cursor=YWJj=", "'cursor' must be a cursor this API gave"),
    ("cursor=YWJ", "'cursor' must be a cursor this API gave"),  # a second spelling of YWI
    ("cursor=" + "A" * 5000, "'cursor' must be a cursor this API gave"),
    ("desired=maybe", "'desired' must be one of on, off"),
    ("desired=ON", "'desired' must be one of on, off"),
    ("actual=starting", "'actual' must be one of on, off, failed"),
    ("owner=", "'owner' must be from 1 to 200 characters"),
    ("owner=" + "o" * 201, "'owner' must be from 1 to 200 characters"),
    ("node=", "'node' must be from 1 to 200 characters"),
    ("limt=5", "unknown query parameter 'limt'; this route takes limit, cursor, owner"),
    ("page=2", "unknown query parameter 'page'"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("query", "error"), BAD_LISTS)
async def test_bad_parameters_get_a_400_naming_them(
        app: tuple[Client, Buses, MemoryNode], query: str, error: str) -> None:
    client, _, web = app
    await seed(web, 3)
    before = (web.replica.state(), dict(web.replica.clock))
    r = await client.get("/api/containers?" + query)
    body = await r.json()
    assert r.status == 400 and error in body["error"], body
    assert "Link" not in r.headers
    assert (web.replica.state(), dict(web.replica.clock)) == before
    if query.startswith(("limit=", "cursor=")):
        return
    r = await client.get("/api/events?nodes=1&" + query)  # the stream: the same answer
    assert r.status == 400 and r.content_type == "application/json"
    assert error.replace("limit, cursor, ", "nodes, ") in (await r.json())["error"]


def test_cursors_round_trip_and_are_opaque_text() -> None:
    for cid in ["0", "abc", "ffffffffffff", "a/b c", "é", "\U0001f600", "x" * 300]:
        cursor = encode_cursor(model.CONTAINERS + cid)
        assert cursor.replace("-", "").replace("_", "").isalnum()
        assert decode_cursor(cursor) == model.CONTAINERS + cid


# ------------------------------------------------------------------ the event stream


class Stream:
    """An open ``GET /api/events`` response, read one event at a time."""

    def __init__(self, resp: Any) -> None:
        self.resp = resp

    async def next(self, timeout: float = 5) -> tuple[str, dict[str, Any]]:
        kind = ""
        while True:
            line = (await asyncio.wait_for(self.resp.content.readline(), timeout)).decode()
            if line.startswith("event: "):
                kind = line[7:].strip()
            elif line.startswith("data: "):
                return kind, json.loads(line[6:])


@pytest.mark.asyncio
async def test_the_event_stream_sends_only_matching_records(
        app: tuple[Client, Buses, MemoryNode]) -> None:
    client, _, _ = app

    async def create(owner: str) -> str:
        r = await client.post("/api/containers", json={"name": "n", "owner": owner})
        return str((await r.json())["id"])

    async with client.get("/api/events?owner=ann&desired=on") as resp:
        assert (await resp.content.readline()).startswith(b": connected")
        stream = Stream(resp)
        ann, bob = await create("ann"), await create("bob")
        await client.post(f"/api/containers/{bob}/start")  # bob's: never sent
        await client.post(f"/api/containers/{ann}/start")  # ann's now matches: sent
        kind, data = await stream.next()
        assert kind == "container" and data["id"] == ann and data["matches"] is True
        assert data["record"]["power_desired"] == "on" and data["origin"] == "web"
        await asyncio.sleep(0.05)  # sent before the next change: not merged with it
        await client.post(f"/api/containers/{ann}/stop")  # it leaves the filter: sent once
        kind, data = await stream.next()
        assert data["id"] == ann and data["matches"] is False
        assert data["record"]["power_desired"] == "off"
        await client.post(f"/api/containers/{ann}/restart")  # matches again: sent again
        kind, data = await stream.next()
        assert data["id"] == ann and data["matches"] is True
        await client.post(f"/api/containers/{bob}/stop")
        ann2 = await create("ann")  # off: not sent
        await client.delete(f"/api/containers/{ann2}")  # never matched: not sent
        await client.delete(f"/api/containers/{ann}")  # deleted: sent, without a record
        kind, data = await stream.next()
        assert data["id"] == ann and data["record"] is None and data["matches"] is False
        with pytest.raises(TimeoutError):
            await stream.next(timeout=0.3)
    async with client.get("/api/events") as resp:  # without a filter: every change
        await resp.content.readline()
        stream = Stream(resp)
        cid = await create("zoe")
        kind, data = await stream.next()
        assert data["id"] == cid and data["matches"] is True and data["record"]["owner"] == "zoe"


# ------------------------------------------------------------------ memory


def grow(replica: Replica, n: int, seed_: int = 0) -> None:
    """``n`` records as web creates them, then logic places each (remote operations;
    ``replica`` holds every key: the platform's and the cells')."""
    rng = random.Random(seed_)
    web = Replica("web", policy=model.POLICY)
    logic = Replica("logic", policy=model.POLICY)
    cids = [f"{rng.getrandbits(48):012x}" for _ in range(n)]
    for i, cid in enumerate(cids):
        rec = model.container(web, cid)
        rec.register("name").set(f"c-{i}")
        rec.register("owner").set(f"owner-{i % 100}")
        rec.register("power_desired").set("on" if i % 3 else "off")
    for m in web.outgoing():
        replica.receive(m)
        logic.receive(m)
    for i, cid in enumerate(cids):
        home = (model.DEFAULT_CELL, f"worker-{i % 7}")
        model.container(logic, cid).register("cell").set(home[0])
        model.container(logic, cid).register("node").set(home[1])
        model.placement(logic, home, cid).register("assigned_node").set(home[1])
    for m in logic.outgoing():
        replica.receive(m)


def test_the_listing_adds_under_100_bytes_per_record() -> None:
    """What web's listing holds, measured as what dropping it frees (its indexes, and
    any key it alone holds) once it was kept from the events of ``n`` new records."""
    n = 5_000
    gc.collect()
    tracemalloc.start()
    try:
        r = Replica("web.x", policy=model.POLICY)  # another web than the writer
        listing = Listing(Containers(r))
        grow(r, n)
        gc.collect()
        with_listing = tracemalloc.get_traced_memory()[0]
        assert listing.count == n
        listing.close()
        del listing
        gc.collect()
        without = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_record = (with_listing - without) / n
    print(f"the listing's indexes: {per_record:.0f} bytes per record at {n} records")
    assert 20 < per_record < 100


def test_the_history_keeps_at_most_total_entries() -> None:
    h = History(model.CONTAINERS, limit=3, total=5, now_ms=iter(range(1000)).__next__)
    r = Replica("web", policy=model.POLICY)
    r.subscribe(model.CONTAINERS, h.record)
    assert h.complete_since_ms == h.since_ms == 0
    for cid in ("a", "b", "c"):  # no event loop: each write is an entry
        rec = model.container(r, cid)
        rec.register("name").set(cid)
        rec.register("power_desired").set("on")
    assert len(h) == 5  # 6 entries written, the oldest of all dropped: a's creation
    assert [e.as_json()["changes"][0]["field"] for e in h.entries("a")] == ["power_desired"]
    assert h.complete_since_ms == 1  # a's creation was stamped 1
    for _ in range(4):  # c changes 4 more times: its limit is 3
        model.container(r, "c").counter("restart_generation").increment()
    assert len(h.entries("c")) == 3 and len(h) == 5
    assert h.entries("a") == [] and len(h.entries("b")) == 2
    r.remove(model.CONTAINERS + "c")
    assert len(h) == 2 and h.entries("c") == []
    for _ in range(1000 - 20):  # many drops by the per-record limit: the queue is swept
        model.container(r, "b").counter("restart_generation").increment()
        assert len(h._order) <= 2 * h.total + 1
    assert len(h) == 3
    with pytest.raises(ValueError, match="at least 1"):
        History(model.CONTAINERS, total=0)


def test_the_history_does_not_grow_with_the_records() -> None:
    h = History(model.CONTAINERS)
    r = Replica("web.x", policy=model.POLICY)
    Containers(r).subscribe(model.CONTAINERS, h.record)
    grow(r, 4_000)  # 8,000 entries: a creation and a placement each
    assert len(h) == h.total == 5_000
    assert len(h._logs) <= h.total and len(h._order) <= 2 * h.total
