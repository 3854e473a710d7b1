"""Real-browser helper for tests: Playwright driving Debian's Chromium.

Not a test module. ``launch_browser()`` starts /usr/bin/chromium headless through
``playwright.sync_api`` and never uses a Playwright-downloaded browser (``playwright
install`` cannot run here). Both Chromium and the ``playwright`` package are installed
by ``scripts/install-browser``; if either is missing, ``BrowserUnavailable`` says so.

    with launch_browser() as browser:
        page = browser.new_page()
        page.goto(url)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "run scripts/install-browser (as root) to install it"

# Flags that work here: as root (hence --no-sandbox), without a GPU or display, and
# without Chromium phoning home (updates, sync, QUIC, first-run UI).
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Containers often have a tiny /dev/shm (Docker: 64 MB); use /tmp instead.
    "--disable-dev-shm-usage",
)


class BrowserUnavailable(RuntimeError):
    """Chromium or the playwright package is missing: run scripts/install-browser."""


def _check_installed() -> None:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        raise BrowserUnavailable(f"{CHROMIUM} not found: {INSTALL_HINT}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        raise BrowserUnavailable(
            f"the playwright Python package is not importable ({e}): {INSTALL_HINT}"
        ) from e


@contextmanager
def launch_browser(*, headless: bool = True, **launch_kwargs: Any) -> Iterator[Browser]:
    """Start headless Chromium (/usr/bin/chromium) via Playwright; close it on exit.

    Extra keyword arguments go to ``BrowserType.launch`` (e.g. ``slow_mo=...``);
    ``args`` there are appended to ``CHROMIUM_ARGS``. Each launch gets a fresh
    temporary user-data dir (Playwright makes and removes one for ``launch``); a fresh
    ``TMPDIR`` under a temporary directory keeps Chromium's other scratch files
    (``--disable-dev-shm-usage`` puts shared memory there) out of the way too.
    """
    _check_installed()
    from playwright.sync_api import sync_playwright

    extra_args = list(launch_kwargs.pop("args", ()))
    args = [*CHROMIUM_ARGS, *extra_args]
    if not headless:
        args.remove("--headless")
    scratch = tempfile.mkdtemp(prefix="crdt-ops-chromium-")
    env: dict[str, str | float | bool] = {**os.environ, "TMPDIR": scratch}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=headless,
                args=args,
                env=env,
                **launch_kwargs,
            )
            try:
                yield browser
            finally:
                browser.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------- the page's tests

#: how wide the document is, and the window: the page must never be wider
WIDTHS_JS = "() => [document.documentElement.scrollWidth, window.innerWidth]"
#: the container rows' ids in page order
ROW_IDS_JS = "() => [...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.id)"


def open_page(browser: Browser, url: str, width: int = 1280, height: int = 800) -> Page:
    """A new tab of ``width`` x ``height`` CSS pixels on the page at ``url``, once its
    event stream is connected (its status says "live"; 20 s at most)."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.wait_for_selector("#status:text('live')", timeout=20_000)
    return page


def assert_fits(page: Page) -> None:
    """The page is no wider than its window (nothing pushes a column off screen)."""
    scroll_width, window_width = page.evaluate(WIDTHS_JS)
    assert scroll_width <= window_width, (scroll_width, window_width)


def row_ids(page: Page) -> list[str]:
    """The ids of the container rows, top to bottom."""
    return list(page.evaluate(ROW_IDS_JS))


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG image (from its IHDR chunk); ValueError if not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
