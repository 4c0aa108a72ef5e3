"""The pages in a real browser (headless Debian chromium driven by Playwright).

A signed-in radiologist watches the worklist; a positive study stored as the pipeline stores
it appears at the top without a reload; they open it, see the reasons and both key images,
mark the AI result disagreed and see it recorded. The keyboard alone is enough to move
through the worklist and open a study. Screenshots go to docs/images/ (shown in README.md).

The studies are written into the store directly (:func:`tests.web.conftest.seed_study`, the
rows the pipeline writes, scored by the real urgency rules, key images rendered by the real
renderer) rather than sent through DICOM and Triton: this test is about what people see,
the path into the store has its own tests (tests/test_pipeline.py, tests/e2e), and driving a
model would cost tens of seconds per test.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlmodel import select
from support.paths import REPO_ROOT

from triage.store.models import Feedback

from .conftest import PASSWORD, LiveServer, seed_study

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The screenshots in docs/images are refreshed only when asked (TRIAGE_SCREENSHOTS=1): a plain
# test run leaves the repository's files as they are.
IMAGES = (
    REPO_ROOT / "docs" / "images"
    if os.environ.get("TRIAGE_SCREENSHOTS")
    else Path(tempfile.mkdtemp(prefix="triage-screens-"))
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15000)  # a loaded CI machine
    expect.set_options(timeout=15000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


def sign_in(page: Page, server: LiveServer, name: str = "rita") -> None:
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=re.compile("^Worklist"))).to_be_visible()


def test_new_positive_study_appears_live_then_feedback_is_stored(
    page: Page, live_server: LiveServer, rules
) -> None:
    server = live_server
    seed_study(
        server.db,
        rules,
        server.data_dir,
        study_uid="1.2.1",
        accession="ROUTINE01",
        probability=0.08,
        patient_class="O",
        location="OPD^2",
        waited_minutes=95,
    )
    seed_study(
        server.db,
        rules,
        server.data_dir,
        study_uid="1.2.2",
        accession="PENDING01",
        state="ai_pending",
        probability=None,
        patient_class="I",
        location="WARD^7",
    )
    sign_in(page, server)
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    rows = page.locator("#rows tr[data-uid]")
    expect(rows).to_have_count(2)

    seed_study(
        server.db,
        rules,
        server.data_dir,
        study_uid="1.2.3",
        accession="BLEED01",
        probability=0.94,
        patient_class="E",
        location="ED^RESUS",
        waited_minutes=4,
    )
    expect(rows).to_have_count(3)
    first = rows.first
    expect(first).to_have_attribute("data-uid", "1.2.3")
    expect(first).to_contain_text("STAT")
    expect(first).to_contain_text("Intracranial hemorrhage suspected")
    expect(first).to_contain_text("0.94")
    assert page.evaluate("window.__sameDocument") is True  # no reload
    expect(page.locator("#rows")).to_contain_text("AI pending")
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "worklist.png"), full_page=True)

    first.get_by_role("link", name="BLEED01").click()
    expect(page.get_by_role("heading", name=re.compile("BLEED01"))).to_be_visible()
    reasons = page.locator("#reasons")
    expect(reasons).to_contain_text("Emergency patient (E): +20")
    expect(reasons).to_contain_text("ICH 0.94 >= 0.50")
    for img in (page.locator("img[id^=key-overlay]"), page.locator("img[id^=key-plain]")):
        expect(img).to_be_visible()
        assert img.evaluate("i => i.complete && i.naturalWidth") == 128
    expect(page.locator("#history")).to_contain_text("finding")
    expect(page.locator("#messages")).to_contain_text("MSA|AA|TRGBLEED01")
    page.screenshot(path=str(IMAGES / "study.png"), full_page=True)

    page.get_by_label("I disagree").check()
    page.get_by_label("Note (optional)").fill("calcified falx, no bleed")
    page.get_by_role("button", name="Record feedback").click()
    expect(page.get_by_role("status").filter(has_text="recorded")).to_be_visible()
    expect(page.locator("#feedback-list")).to_contain_text("calcified falx, no bleed")
    with server.db.session() as s:
        stored = s.exec(select(Feedback)).all()
    assert [(f.study_uid, f.verdict, f.truth, f.who) for f in stored] == [
        ("1.2.3", "disagreed", "negative", "rita")
    ]


def test_keyboard_alone_moves_through_the_worklist_and_opens_a_study(
    page: Page, live_server: LiveServer, rules
) -> None:
    server = live_server
    for i, (acc, p) in enumerate((("KB-A", 0.97), ("KB-B", 0.2), ("KB-C", 0.1))):
        seed_study(
            server.db,
            rules,
            server.data_dir,
            study_uid=f"3.{i}",
            accession=acc,
            probability=p,
            waited_minutes=10 + i,
        )
    sign_in(page, server, "mona")
    links = page.locator("#rows a.row-link")
    expect(links).to_have_count(3)
    # the rows are drawn by the server; the arrow keys need the (deferred) script
    expect(page.locator("#worklist")).to_have_attribute("data-keys", "on")
    # Tab from the top of the page: skip link, navigation, sign-out, the three filters, then
    # the first study (each stop visibly focused)
    page.locator("body").focus()
    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('row-link')"):
            break
    order = links.all_text_contents()  # most urgent first
    assert order[0] == "KB-A"  # the positive one
    active = "document.activeElement.textContent"
    assert page.evaluate(active) == order[0]
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    page.keyboard.press("ArrowDown")
    assert page.evaluate(active) == order[1]
    page.keyboard.press("End")
    assert page.evaluate(active) == order[2]
    page.keyboard.press("ArrowUp")
    assert page.evaluate(active) == order[1]
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile(order[1]))).to_be_visible()
    # the filters have labels and work from the keyboard
    page.go_back()
    expect(page.locator("#worklist")).to_have_attribute("data-keys", "on")
    page.get_by_label("State").focus()
    page.get_by_label("State").select_option("scored")
    expect(page.locator("#rows tr[data-uid]:visible")).to_have_count(3)
    page.get_by_label("Modality").select_option("CT")
    expect(page.locator("#rows tr[data-uid]:visible")).to_have_count(3)
