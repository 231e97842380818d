"""(b) The index.html of a finished run in a real browser (Debian's chromium, driven by Playwright): the acceptance
table is the first table, every image loads, every section's page loads and shows its charts with the code folded."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def finished_run(plain_expansion) -> Path:
    """The run folder of the plain sandbox expanded 3+3 -> 4+4 by `runbook run` (tests/expanded.py)."""
    proc = plain_expansion.proc
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return plain_expansion.out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(finished_run):
    """The run folder over http://127.0.0.1 on a free port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(finished_run)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def page(tmp_path):
    """A fresh headless chromium (its own user-data-dir) and a page in it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (Debian's package; no browser is "
                    "downloaded)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=CHROMIUM_ARGS,
                                                       viewport={"width": 1100, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def _broken_images(page) -> list[str]:
    return page.evaluate("""() => Array.from(document.images)
        .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src').slice(0, 80))""")


def test_index_leads_with_the_acceptance_table_every_image_loads_every_section_link_works(page, served, tmp_path):
    response = page.goto(f"{served}/index.html", wait_until="load")
    shot = tmp_path / "index.png"
    page.screenshot(path=str(shot), full_page=True)
    seen = f"(screenshot: {shot})"
    assert response is not None and response.status == 200, seen

    first = page.locator("table").first
    assert "acceptance" in (first.get_attribute("class") or ""), f"the first table is not the acceptance table {seen}"
    criteria = first.locator("th[scope=row]").all_inner_texts()
    assert criteria == ["latency variation", "failed requests", "lost writes", "downtime per master",
                        "data checks"], f"{criteria} {seen}"
    verdicts = first.locator("tr td:last-child").all_inner_texts()
    assert verdicts and all(v in ("pass", "warn", "inconclusive") for v in verdicts), f"{verdicts} {seen}"
    assert page.locator("img").count() >= 4, f"expected the verdict's charts and the sections' charts {seen}"
    assert _broken_images(page) == [], f"broken images {seen}"
    first_img = page.locator("img").first.get_attribute("src")
    assert first_img == "charts/acceptance-latency.png", f"the first chart is {first_img} {seen}"

    links = page.locator("table.sections a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    pages = [h for h in links if h.endswith(".html")]
    assert len(pages) == 8 and len([h for h in links if h.endswith(".ipynb")]) == 8, f"{links} {seen}"
    for href in links:
        got = page.request.get(f"{served}/{href}")
        assert got.status == 200 and len(got.body()) > 1000, f"{href}: {got.status} {seen}"


def test_each_section_page_shows_its_charts_folds_its_code_and_has_no_raw_dump(page, served, tmp_path):
    page.goto(f"{served}/index.html")
    hrefs = page.locator("table.sections a").evaluate_all(
        "links => links.map(a => a.getAttribute('href')).filter(h => h.endsWith('.html'))")
    for href in hrefs:
        response = page.goto(f"{served}/{href}", wait_until="load")
        shot = tmp_path / f"{Path(href).stem}.png"
        page.screenshot(path=str(shot), full_page=True)
        seen = f"{href} (screenshot: {shot})"
        assert response is not None and response.status == 200, seen
        text = page.inner_text("body")
        assert "<Figure size" not in text, f"a chart shown as text {seen}"
        assert "'checks': [" not in text and "{'section':" not in text, f"a raw dict dump {seen}"
        assert _broken_images(page) == [], f"broken images {seen}"
        folded = page.locator("details.runbook-code")
        assert folded.count() > 0, f"no folded code cell {seen}"
        assert page.locator("details.runbook-code[open]").count() == 0, f"a code cell is unfolded {seen}"
        assert page.locator(".jp-CodeMirrorEditor:visible").count() == 0, f"code is visible {seen}"
        assert "recorded in results/" in text, f"no one-line verdict {seen}"
        if Path(href).stem in ("30_plan", "40_migrate", "60_validate"):
            assert page.locator("img").count() >= 1, f"no chart rendered {seen}"
