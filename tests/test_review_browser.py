"""The review page in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright against a real
review server on port 0. A scripted reviewer chooses by clicks and by keys, undoes, reloads and resumes; the
registry must hold each choice mapped back to the right arm although the sides were drawn at random. Skipped,
with the reason, where Chromium or Playwright is absent."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.review_fixtures import SECRET_ARMS, bitext_project, eval_project
from tests.test_report_browser import CHROMIUM_ARGS
from tunewise.review.store import ReviewStore


def _serve(project, review_id):
    from tunewise.review.app import make_server
    from tunewise.serve.app import bind

    sock = bind("127.0.0.1", 0)
    server = make_server(project, review_id, sock, no_auth=True)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the review server did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.fixture
def browser():
    if shutil.which("chromium") is None:
        pytest.skip("no `chromium` on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _shown(page) -> tuple[int, str]:
    """(item number in the answers, arm on the left: 'a' when the left answer is arm a's)."""
    left = page.locator("#left").inner_text()
    return int(left.rsplit("-", 1)[1]), "a" if left.startswith("ANSWER-A") else "b"


def test_a_reviewer_clicks_types_undoes_and_resumes(tmp_path, browser):
    project, run_id = eval_project(tmp_path / "project", n=6)
    review = ReviewStore(project).create(list(SECRET_ARMS), run_id)
    server, thread, url = _serve(project, review["id"])
    seen: list[str] = []  # every request URL and body, every response body
    expected: dict[int, str] = {}
    lefts: list[str] = []
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("request", lambda r: seen.append(r.url + " " + (r.post_data or "")))
        page.on("response", lambda r: seen.append(r.text() if "/api/" in r.url else ""))
        page.goto(url)
        page.fill("#name", "Ada")
        page.click("#join")
        page.wait_for_selector("#item-view:not(.hidden)")

        def choose(how: str, what: str) -> None:
            position, left = _shown(page)
            lefts.append(left)
            other = "b" if left == "a" else "a"
            expected[position] = {"left": left, "right": other}.get(what, what)
            before = page.locator("#count").inner_text()
            if how == "click":
                page.click(f"button[data-choice={what}]")
            else:
                page.keyboard.press({"left": "1", "right": "2", "tie": "3", "both_bad": "4"}[what])
            page.wait_for_function(f"document.getElementById('count').textContent !== {json.dumps(before)}")

        choose("click", "left")
        choose("key", "right")
        choose("key", "tie")
        assert page.locator("#count").inner_text() == "3 of 6 done"
        page.keyboard.press("u")  # undo: item 2 comes back with the same sides
        page.wait_for_function("document.getElementById('count').textContent === '2 of 6 done'")
        assert _shown(page)[0] == 2 and _shown(page)[1] == lefts[-1]
        expected.pop(2)
        page.keyboard.press("r")  # the reference, hidden by default
        assert page.locator("#reference-box").is_visible()
        assert page.locator("#reference").inner_text() == "Reference reply 2"
        choose("key", "left")
        page.reload()  # resume where the reviewer left off
        page.wait_for_selector("#item-view:not(.hidden)")
        assert page.locator("#count").inner_text() == "3 of 6 done"
        assert _shown(page)[0] == 3
        assert not page.locator("#reference-box").is_visible()
        page.fill("#comment", "both miss the order number")
        page.locator("#comment").blur()
        choose("key", "both_bad")
        choose("click", "right")
        page.screenshot(path=str(tmp_path / "review-desktop.png"), full_page=True)
        choose("key", "left")
        page.wait_for_selector("#done-view:not(.hidden)")

        # A second reviewer at once, on a phone: the same name is refused, another one gets its own sides.
        phone = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
        other = phone.new_page()
        other.on("request", lambda r: seen.append(r.url + " " + (r.post_data or "")))
        other.goto(url)
        other.fill("#name", "ada")
        other.click("#join")
        other.wait_for_function(
            "document.getElementById('message').textContent.includes('already takes part')"
        )
        other.fill("#name", "Grace")
        other.click("#join")
        other.wait_for_selector("#item-view:not(.hidden)")
        assert other.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
        position, left = _shown(other)
        other.tap("button[data-choice=left]")
        other.wait_for_function("document.getElementById('count').textContent === '1 of 6 done'")
        other.screenshot(path=str(tmp_path / "review-phone.png"), full_page=True)
        html = page.content() + other.content()
    finally:
        server.should_exit = True
        thread.join(10)

    choices = {c["position"]: c for c in ReviewStore(project).choices(review["id"]) if c["reviewer"] == "Ada"}
    assert {p: c["outcome"] for p, c in choices.items()} == expected
    assert len(expected) == 6
    assert choices[3]["comment"] == "both miss the order number"
    grace = [c for c in ReviewStore(project).choices(review["id"]) if c["reviewer"] == "Grace"]
    assert [(c["position"], c["outcome"]) for c in grace] == [(position, left)]
    # Blind: neither the page nor any request or response names an arm or the run.
    for secret in (*SECRET_ARMS, run_id):
        assert secret not in html
        assert not [s for s in seen if secret in s], secret
    assert all(s.startswith(url) or not s.startswith("http") for s in seen)  # nothing fetched from elsewhere
    for shot in ("review-desktop.png", "review-phone.png"):
        assert Path(tmp_path / shot).stat().st_size > 0


def test_a_scripted_reviewer_reviews_bitext_replies_by_keys(tmp_path, browser, shared_datasets):
    """Real held-out support replies: a scripted reviewer opens the reference, prefers the answer whose reply is
    closer to it (ROUGE-L), and chooses by keys only; the results name the arm that copied the reference."""
    from tunewise.evaluate.scorers import parse_json_lenient, text_similarity
    from tunewise.review.results import review_results

    project, run_id, answers = bitext_project(tmp_path / "project", shared_datasets, n=8)
    review = ReviewStore(project).create(list(SECRET_ARMS), run_id)
    server, thread, url = _serve(project, review["id"])

    def reply(text: str):
        ok, value = parse_json_lenient(text)
        return value.get("reply") if ok and isinstance(value, dict) else None

    sides = []
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.fill("#name", "Scripted")
        page.keyboard.press("Enter")
        for done in range(8):
            page.wait_for_function(f"document.getElementById('count').textContent === '{done} of 8 done'")
            page.keyboard.press("r")
            reference = reply(page.locator("#reference").inner_text())
            left, right = page.locator("#left").inner_text(), page.locator("#right").inner_text()
            # JSON answers are shown indented: compare them as JSON.
            sides.append(
                json.loads(answers[page.locator("#input").inner_text()][SECRET_ARMS[0]]) == json.loads(left)
            )
            if done == 0:
                page.screenshot(path=str(tmp_path / "review-bitext.png"), full_page=True)
            closer = text_similarity(reply(left), reference) >= text_similarity(reply(right), reference)
            page.keyboard.press("1" if closer else "2")
        page.wait_for_selector("#done-view:not(.hidden)")
    finally:
        server.should_exit = True
        thread.join(10)
    res = review_results(project, review["id"])
    assert (res["preference"]["wins"], res["preference"]["losses"], res["preference"]["decisive"]) == (
        8,
        0,
        8,
    )
    assert res["preference"]["could_not_tell"] is False
    # The sides really were drawn: "Left" won exactly where arm a was on the left.
    assert res["position_bias"]["left"] == sum(sides)
