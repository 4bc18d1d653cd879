"""The labelling page in a real headless Chromium (Playwright), against the real server on 127.0.0.1: rate, pick A/B
by click and by keyboard, tie, both bad, skip, log in with a token; then check what the store holds.

Needs Debian's `chromium` (or REWARDHUB_CHROMIUM=/path/to/chromium) and the `playwright` package (the dev extra);
Playwright's own browser download is not used. Without them the tests skip, saying which is missing."""

import os
import shutil

import pytest

from rewardhub.http_server import AppThread
from rewardhub_feedback import FeedbackStore
from rewardhub_feedback.server import create_app

CHROMIUM = os.environ.get("REWARDHUB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium, or set "
                                "REWARDHUB_CHROMIUM); the browser test of the labelling page is skipped")
TOKEN = "browser-test-token-0123456789"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    problems = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)  # CSP violations land here
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.problems = problems
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


def press(pg, key):
    with pg.expect_navigation():
        pg.keyboard.press(key)


def click(pg, name):
    with pg.expect_navigation():
        pg.get_by_role("button", name=name).click()


def test_label_by_click_and_keyboard_in_chromium(tmp_path, page):
    store = FeedbackStore(tmp_path / "b.db")
    rate1 = store.enqueue("What is 6*7?", ["42 <b>"])
    pick_click = store.enqueue("Pick by click", ["left", "right"])
    pick_key = store.enqueue("Pick by key", ["up", "down"])
    tie = store.enqueue("Equally good?", ["same-ish 1", "same-ish 2"])
    skipped = store.enqueue("Skip me first", ["meh 1", "meh 2"])
    rate2 = store.enqueue("Rate by key", ["fine"])
    with AppThread(create_app(store)) as server:
        page.goto(f"{server.url}/?annotator=ann")
        assert "What is 6*7?" in page.content() and "42 &lt;b&gt;" in page.content()   # escaped, not markup
        page.get_by_placeholder("your name").fill("ann t b 1 2 s")    # typing in a field is not a shortcut
        assert page.url.endswith("/?annotator=ann") and store.rating("What is 6*7?", "42 <b>") is None
        click(page, "4")                                               # rate with the mouse
        assert store.rating("What is 6*7?", "42 <b>") == (4.0, 1)
        assert "Pick by click" in page.content() and "Keyboard: 1 A is better" in page.content()
        click(page, "A is better")                                     # pick with the mouse
        assert "Pick by key" in page.content()
        press(page, "2")                                               # pick with the keyboard
        assert "Equally good?" in page.content()
        press(page, "t")                                               # tie
        assert "Skip me first" in page.content()
        press(page, "s")                                               # skip: stays in the queue
        assert "Rate by key" in page.content() and f"after={skipped}" in page.url
        press(page, "5")                                               # rate with the keyboard
        assert "No open item after" in page.content()
        with page.expect_navigation():
            page.get_by_role("link", name="Go back to the items you skipped").click()
        assert "Skip me first" in page.content()
        press(page, "b")                                               # both bad
        assert "No open item after" in page.content() and "Skip me first" not in page.content()
    assert page.problems == []                                          # the CSP let the page's own script run
    assert [(p.prompt, p.chosen, p.rejected) for p in store.pairs()] == [("Pick by click", "left", "right"),
                                                                        ("Pick by key", "down", "up")]
    assert store.rating("Rate by key", "fine") == (5.0, 1)
    stats = store.stats()
    assert (stats["ties"], stats["both_bad"], stats["ratings"], stats["queue_open"], stats["queue_done"]) == (
        1, 1, 2, 0, 6)
    assert store.judgements("Equally good?", "same-ish 1", "same-ish 2") == (0, 0, 1)
    assert {rate1, pick_click, pick_key, tie, skipped, rate2} == set(range(1, 7))
    store.close()


def test_token_login_then_keyboard_labelling_in_chromium(tmp_path, page):
    store = FeedbackStore(tmp_path / "t.db")
    store.enqueue("Pick one", ["left", "right"])
    with AppThread(create_app(store, token=TOKEN)) as server:
        response = page.goto(f"{server.url}/?annotator=ann")
        assert response.status == 401 and "Pick one" not in page.content()
        page.get_by_label("Token").fill(TOKEN)
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        assert "Pick one" in page.content() and page.url.endswith("/?annotator=ann")   # no token in the URL
        cookie = next(c for c in page.context.cookies() if c["name"].startswith("rewardhub_feedback"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
        press(page, "1")                      # a real browser's form post: its Origin, cookie and CSRF token pass
        assert "No open item after" in page.content()
    assert [(p.prompt, p.chosen) for p in store.pairs()] == [("Pick one", "left")]
    assert store._conn().execute("SELECT annotator FROM comparisons").fetchall() == [("ann",)]
    store.close()
