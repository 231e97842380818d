"""A real browser for tests: Debian's `chromium` driven by Playwright, never a browser Playwright downloads.

`page` is a fresh page in a fresh profile; `screenshot(page, tmp_path, name)` saves a PNG into the test's folder and
returns its path; `shot_on_failure(page, tmp_path, name)` wraps a block so that a failing assertion carries the
screenshot's path in its message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
"""The network here is closed: without these chromium stalls on its own background requests."""


def chromium_path() -> str:
    """Debian's chromium binary (RUNBOOK_CHROMIUM, else `chromium` on PATH); the test fails when it is missing."""
    found = os.environ.get("RUNBOOK_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("Debian's chromium is not installed; run `make test`, which installs it "
                    "(apt-get install -y chromium)")
    return found


@pytest.fixture()
def page(tmp_path: Path):
    """A fresh chromium page (new profile in the test's folder), closed after the test."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), headless=True,
                                                       executable_path=chromium_path(), args=CHROMIUM_ARGS,
                                                       viewport={"width": 1400, "height": 1000})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """Save what the page shows (the whole page) as <tmp_path>/<name>.png; returns the path."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextlib.contextmanager
def shot_on_failure(page, tmp_path: Path, name: str) -> Iterator[None]:
    """Run a block of checks; on a failure, take a screenshot and add its path to the failure message."""
    try:
        yield
    except Exception as e:
        path = screenshot(page, tmp_path, f"{name}-failed")
        raise AssertionError(f"{e}\nscreenshot: {path}") from e
