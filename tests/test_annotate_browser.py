"""The annotator page in a real browser: Debian's chromium driven by Playwright (executable_path, no
browser download). Log in, judge with the keyboard, open help and guidelines, undo, finish the queue,
export; model output containing <script> and <img onerror> is shown as text and runs nothing; the page
works at phone width. Also takes the README's screenshot (ALIGNKIT_SCREENSHOT=path to keep it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")

SCRIPT = "<script>window.pwned = 'script'</script>"
IMAGE = "<img src=x onerror=\"window.pwned = 'img'\">"
ITEMS = [
    {"prompt": [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "How do I boil an egg?"}],
     "responses": ["Put the egg in boiling water for 9 minutes, then cool it in cold water.",
                   "Eggs are laid by hens."]},
    {"prompt": "Write a greeting.", "responses": [f"Hello! {SCRIPT}", f"Hi there {IMAGE}"]},
    {"prompt": "Name a prime number.", "responses": ["7", "Nine."]},
    {"prompt": "What is the capital of France?", "responses": ["Paris.", "I am not sure."]},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    import uvicorn

    from alignkit.annotate import service
    from alignkit.annotate.db import open_database
    from alignkit.annotate.server import create_app

    db = str(tmp_path / "browser.db")
    _, Session = open_database(db)
    with Session() as session:
        _, admin_token = service.create_user(session, "boss", "admin")
        service.create_user(session, "ann", "annotator", password="correct horse")
        project = service.create_project(session, "eggs", "Prefer the answer that actually helps.")
        service.import_items(session, project, ITEMS)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(db), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not uv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "admin": admin_token}
    uv.should_exit = True
    thread.join(timeout=10)


def shown_texts(page) -> tuple[str, str]:
    return page.inner_text("#left-text"), page.inner_text("#right-text")


def test_annotator_judges_with_the_keyboard_and_markup_stays_text(server, tmp_path):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # bypass_csp: Playwright's waits evaluate JavaScript, which the page's policy forbids. It also means
        # the "nothing runs" checks below hold without the policy's help: the page renders text as text.
        page = browser.new_page(viewport={"width": 1200, "height": 800}, bypass_csp=True)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server["url"] + "/")
        page.fill("#login-name", "ann")
        page.fill("#login-password", "correct horse")
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#task:not([hidden])")
        assert "0 judged · 4 left" in page.inner_text("#progress")

        page.keyboard.press("?")
        assert page.is_visible("#help")
        page.keyboard.press("?")
        assert not page.is_visible("#help")
        page.keyboard.press("g")
        assert "actually helps" in page.inner_text("#guidelines")
        page.keyboard.press("Escape")
        assert not page.is_visible("#guidelines")

        seen = []
        for step in range(4):
            page.wait_for_function(f"document.getElementById('progress').textContent.startsWith('{len(seen)} judged')")
            left, right = shown_texts(page)
            seen.append((left, right))
            if SCRIPT in left + right:
                # the markup is on the page as text, and nothing in it ran
                assert page.evaluate("window.pwned") is None
                assert page.locator("#task script, #task img").count() == 0
                shot = os.environ.get("ALIGNKIT_SCREENSHOT") or str(tmp_path / "annotate.png")
                page.screenshot(path=shot, full_page=True)
            if step == 2:
                page.keyboard.press("x")  # strength: clearly
                page.keyboard.press("2")
                page.wait_for_function("document.getElementById('progress').textContent.startsWith('3 judged')")
                page.keyboard.press("u")  # undo: the same comparison comes back
                page.wait_for_function("document.getElementById('progress').textContent.startsWith('2 judged')")
                assert shown_texts(page) == (left, right)
                page.keyboard.press("r")
                page.keyboard.type("first answer is right")
                page.keyboard.press("Escape")
                page.keyboard.press("1")
            else:
                page.keyboard.press({0: "1", 1: "t", 3: "b"}[step])
        page.wait_for_selector("#done:not([hidden])")
        assert "4 judged · 0 left" in page.inner_text("#progress")
        assert page.evaluate("window.pwned") is None and not errors

        # phone width: the two responses stack
        page.set_viewport_size({"width": 375, "height": 740})
        page.keyboard.press("u")
        page.wait_for_selector("#task:not([hidden])")
        left_box, right_box = page.locator("#left").bounding_box(), page.locator("#right").bounding_box()
        assert right_box["y"] >= left_box["y"] + left_box["height"] - 1 and left_box["width"] <= 375
        page.keyboard.press("b")
        page.wait_for_selector("#done:not([hidden])")

        # the admin exports from the dashboard, ties kept
        admin = browser.new_page(bypass_csp=True)
        admin.goto(server["url"] + "/admin")
        admin.fill("#login-token", server["admin"])
        admin.click("#login-form button[type=submit]")
        admin.wait_for_selector("#dashboard:not([hidden])")
        admin.wait_for_function("document.getElementById('agreement').textContent.includes('Fleiss')")
        assert "ann" in admin.inner_text("#progress-table") and "Fleiss" in admin.inner_text("#agreement")
        admin.select_option("#ties", "keep")
        with admin.expect_download() as download:
            admin.click("#export")
        exported = (tmp_path / "export.jsonl")
        download.value.save_as(exported)
        browser.close()

    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(rows) == 3  # a decided pair, a tie kept, the redone pair; "both bad" is left out
    assert sum(bool(r.get("tie")) for r in rows) == 1
    # the markup item is exported verbatim unless it was the one judged "both bad" (the queue's order is random)
    markup_step = next(i for i, (left, right) in enumerate(seen) if SCRIPT in left + right)
    exported_markup = any(SCRIPT in json.dumps(r, ensure_ascii=False) for r in rows)
    assert exported_markup == (markup_step != 3)
