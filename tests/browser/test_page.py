"""The live page in a real browser (Debian's Chromium driven by Playwright), against the
real services over RabbitMQ (``crdt-ops demo``: web, logic and two workers): create a
container, click Start, see it turn on, without reloading; buttons that would do nothing
are disabled; deleting asks first; rows keep their order (by id); the nodes panel and a
container's history with the service that made each change.

One demo serves the whole module; each test makes containers of its own.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.chromium import launch_browser, open_page, row_ids
from tests.conftest import show_log_if_failed

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Dialog, Page


@pytest.fixture(scope="module")
def demo_url(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    global DEMO_LOG
    DEMO_LOG = tmp_path_factory.mktemp("demo") / "demo.log"
    log = open(DEMO_LOG, "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "demo", "--port", str(port),
                             "--amqp-url", amqp_url], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        log.close()


DEMO_LOG: Path | None = None  # the demo's output


@pytest.fixture(autouse=True)
def _demo_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if DEMO_LOG is not None:  # the demo's, and its services' (in the directory it names)
        said = re.search(r"logs in (\S+);", DEMO_LOG.read_text())
        show_log_if_failed(request, DEMO_LOG, *([Path(said[1])] if said else []))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_browser() as b:
        yield b


def api(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """Status and JSON body of a request to web's API."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def every_record(demo_url: str) -> list[dict[str, Any]]:
    """Every container record, page by page (``GET /api/containers`` and its ``Link``)."""
    out: list[dict[str, Any]] = []
    url: str | None = demo_url + "api/containers?limit=1000"
    while url is not None:
        with urllib.request.urlopen(url, timeout=10) as r:
            out += json.loads(r.read())
            link = r.headers.get("Link")
        url = None if link is None else urllib.parse.urljoin(
            demo_url, link.split(">")[0].lstrip("<"))
    return out


def create(demo_url: str, name: str, owner: str) -> str:
    status, body = api(demo_url + "api/containers", "POST", {"name": name, "owner": owner})
    assert status == 201, body
    return str(body["id"])


def wait_for_cell(page: Page, cid: str, cell: str, text: str, timeout: int = 30_000) -> None:
    """Wait until the ``cell`` of container ``cid``'s row reads ``text``."""
    page.wait_for_function(
        "([cid, cell, text]) => document.querySelector(`#rows tr[data-id='${cid}'] .${cell}`)"
        "?.textContent === text", arg=[cid, cell, text], timeout=timeout)


def until(check: Any, timeout: float = 30.0) -> Any:
    """Poll ``check()`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"not true within {timeout} s"
            return value
        time.sleep(0.2)


def enabled(page: Page, cid: str) -> dict[str, bool]:
    """Which of the row's buttons are enabled."""
    row = page.locator(f"#rows tr[data-id='{cid}']")
    return {a: row.locator(f"button.{a}").is_enabled()
            for a in ("start", "stop", "restart", "delete", "history")}


def test_create_and_start_from_the_page(demo_url: str, browser: Browser, tmp_path: Path) -> None:
    page = open_page(browser, demo_url)
    page.evaluate("window.__notReloaded = true")
    page.fill("#name", "from-the-browser")
    page.fill("#owner", "carol")
    page.click("#create button[type=submit]")
    row = page.locator("tr", has_text="from-the-browser")
    row.wait_for(timeout=10_000)
    assert row.locator(".actual").inner_text() == "off"
    row.locator("button.start").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('tr')].some(tr =>"
        " tr.textContent.includes('from-the-browser') &&"
        " tr.querySelector('.actual').textContent === 'on')", timeout=30_000)
    assert row.locator(".node").inner_text().startswith("worker-")
    assert row.locator(".pid").inner_text().isdigit()
    assert page.evaluate("window.__notReloaded") is True
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 1000


def test_an_answer_later_than_the_stream_does_not_paint_over_it(
        demo_url: str, browser: Browser) -> None:
    """The answer to a Start can reach the page after the stream brought a later state of
    the record (the worker's "on"). The page keeps the later one. It used to paint the
    answer (actual "off") over it and show "off" for good: the intermittent failure of
    the Start tests here on a loaded machine."""
    from playwright.sync_api import Route

    page = open_page(browser, demo_url)
    cid = create(demo_url, f"late-{uuid.uuid4().hex[:6]}", "erin")
    wait_for_cell(page, cid, "actual", "off")
    answered: list[int] = []

    def late(route: Route) -> None:
        answer = route.fetch()  # web takes the Start and answers: desired on, actual off
        assert json.loads(answer.body())["power_actual"] == "off"
        until(lambda: api(f"{demo_url}api/containers/{cid}")[1]["power_actual"] == "on")
        time.sleep(1.0)  # the stream brings "on" to the page meanwhile
        route.fulfill(response=answer)
        answered.append(answer.status)

    page.route(f"**/api/containers/{cid}/start", late)
    page.locator(f"#rows tr[data-id='{cid}'] button.start").click()
    wait_for_cell(page, cid, "actual", "on")
    deadline = time.monotonic() + 30
    while not answered and time.monotonic() < deadline:
        page.wait_for_timeout(100)  # a Playwright call: the route's handler runs meanwhile
    page.wait_for_timeout(500)  # the answer's paint, if any, is done by then
    assert answered == [202]
    assert page.locator(f"#rows tr[data-id='{cid}'] .actual").inner_text() == "on"
    assert enabled(page, cid)["stop"], "the row is not left busy"


def test_buttons_that_would_do_nothing_are_disabled_and_delete_asks(
        demo_url: str, browser: Browser) -> None:
    page = open_page(browser, demo_url)
    cid = create(demo_url, f"buttons-{uuid.uuid4().hex[:6]}", "dave")
    wait_for_cell(page, cid, "desired", "off")
    assert enabled(page, cid) == {"start": True, "stop": False, "restart": False,
                                  "delete": True, "history": True}
    row = page.locator(f"#rows tr[data-id='{cid}']")
    row.locator("button.start").click()
    wait_for_cell(page, cid, "desired", "on")
    assert enabled(page, cid) == {"start": False, "stop": True, "restart": True,
                                  "delete": True, "history": True}
    wait_for_cell(page, cid, "actual", "on")
    row.locator("button.stop").click()
    wait_for_cell(page, cid, "desired", "off")
    assert enabled(page, cid) == {"start": True, "stop": False, "restart": False,
                                  "delete": True, "history": True}

    asked: list[str] = []

    def answer(accept: bool) -> Any:
        def handle(dialog: Dialog) -> None:
            asked.append(f"{dialog.type}: {dialog.message}")
            dialog.accept() if accept else dialog.dismiss()
        return handle

    page.once("dialog", answer(accept=False))
    row.locator("button.delete").click()
    assert len(asked) == 1 and asked[0].startswith("confirm: ") and cid in asked[0]
    page.wait_for_timeout(500)  # a delete, had it been sent, would be answered by now
    assert api(demo_url + f"api/containers/{cid}")[0] == 200
    assert row.count() == 1
    page.once("dialog", answer(accept=True))
    row.locator("button.delete").click()
    row.wait_for(state="detached", timeout=10_000)
    assert len(asked) == 2
    assert api(demo_url + f"api/containers/{cid}")[0] == 404


def test_rows_keep_their_order_as_records_change(demo_url: str, browser: Browser) -> None:
    page = open_page(browser, demo_url)
    tag = uuid.uuid4().hex[:6]
    ids = {letter: create(demo_url, f"order-{tag}-{letter}", "erin") for letter in "cadb"}
    for cid in ids.values():
        page.locator(f"#rows tr[data-id='{cid}']").wait_for(timeout=10_000)
    before = row_ids(page)
    ours = [i for i in before if i in ids.values()]
    assert ours == sorted(ids.values())  # by id (the API's order), not by creation
    for letter in "ad":
        assert api(demo_url + f"api/containers/{ids[letter]}/start", "POST")[0] == 202
    for letter in "ad":  # each went through several updates: desired, node, actual, pid
        wait_for_cell(page, ids[letter], "actual", "on")
        assert row_ids(page) == before
    assert api(demo_url + f"api/containers/{ids['a']}/stop", "POST")[0] == 202
    wait_for_cell(page, ids["a"], "actual", "off")
    assert row_ids(page) == before
    page.reload()
    page.wait_for_selector("#status:text('live')", timeout=20_000)
    page.locator(f"#rows tr[data-id='{ids['d']}']").wait_for()
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n",
                           arg=len(before))
    assert row_ids(page) == before


def test_nodes_panel_shows_capacity_running_and_liveness(demo_url: str,
                                                         browser: Browser) -> None:
    page = open_page(browser, demo_url)
    for n in ("worker-1", "worker-2"):
        page.wait_for_function(
            "n => document.querySelector(`#node-rows tr[data-node='${n}'] .liveness`)"
            "?.textContent === 'live'", arg=n, timeout=20_000)
        assert page.locator(f"#node-rows tr[data-node='{n}'] .capacity").inner_text() == "10"
    cid = create(demo_url, f"nodes-{uuid.uuid4().hex[:6]}", "frank")
    assert api(demo_url + f"api/containers/{cid}/start", "POST")[0] == 202
    wait_for_cell(page, cid, "actual", "on")
    node = page.locator(f"#rows tr[data-id='{cid}'] .node").inner_text()

    def shown_equals_running() -> bool:
        records = every_record(demo_url)
        on = sum(1 for c in records if c["assigned_node"] == node and c["power_actual"] == "on")
        shown = page.locator(f"#node-rows tr[data-node='{node}'] .running").inner_text()
        return on >= 1 and shown == str(on)
    until(shown_equals_running)
    listed = {n["name"]: n for n in api(demo_url + "api/nodes")[1]}
    assert listed[node]["live"] is True and listed[node]["capacity"] == 10


def test_history_names_the_service_of_each_change(demo_url: str, browser: Browser) -> None:
    page = open_page(browser, demo_url)
    name = f"history-{uuid.uuid4().hex[:6]}"
    cid = create(demo_url, name, "grace")
    row = page.locator(f"#rows tr[data-id='{cid}']")
    row.locator("button.start").click()
    wait_for_cell(page, cid, "actual", "on")
    node = row.locator(".node").inner_text()
    row.locator("button.history").click()
    assert name in page.locator("#history-name").inner_text()

    def entries() -> list[dict[str, Any]]:
        return list(page.evaluate(
            "() => [...document.querySelectorAll('#history-entries li.entry')].map(li => ({"
            " by: li.querySelector('.by').textContent,"
            " changes: [...li.querySelectorAll('li.change')].map(c => c.textContent)}))"))

    def has(by: str, change: str) -> bool:
        """Whether an entry by ``by`` shows ``change`` (``...`` in it: anything there)."""
        start, _, end = change.partition("...")
        return any(e["by"] == by and any(c.startswith(start) and c.endswith(end)
                                         for c in e["changes"]) for e in entries())

    until(lambda: has(f"worker.{node}", f"workers/{node}/power_actual: ...→ on"))
    assert has("web", f"name = {name}") and has("web", "power_desired = off")
    assert has("web", "power_desired: off → on")
    assert has("logic", f"assigned_node: — → {node}")
    assert entries()[-1]["by"] == "web"  # newest first: the creation is last
    # the open history follows new changes, and the row's buttons stay usable beside it
    row.locator("button.stop").click()
    until(lambda: has("web", "power_desired: on → off"))
    until(lambda: has(f"worker.{node}", f"workers/{node}/power_actual: ...→ off"))
    status, history = api(demo_url + f"api/containers/{cid}/history")
    assert status == 200 and history["id"] == cid
    assert {e["service"] for e in history["entries"]} >= {"web", "logic", f"worker.{node}"}
    page.keyboard.press("Escape")
    assert page.locator("#history").is_hidden()
