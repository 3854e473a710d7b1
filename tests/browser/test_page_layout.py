"""The live page in Chromium (Playwright) against web on the in-memory network, in this
process: the test writes records as web, logic and workers would, so it can set any
field (a 500-character ``last_error``, a node that fell silent, 5,000 containers: half
there when the page loads, half written at once while it is open).

Asserted: long text in any field never widens the page and is whole in the cell's
title; a node's capacity, running count and liveness, which goes silent with time
alone; and the page at 5,000 records (a screenshot, its width, its first page of rows
in id order, live over its range of ids, and that it still answers and updates within
seconds). The page at 50,000 records: tests/browser/test_page_scale.py.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from aiohttp import web as aioweb

from crdt_ops import Replica
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from services import model, web
from tests.chromium import assert_fits, launch_browser, open_page, png_size, row_ids
from tests.support import with_cell

if TYPE_CHECKING:
    from playwright.sync_api import Browser

T = TypeVar("T")


class Stage:
    """web's app on an in-memory bus, served from an event loop in a thread of its own,
    and replicas to write as any service (``write("logic", fn)``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.bus, self.cell_bus = MemoryBus(), MemoryBus()  # the platform's group, the cell's
        self.nodes: dict[tuple[str, bool], MemoryNode] = {}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.web = self.node("web")
        self.runner: aioweb.AppRunner = self.run(
            web.serve(with_cell(self.web, self.cell_bus), "127.0.0.1", port))
        self.url = f"http://127.0.0.1:{port}/"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def node(self, replica_id: str, cell: bool = False) -> MemoryNode:
        """The replica's node in the platform's group, or in the cell's (``cell``)."""
        if (replica_id, cell) not in self.nodes:
            n = MemoryNode(self.cell_bus if cell else self.bus, replica_id, policy=model.POLICY)
            self.run(n.start())
            self.nodes[replica_id, cell] = n
        return self.nodes[replica_id, cell]

    def write(self, replica_id: str, fn: Callable[[Replica], T], cell: bool = False) -> T:
        """Run ``fn`` on that replica's writes (in the platform's group, or the cell's), in
        the loop's thread; sent when it returns."""
        node = self.node(replica_id, cell)

        async def go() -> T:
            async with node.write() as r:
                out = fn(r)
            await asyncio.sleep(0.05)  # delivered to web
            return out
        return self.run(go())

    def create(self, name: str, owner: str = "op") -> str:
        """A container as web's POST would write it; its id."""
        return self.create_many([name], owner)[0]

    def create_many(self, names: list[str], owner: str = "op") -> list[str]:
        def go(r: Replica) -> list[str]:
            ids = []
            for name in names:
                cid = uuid.uuid4().hex[:12]
                rec = model.container(r, cid)
                rec.register("name").set(name)
                rec.register("owner").set(owner)
                rec.register("power_desired").set("off")
                ids.append(cid)
            return ids
        return self.write("web", go)

    def place(self, cids: list[str], node: str, reason: str | None = None) -> None:
        """Place ``cids`` on ``node`` in the default cell as logic does (the records name
        the home; the placements name the node), with ``reason`` shown if given."""
        def name_home(r: Replica) -> None:
            for cid in cids:
                model.name_home(r, cid, (model.DEFAULT_CELL, node))
                if reason is not None:
                    model.container(r, cid).register("rejected_reason").set(reason)
        self.write("logic", name_home)
        self.write("logic", lambda r: [model.placement(r, (model.DEFAULT_CELL, node), cid)
                                       .register("assigned_node").set(node) for cid in cids],
                   cell=True)

    def report(self, node: str, cids: list[str], field: str, value: object) -> None:
        """Node ``node``'s worker reports ``field`` = ``value`` for ``cids``."""
        self.write(f"worker.{node}", lambda r: [
            model.report(r, (model.DEFAULT_CELL, node), cid).register(field).set(value)
            for cid in cids], cell=True)

    def beat(self, node: str, *, capacity: int, running: int, age_s: float = 0.0,
             lease_s: float = 0.0) -> None:
        """Node ``node``'s record as its worker writes it, its heartbeat ``age_s`` old
        (with a lease of ``lease_s`` if not 0)."""
        def go(r: Replica) -> None:
            rec = model.node(r, model.DEFAULT_CELL, node)
            rec.register("heartbeat").set(int((time.time() - age_s) * 1000))
            rec.register("capacity").set(capacity)
            rec.register("running").set(running)
            if lease_s:
                rec.register("epoch").set(uuid.uuid4().hex[:12])
                rec.register("lease_ms").set(int(lease_s * 1000))
        self.write(f"worker.{node}", go, cell=True)

    def close(self) -> None:
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def stage() -> Iterator[Stage]:
    s = Stage()
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_browser() as b:
        yield b


LONG_NAME = "".join(chr(ord("a") + i % 26) for i in range(200))  # valid: 200 characters
LONG_OWNER = "o" * 200
LONG_REASON = "rejected:" + "R" * 300
LONG_ERROR = "cannot-run:" + "E" * 500
LONG_NODE = "n" * 150


@pytest.mark.parametrize("width", [1280, 800])
def test_long_text_in_any_field_never_widens_the_page(stage: Stage, browser: Browser,
                                                      width: int) -> None:
    cid = stage.create(LONG_NAME, LONG_OWNER)
    stage.beat(LONG_NODE, capacity=3, running=1)

    stage.place([cid], LONG_NODE, reason=LONG_REASON)
    stage.report(LONG_NODE, [cid], "last_error", LONG_ERROR)
    page = open_page(browser, stage.url, width=width)
    row = page.locator(f"#rows tr[data-id='{cid}']")
    row.locator(".error").wait_for()
    page.wait_for_function("() => document.querySelector('#rows .error').title.length > 500")
    assert_fits(page)
    # the full text is on hover, in the title of a cell that cuts it
    assert row.locator(".name").get_attribute("title") == LONG_NAME
    assert row.locator(".owner").get_attribute("title") == LONG_OWNER
    assert row.locator(".node").get_attribute("title") == LONG_NODE
    errors = row.locator(".error").get_attribute("title") or ""
    assert LONG_REASON in errors and LONG_ERROR in errors
    name_box = row.locator(".name").bounding_box()
    assert name_box is not None and name_box["width"] < width / 2
    assert page.locator(f"#node-rows tr[data-node='{LONG_NODE}'] .node-name"
                        ).get_attribute("title") == LONG_NODE
    # every button of the row is on screen
    for action in ("start", "stop", "restart", "delete", "history"):
        box = row.locator(f"button.{action}").bounding_box()
        assert box is not None and box["x"] + box["width"] <= width, (action, box)
    # the history of the long record does not widen the page either
    row.locator("button.history").click()
    page.locator("#history-entries li.entry").first.wait_for()
    assert_fits(page)
    drawer = page.locator("#history").bounding_box()
    assert drawer is not None and drawer["x"] + drawer["width"] <= width


def test_nodes_show_capacity_running_and_liveness(stage: Stage, browser: Browser) -> None:
    stage.beat("fresh", capacity=7, running=3)
    stage.beat("gone", capacity=4, running=0, age_s=60, lease_s=30)
    page = open_page(browser, stage.url)
    page.locator("#node-rows tr[data-node='gone']").wait_for()
    stage.beat("fading", capacity=2, running=2, age_s=3.0)  # the timeout is 5 s
    page.locator("#node-rows tr[data-node='fading']").wait_for()

    def cells(name: str) -> list[str]:
        return page.locator(f"#node-rows tr[data-node='{name}'] td").all_inner_texts()
    assert [r.get_attribute("data-node") for r in page.locator("#node-rows tr").all()] == [
        "fading", "fresh", "gone"]
    assert cells("fresh") == ["fresh", "7", "3", "live"]
    assert cells("gone")[:3] == ["gone", "4", "0"]
    assert re.fullmatch(r"silent for 6\d s, past its 30 s lease", cells("gone")[3])
    assert cells("fading")[3] == "live"
    # with time alone (no new event), the silent node is shown silent
    page.wait_for_function("() => document.querySelector(\"tr[data-node='fading'] .liveness\")"
                           ".textContent.startsWith('silent')", timeout=5_000)
    # a beat brings it back, live, with its new counts
    stage.beat("fading", capacity=2, running=1)
    page.wait_for_function("() => document.querySelector(\"tr[data-node='fading'] .liveness\")"
                           ".textContent === 'live'", timeout=5_000)
    assert cells("fading") == ["fading", "2", "1", "live"]
    assert page.locator("#node-rows .live").count() == 2


def test_the_page_at_5000_records(stage: Stage, browser: Browser, tmp_path: Path) -> None:
    started = time.monotonic()
    names = [f"container-{i:04d}" for i in range(4999)] + [LONG_NAME]
    random.Random(7).shuffle(names)
    # half of them there when the page loads, half written at once while it is open
    ids = dict(zip(names[:2500], stage.create_many(names[:2500]), strict=True))
    stage.beat("worker-1", capacity=10, running=0)
    seeded = time.monotonic()
    page = open_page(browser, stage.url)
    # one page: the first 100 records in id order (issue 13: not every record)
    page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 100",
                           timeout=30_000)
    first = sorted(ids.values())[:100]
    assert row_ids(page) == first
    ids.update(zip(names[2500:], stage.create_many(names[2500:]), strict=True))
    # the page stays live over its range of ids: records created in it appear in place
    expected = sorted(i for i in ids.values() if i <= first[-1])
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n",
                           arg=len(expected), timeout=30_000)
    loaded = time.monotonic()
    page.wait_for_function("() => document.getElementById('count').textContent === "
                           "'5000 containers'", timeout=10_000)
    assert_fits(page)
    shot = page.screenshot(path=str(tmp_path / "5000-records.png"))
    assert png_size(shot) == (1280, 800)
    assert len(shot) > 30_000  # rows of text, not a blank page
    order = row_ids(page)
    assert order == expected  # by id, not in creation order
    # still responsive: a change made elsewhere shows within seconds, in place
    cid = order[len(order) // 2]
    stage.write("web", lambda r: model.container(r, cid).register("power_desired").set("on"))
    row = page.locator(f"#rows tr[data-id='{cid}']")
    page.wait_for_function(f"() => document.querySelector(\"#rows tr[data-id='{cid}'] .desired\")"
                           ".textContent === 'on'", timeout=5_000)
    assert row.locator("button.start").is_disabled()
    # and a click on the page goes through at once
    row.locator("button.stop").scroll_into_view_if_needed()
    row.locator("button.stop").click(timeout=5_000)
    page.wait_for_function(f"() => document.querySelector(\"#rows tr[data-id='{cid}'] .desired\")"
                           ".textContent === 'off'", timeout=5_000)
    assert row_ids(page) == order
    assert_fits(page)
    page.screenshot(path=str(tmp_path / "5000-records-scrolled.png"))
    took = time.monotonic() - started
    print(f"5000 records: seeded in {seeded - started:.1f} s, page loaded in "
          f"{loaded - seeded:.1f} s, test {took:.1f} s")
    assert loaded - seeded < 30 and took < 60
