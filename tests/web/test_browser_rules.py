"""The Rules page in a real browser (headless Debian chromium driven by Playwright).

A manager opens the rules from the navigation, changes a threshold in the editor and sees it
checked as they type (valid, then a deliberate error shown with its line, which a button
selects in the editor), runs the what-if (figures, chart, the study that changes class),
applies the change with a comment, and sees the engine put it in force and the worklist
reorder. A radiologist has no Rules entry and gets 403 at /rules. The audit log holds the
apply. Screenshot: docs/images/rules.png (shown in README.md).

The engine's scoring side is real (:func:`tests.web.test_rules_page.make_engine`: the
pipeline with its rules watcher on a copy of rules/urgency.yaml); instead of the whole
engine's scheduler, a thread here runs the first step of its tick,
:meth:`Pipeline.check_rules`, twice a second: that is what picks up the changed file and
re-scores the open studies. No DICOM, HL7 or Triton: their paths have their own tests.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Page, expect
from sqlmodel import select

from triage.scoring.rules import version_id_of
from triage.store.models import AuditEvent

from .conftest import seed_study
from .test_browser import CHROMIUM, IMAGES, browser, page, sign_in  # noqa: F401  (fixtures)
from .test_rules_page import S_AT_70, S_AT_80, EngineParts, make_engine, seed_reorder

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


@dataclass
class Served:
    url: str
    engine: EngineParts


def _serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread, socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread, sock


def seed_shift(db, engine: EngineParts, data_dir) -> None:
    """Around the two studies of :func:`seed_reorder`, a busier two hours for the what-if's
    chart: ten negatives (outpatients and inpatients, within their reading targets), three
    outpatients positive at 0.85 (score 71: ASAP now, STAT from 70) and two inpatients
    positive at 0.6 (66: ASAP either way). None scores above X-POS's 74."""
    rules = engine.pipeline.urgency
    specs = [(f"NEG-{i:02d}", "OI"[i % 2], 0.1, 5 + 10 * i) for i in range(10)]
    specs += [(f"POS-O{i}", "O", 0.85, 20 + 30 * i) for i in range(3)]
    specs += [(f"POS-I{i}", "I", 0.6, 30 + 30 * i) for i in range(2)]
    for k, (acc, cls, p, waited) in enumerate(specs):
        seed_study(db, rules, data_dir, study_uid=f"1.6.{k}", accession=acc, ordered="R",
                   patient_class=cls, location="OPD^1" if cls == "O" else "WARD^3",
                   probability=p, waited_minutes=waited)  # fmt: skip


@pytest.fixture
def served(tmp_path, db, data_dir) -> Iterator[Served]:
    engine = make_engine(tmp_path, db, data_dir)
    seed_reorder(db, engine, data_dir)
    seed_shift(db, engine, data_dir)
    url, server, thread, sock = _serve(engine.app)
    stop = threading.Event()

    def ticks() -> None:  # the rules step of the engine's tick
        while not stop.wait(0.5):
            engine.pipeline.check_rules()

    ticker = threading.Thread(target=ticks, daemon=True)
    ticker.start()
    try:
        yield Served(url, engine)
    finally:
        stop.set()
        ticker.join(timeout=10)
        engine.app.state.worklist_feed.close()  # type: ignore[attr-defined]
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive() and not ticker.is_alive()


def test_manager_edits_checks_simulates_and_applies_a_threshold(
    page: Page,  # noqa: F811
    served: Served,
    db,
) -> None:
    engine = served.engine
    original = engine.rules_file.read_text()
    proposed = original.replace(S_AT_80, S_AT_70)
    sign_in(page, served, "mona")  # type: ignore[arg-type]
    rows = page.locator("#rows tr[data-uid]")
    expect(rows.first).to_have_attribute("data-uid", "1.5.1")  # Y-STAT first, X-POS ASAP

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Rules").click()
    expect(page.get_by_role("heading", name=re.compile("^Urgency rules"))).to_be_visible()
    editor = page.get_by_label(re.compile("^Proposed rules"))
    check = page.locator("#validation")
    expect(check).to_contain_text(f"Valid. Version {version_id_of(original)}, the rules in force")
    expect(check).to_have_attribute("aria-live", "polite")

    # a deliberate error: its line and reason, next to the editor; the button selects it
    lines = proposed.split("\n")
    n = next(i for i, line in enumerate(lines) if line.strip().startswith("E: {label: Emergency"))
    lines[n] = lines[n].replace("points: 20", "points: -5")
    editor.fill("\n".join(lines))
    expect(check).to_contain_text("Not valid")
    expect(check).to_contain_text(f"Line {n + 1}")
    expect(check).to_contain_text("'points' is -5: points are never negative")
    expect(editor).to_have_attribute("aria-invalid", "true")
    check.get_by_role("button", name=f"Line {n + 1}").click()
    selected = editor.evaluate("t => t.value.slice(0, t.selectionStart).split('\\n').length")
    assert selected == n + 1

    # the threshold change: STAT from a score of 70 instead of 80
    editor.fill(proposed)
    expect(check).to_contain_text(f"Valid. Version {version_id_of(proposed)}")
    expect(editor).not_to_have_attribute("aria-invalid", "true")

    page.get_by_label("Readers").fill("1")
    page.get_by_role("button", name="Simulate").click()
    changed = page.locator("#sim-changed")
    expect(changed).to_contain_text("Studies that change class: 4")
    expect(changed.locator("tbody tr", has_text="X-POS")).to_have_text(
        re.compile(r"X-POS\s*A\s*S\s*74\s*74")
    )
    expect(changed.locator("tbody tr", has_text="POS-O")).to_have_count(3)
    expect(page.locator("#sim-alerts")).to_contain_text("Alerts per day")
    expect(page.locator("#sim-waits")).to_contain_text("Critical (positive): median")
    expect(page.locator("svg.wait-chart path.line-proposed")).to_have_count(2)  # both panels
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "rules.png"), full_page=True)

    page.get_by_label(re.compile("^Comment")).first.fill("STAT from a score of 70 (trial)")
    page.get_by_role("button", name="Apply", exact=True).click()
    expect(page.locator("#applied")).to_contain_text(f"Applied version {version_id_of(proposed)}")
    # the engine's next tick puts it in force: said on the page (at once, or when it happens)
    expect(page.locator("#force-status")).to_contain_text(
        re.compile(f"Version {version_id_of(proposed)} is (now )?in force")
    )
    assert engine.rules_file.read_text() == proposed
    first_row = page.locator("#versions-table tbody tr").first
    expect(first_row).to_contain_text("mona")
    expect(first_row).to_contain_text("STAT from a score of 70 (trial)")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Worklist").click()
    expect(rows.first).to_have_attribute("data-uid", "1.5.2")  # X-POS, now STAT, first
    expect(rows.first).to_contain_text("STAT")

    with db.session() as s:
        applied = s.exec(select(AuditEvent).where(AuditEvent.action == "rules-change")).all()
    assert [(a.user, a.detail.endswith("STAT from a score of 70 (trial)")) for a in applied] == [
        ("mona", True)
    ]


def test_a_radiologist_cannot_open_the_rules_editor(page: Page, served: Served) -> None:  # noqa: F811
    sign_in(page, served)  # type: ignore[arg-type]  # rita, radiologist
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Worklist")).to_be_visible()
    expect(nav.get_by_role("link", name="Rules")).to_have_count(0)
    response = page.goto(served.url + "/rules")
    assert response is not None and response.status == 403
    expect(page.locator("body")).to_contain_text("needs manager, admin")
    expect(page.locator("#rules-text")).to_have_count(0)


def test_text_typed_before_the_script_ran_is_still_checked(page: Page, served: Served) -> None:  # noqa: F811
    """rules.js is deferred: a manager (or a test) can type into the editor before it has run
    and attached its listener. The page must still check what is in the editor then, not
    keep showing the server's verdict on the text it was served with."""
    held: list[Any] = []
    sign_in(page, served, "mona")  # type: ignore[arg-type]
    # the script waits (unanswered) until the text has changed
    page.route("**/static/rules.js", lambda route: held.append(route))
    page.goto(served.url + "/rules", wait_until="commit")
    editor = page.get_by_label(re.compile("^Proposed rules"))
    original = served.engine.rules_file.read_text()
    editor.fill(original.replace("points: 20", "points: -5", 1))
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the page never asked for rules.js"
    expect(page.locator("#validation")).to_contain_text("Valid.")  # the server's verdict
    held[0].continue_()
    expect(page.locator("#validation")).to_contain_text("Not valid", timeout=15000)
    expect(editor).to_have_attribute("aria-invalid", "true")
