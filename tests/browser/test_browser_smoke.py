"""Smoke test for the real-browser setup (tests/chromium.py): Debian's Chromium, driven by
Playwright, loads a page from a local http.server, runs its JS on a click, and takes a
screenshot. Needs scripts/install-browser to have run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.chromium import BrowserUnavailable, launch_browser

if TYPE_CHECKING:
    from playwright.sync_api import Browser

PAGE = b"""<!doctype html>
<html>
<head><meta charset="utf-8"><title>crdt-ops browser smoke</title></head>
<body>
  <p id="status">not clicked</p>
  <button id="go" type="button">Click me</button>
  <script>
    let clicks = 0;
    document.getElementById("go").addEventListener("click", () => {
      clicks += 1;
      document.getElementById("status").textContent = "clicked " + clicks;
    });
  </script>
</body>
</html>
"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    page_loads = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404)
            return
        self.server.page_loads += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)  # port 0: the OS picks a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def browser() -> Iterator[Browser]:
    try:
        with launch_browser() as b:
            yield b
            return
    except BrowserUnavailable as e:
        missing = str(e)
    pytest.fail(missing, pytrace=False)  # outside the except: no chained traceback


def test_click_changes_text_without_reload(
    page_server: _Server, browser: Browser, tmp_path: Path
) -> None:
    host, port = page_server.server_address[:2]
    url = f"http://{host}:{port}/"
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(url)
    status = page.locator("#status")
    assert status.text_content() == "not clicked"
    # A reload would drop this marker and fetch the page from the server again.
    page.evaluate("window.__noReload = 'kept'")

    page.click("#go")
    page.wait_for_function("document.getElementById('status').textContent === 'clicked 1'")
    page.click("#go")
    page.wait_for_function("document.getElementById('status').textContent === 'clicked 2'")
    assert status.text_content() == "clicked 2"
    assert page.evaluate("window.__noReload") == "kept"
    assert page.url == url
    assert page_server.page_loads == 1

    shot = tmp_path / "smoke.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert len(data) > 100
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
