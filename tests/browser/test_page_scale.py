"""The page at 50,000 records, in Chromium (Playwright), against web on the in-memory
network in this process (tests/browser/test_page_layout.py's ``Stage``): the records
are written straight into the group as web, logic and a worker would (one write each,
seconds), not through the API (minutes).

Asserted: the first screen (a page of 100 rows) appears within a bound; the page never
asks for more than a page of records at once and the DOM holds one page of rows, not
50,000; Next and Previous reach later records and come back, in id order; the filters
(owner, desired, actual, node) list exactly the matching records and stay live (a
record that starts matching appears, one that stops goes); a click still goes through
at once.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from crdt_ops import Replica
from services import model
from tests.browser.test_page_layout import Stage
from tests.chromium import assert_fits, launch_browser, row_ids

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

N = 50_000
PAGE = 100
ROWS_JS = "() => document.querySelectorAll('#rows tr').length"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_browser() as b:
        yield b


@pytest.fixture(scope="module")
def big() -> Iterator[tuple[Stage, dict[str, dict[str, Any]]]]:
    """A stage with N records (by id: name, owner, desired, node, actual); 7 of owner
    ``rare``, a tenth wanting to run, 300 placed on worker-1 and 200 of those on."""
    stage = Stage()
    rng = random.Random(11)
    records: dict[str, dict[str, Any]] = {}
    for i in range(N):
        cid = f"{rng.getrandbits(48):012x}"
        records[cid] = {"name": f"container-{i:05d}", "owner": f"owner-{i % 40}",
                        "desired": "on" if i % 10 == 0 else "off", "node": None,
                        "actual": "off"}
    cids = sorted(records)
    for cid in rng.sample(cids, 7):
        records[cid]["owner"] = "rare"
    placed = [c for c in cids if records[c]["desired"] == "on"][:300]
    for cid in placed:
        records[cid]["node"] = "worker-1"
    for cid in placed[:200]:
        records[cid]["actual"] = "on"
    started = time.monotonic()

    def create(r: Replica) -> None:
        for cid, rec in records.items():
            m = model.container(r, cid)
            m.register("name").set(rec["name"])
            m.register("owner").set(rec["owner"])
            m.register("power_desired").set(rec["desired"])
    stage.write("web", create)
    stage.place(placed, "worker-1")
    stage.report("worker-1", placed[:200], "power_actual", "on")
    stage.beat("worker-1", capacity=500, running=200)
    print(f"{N} records seeded in {time.monotonic() - started:.1f} s")
    yield stage, records
    stage.close()


def wait_rows(page: Page, n: int, timeout: int = 20_000) -> None:
    page.wait_for_function(f"() => ({ROWS_JS})() === {n}", timeout=timeout)


def listed(page: Page) -> list[str]:
    """The ids of the rows, once the page is loaded (not 'loading…')."""
    page.wait_for_function("() => !document.getElementById('page-info').textContent"
                           ".startsWith('loading')", timeout=20_000)
    page.wait_for_timeout(100)  # the flush after the load
    return row_ids(page)


def test_the_page_at_50000_records(big: tuple[Stage, dict[str, dict[str, Any]]],
                                   browser: Browser, tmp_path: Path) -> None:
    stage, records = big
    cids = sorted(records)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/api/containers?" in r.url else None)
    started = time.monotonic()
    page.goto(stage.url)
    wait_rows(page, PAGE, timeout=30_000)
    first_screen = time.monotonic() - started
    print(f"first screen at {N} records: {first_screen:.2f} s")
    assert first_screen < 10
    page.wait_for_selector("#status:text('live')")
    assert row_ids(page) == cids[:PAGE]
    page.wait_for_function(f"() => document.getElementById('count').textContent === "
                           f"'{N} containers'", timeout=10_000)
    assert page.evaluate("() => document.getElementsByTagName('*').length") < 3_000
    assert_fits(page)
    page.screenshot(path=str(tmp_path / "50000-records.png"))

    # Next reaches later records, Previous comes back, First goes to the start
    for n in range(1, 6):
        page.click("#next")
        page.wait_for_function("id => document.querySelector('#rows tr')?.dataset.id === id",
                               arg=cids[n * PAGE], timeout=10_000)
        assert listed(page) == cids[n * PAGE:(n + 1) * PAGE]
    assert "page 6" in page.locator("#page-info").inner_text()
    page.click("#prev")
    page.wait_for_function("id => document.querySelector('#rows tr')?.dataset.id === id",
                           arg=cids[4 * PAGE], timeout=10_000)
    assert listed(page) == cids[4 * PAGE:5 * PAGE]
    # a change on the page shows in place, and a click goes through at once
    cid = cids[4 * PAGE + 50]
    stage.write("web", lambda r: model.container(r, cid).register("power_desired").set(
        "on" if records[cid]["desired"] == "off" else "off"))
    want = "on" if records[cid]["desired"] == "off" else "off"
    page.wait_for_function("([c, w]) => document.querySelector(`#rows tr[data-id='${c}']"
                           " .desired`)?.textContent === w", arg=[cid, want], timeout=5_000)
    button = page.locator(f"#rows tr[data-id='{cid}'] button.{'stop' if want == 'on' else 'start'}")
    clicked = time.monotonic()
    button.click(timeout=5_000)
    page.wait_for_function("([c, w]) => document.querySelector(`#rows tr[data-id='${c}']"
                           " .desired`)?.textContent === w",
                           arg=[cid, "off" if want == "on" else "on"], timeout=5_000)
    print(f"a click answered in {time.monotonic() - clicked:.2f} s")
    records[cid]["desired"] = "off" if want == "on" else "on"
    page.click("#first")
    page.wait_for_function("id => document.querySelector('#rows tr')?.dataset.id === id",
                           arg=cids[0], timeout=10_000)

    def matching(**want: Any) -> list[str]:
        return [c for c in cids if all(records[c][k] == v for k, v in want.items())]

    def apply_filters(owner: str = "", desired: str = "", actual: str = "",
                      node: str = "") -> list[str]:
        page.fill("#f-owner", owner)
        page.fill("#f-node", node)
        page.select_option("#f-desired", desired)
        page.select_option("#f-actual", actual)
        page.click("#filters button[type=submit]")
        return listed(page)

    # the filters list exactly the matching records
    assert apply_filters(owner="rare") == matching(owner="rare")
    assert len(matching(owner="rare")) == 7
    assert apply_filters(node="worker-1") == matching(node="worker-1")[:PAGE]
    assert apply_filters(node="worker-1", actual="on", desired="on") == matching(
        node="worker-1", actual="on", desired="on")[:PAGE]
    assert apply_filters(actual="on", owner="owner-0") == matching(actual="on", owner="owner-0")
    on = matching(desired="on")
    assert apply_filters(desired="on") == on[:PAGE]
    page.click("#next")
    page.wait_for_function("id => document.querySelector('#rows tr')?.dataset.id === id",
                           arg=on[PAGE], timeout=10_000)
    assert listed(page) == on[PAGE:2 * PAGE]
    # live under a filter: a record that starts matching appears, one that stops goes
    shown = apply_filters(owner="rare")
    joining = next(c for c in cids if records[c]["owner"] != "rare" and c > shown[0])
    stage.write("web", lambda r: model.container(r, joining).register("owner").set("rare"))
    page.locator(f"#rows tr[data-id='{joining}']").wait_for(timeout=5_000)
    stage.write("web", lambda r: model.container(r, shown[0]).register("owner").set("common"))
    page.locator(f"#rows tr[data-id='{shown[0]}']").wait_for(state="detached", timeout=5_000)
    assert row_ids(page) == sorted([*shown[1:], joining])
    # a filter that matches nothing, then none again: every record, from the start
    assert apply_filters(owner="nobody") == []
    page.click("#f-clear")
    wait_rows(page, PAGE)
    assert listed(page) == cids[:PAGE]

    # never more than a page of records asked for at once, and one page of rows in the DOM
    limits = [int(u.split("limit=")[1].split("&")[0]) for u in fetched if "limit=" in u]
    assert all("limit=" in u for u in fetched) and max(limits) <= PAGE, fetched
    assert page.evaluate(ROWS_JS) <= 2 * PAGE
    assert_fits(page)
    page.screenshot(path=str(tmp_path / "50000-records-filtered.png"))
    page.close()


def test_create_shows_the_record_when_it_is_on_the_page(
        big: tuple[Stage, dict[str, dict[str, Any]]], browser: Browser) -> None:
    stage, _ = big
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(stage.url)
    wait_rows(page, PAGE, timeout=30_000)
    name = f"new-{uuid.uuid4().hex[:6]}"
    page.fill("#name", name)
    page.fill("#owner", "fresh-owner")
    page.click("#create button[type=submit]")
    # on the first page only if its random id sorts there: the page says where it is
    page.wait_for_function("() => document.getElementById('message').textContent"
                           ".includes('created') || [...document.querySelectorAll('#rows tr')]"
                           ".some(tr => tr.textContent.includes(arguments[0]))".replace(
                               "arguments[0]", repr(name)), timeout=5_000)
    page.fill("#f-owner", "fresh-owner")
    page.click("#filters button[type=submit]")
    page.locator("#rows tr", has_text=name).wait_for(timeout=10_000)
    assert page.evaluate(ROWS_JS) == 1
    page.close()
