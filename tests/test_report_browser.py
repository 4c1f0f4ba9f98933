"""The report renders in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright, without
`playwright install`. Skipped, with the reason, where either is absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tunewise.report.build import build_report

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def open_report(html_path: Path, screenshot: Path, width: int = 1280) -> dict:
    """Load the page from a file:// URL and measure what a reader sees; fails on any network request."""
    if shutil.which("chromium") is None:
        pytest.skip("no `chromium` on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(html_path.resolve().as_uri())
            page.wait_for_load_state("load")
            seen = {
                sid: page.locator(f"#{sid}").is_visible()
                for sid in ("verdict", "task", "data", "training", "arms", "plots", "examples")
            }
            rows = page.locator("#arms-table tbody tr")
            plots = []
            for img in page.locator("figure img").all():
                box = img.bounding_box()
                natural = img.evaluate("el => [el.complete, el.naturalWidth, el.naturalHeight]")
                plots.append({"box": box, "complete": natural[0], "natural": natural[1:]})
            result = {
                "visible": seen,
                "rows": rows.count(),
                "rows_visible": all(rows.nth(i).is_visible() for i in range(rows.count())),
                "headline": page.locator("#headline").inner_text(),
                "plots": plots,
                "dialogs": dialogs,
                "page_width": page.evaluate("document.documentElement.scrollWidth"),
                "requests": requests,
            }
            page.screenshot(path=str(screenshot), full_page=True)
            return result
        finally:
            browser.close()


def test_report_renders_in_chromium(tmp_path):
    from test_report import SCRIPT, full_state

    html_path, _ = build_report(full_state(), tmp_path / "report")
    shot = tmp_path / "report.png"
    seen = open_report(html_path, shot)
    assert all(seen["visible"].values()), seen["visible"]
    assert seen["rows"] == 3 and seen["rows_visible"]
    assert "+29.7 points" in seen["headline"]
    rendered = [
        p
        for p in seen["plots"]
        if p["complete"]
        and p["natural"][0] > 0
        and p["box"]
        and p["box"]["width"] > 100
        and p["box"]["height"] > 100
    ]
    assert len(rendered) == 3, seen["plots"]
    assert seen["dialogs"] == []  # the injected alert() in a model output never ran
    assert seen["page_width"] <= 1280  # nothing forces a horizontal scroll at a laptop width
    # Only the page itself was loaded: the plots are data: URIs, no font, style or script was fetched.
    assert [u for u in seen["requests"] if not u.startswith(("file:", "data:"))] == []
    assert shot.stat().st_size > 10_000
    assert SCRIPT not in html_path.read_text(encoding="utf-8")


def test_partial_report_renders_in_chromium(tmp_path):
    from test_report import full_state

    state = {"project": "early", "task": full_state()["task"], "data": full_state()["data"]}
    html_path, _ = build_report(state, tmp_path / "report")
    seen = open_report(html_path, tmp_path / "partial.png")
    assert all(seen["visible"].values())
    assert seen["rows"] == 0 and seen["plots"] == []
    assert seen["headline"] == "No verdict yet: evaluation has not run."


def test_examples_filters_and_sort_change_the_visible_rows(tmp_path):
    """The examples table's arm and answer filters, its field filter, the disagreements-only switch and a column
    sort, driven by a real browser on the json contract of test_report.ticket_state."""
    if shutil.which("chromium") is None:
        pytest.skip("no `chromium` on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from test_report import ticket_state

    html_path, _ = build_report(ticket_state(), tmp_path / "report")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html_path.resolve().as_uri())
            page.wait_for_load_state("load")

            def visible() -> list[str]:
                return page.locator("#examples-table tbody tr:not([hidden]) td.exid").all_inner_texts()

            assert visible() == ["t-0", "t-1", "t-2", "t-3"]
            assert page.locator("#f-count").inner_text() == "4 of 4 shown"
            # The fine-tuned arm's own mistakes: t-1 (priority, an added field) and t-3 (category).
            page.select_option("#f-arm", label="fine-tuned")
            page.select_option("#f-outcome", "wrong")
            assert visible() == ["t-1", "t-3"]
            assert page.locator("#f-count").inner_text() == "2 of 4 shown"
            page.select_option("#f-field", "category")
            assert visible() == ["t-3"]
            page.select_option("#f-field", "")
            page.select_option("#f-outcome", "right")
            assert visible() == ["t-0", "t-2"]
            page.select_option("#f-arm", label="few-shot")
            assert visible() == ["t-3"]
            # Every arm right: none of the four; some arm wrong, the arms split: t-0, t-2 and t-3.
            page.select_option("#f-arm", "")
            assert visible() == [] and page.locator("#f-empty").is_visible()
            page.select_option("#f-outcome", "wrong")
            page.check("#f-disagree")
            assert visible() == ["t-0", "t-2", "t-3"]
            page.uncheck("#f-disagree")
            page.select_option("#f-outcome", "")
            # Sorting by the fine-tuned column: wrong answers first, the one furthest from the reference first
            # among them (t-3 added words to the reply; t-1's reply is the reference's), then the right ones;
            # clicking again reverses it.
            header = page.locator("#examples-table th.arm", has_text="fine-tuned")
            header.click()
            assert (
                visible() == ["t-3", "t-1", "t-0", "t-2"] and header.get_attribute("aria-sort") == "ascending"
            )
            header.click()
            assert (
                visible() == ["t-2", "t-0", "t-1", "t-3"]
                and header.get_attribute("aria-sort") == "descending"
            )
            page.locator("#examples-table th", has_text="Example").click()
            assert visible() == ["t-0", "t-1", "t-2", "t-3"]
            page.locator("#examples").screenshot(path=str(tmp_path / "examples.png"))
        finally:
            browser.close()
    assert errors == []
    assert (tmp_path / "examples.png").stat().st_size > 10_000
