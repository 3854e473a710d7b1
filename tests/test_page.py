"""The live page in a real browser (Debian's Chromium driven by Playwright): create a
container, click Start, see it turn on, without reloading."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import launch_browser


@pytest.fixture
def demo_url(amqp_url: str, tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "demo.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "crdt_ops.cli", "demo", "--port", str(port),
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


def test_create_and_start_from_the_page(demo_url: str, tmp_path: Path) -> None:
    with launch_browser() as browser:
        page = browser.new_page()
        page.goto(demo_url)
        page.evaluate("window.__notReloaded = true")
        page.wait_for_selector("#status:text('live')", timeout=20_000)
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
