"""The Monitoring and Integration pages in a real browser (headless Debian chromium, Playwright).

A manager opens Monitoring from the navigation: two analysed studies, none with a known
truth. A radiologist (in another browser context) marks the positive one *disagreed* on its
study page; the manager reloads and sees the truth counted: one study with truth, PPV 0 of 1,
one false alert. An engineer opens Integration, sees the listeners, peers, HL7 both ways and
the dead letter with the RIS's error, and retries it: it leaves the dead-letter list and the
outbox holds it as pending again. Screenshots: docs/images/monitoring.png and
docs/images/integration.png (shown in README.md).

Studies are written into the store as the pipeline writes them (:func:`seed_study`), the DICOM
association and HL7 rows as the listeners write them: this test is about what people see.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlmodel import select

from triage.auth.users import add_user
from triage.store.models import DicomAssociation, HL7Message, OutboundMessage

from .conftest import PASSWORD, LiveServer, seed_study
from .test_browser import CHROMIUM, IMAGES, browser, page, sign_in  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


def _total_cells(pg: Page) -> list[str]:
    return pg.locator("#figures-ich tr.total td").all_inner_texts()


def _seed_integration(server: LiveServer) -> int:
    now = datetime.now(UTC)
    server.health.update(
        {
            "dicom": {
                "ready": True,
                "address": ["127.0.0.1", 11112],
                "counters": {
                    "released_mid_message": 0,
                    "sop_class_refused": 1,
                    "protocol_aborts": 0,
                },
            },
            "hl7": {"ready": True, "address": ["127.0.0.1", 2575]},
            "scheduler": {"ready": True},
            "ris": {"ready": True, "configured": True, "address": "ris.hospital.example:2576"},
            "triton": {"ready": True, "models": ["ich", "pe"]},
        }
    )
    with server.db.session() as s:
        for i, (ae, outcome, stored, refused, statuses) in enumerate(
            (
                ("CT_ED1", "released", 312, 0, "{}"),
                ("CT_ED1", "released", 48, 0, "{}"),
                ("PACS_MAIN", "aborted", 17, 0, "{}"),
                ("CT_WARD", "released", 0, 2, '{"A700": 2}'),
            )
        ):
            s.add(
                DicomAssociation(
                    ended_at=now - timedelta(minutes=5 * (4 - i)),
                    calling_ae=ae,
                    called_ae="TRIAGE",
                    address=f"10.0.1.{11 + i}",
                    port=50000 + i,
                    outcome=outcome,
                    stored=stored,
                    refused=refused,
                    statuses=statuses,
                )
            )
        s.add(
            HL7Message(
                received_at=now - timedelta(minutes=9),
                peer="10.0.2.5",
                sending_application="RIS",
                sending_facility="HOSP",
                control_id="RIS000812",
                message_type="ORM^O01",
                version="2.5.1",
                raw="MSH|^~\\&|RIS|HOSP|TRIAGE|TRIAGE|||ORM^O01|RIS000812|P|2.5.1",
                ack="MSH|^~\\&|TRIAGE|TRIAGE|RIS|HOSP|||ACK|A1|P|2.5.1\rMSA|AA|RIS000812",
                ack_code="AA",
                processed=True,
            )
        )
        dead = OutboundMessage(
            study_uid="4.9",
            kind="ORU",
            control_id="TRG000931",
            raw="MSH|^~\\&|TRIAGE|TRIAGE|RIS|HOSP|||ORU^R01|TRG000931|P|2.5.1",
            status="rejected",
            order_key="ACC931",
            ack="MSH|^~\\&|RIS|HOSP|TRIAGE|TRIAGE|||ACK|A9|P|2.5.1\rMSA|AE|TRG000931",
            ack_code="AE",
            ris_error="unknown accession ACC931",
            attempts=1,
            dead_at=now - timedelta(minutes=3),
        )
        s.add(dead)
        s.flush()
        assert dead.id is not None
        return dead.id


def test_feedback_changes_the_monitoring_figures_and_an_engineer_retries_a_dead_letter(
    page: Page,  # noqa: F811
    browser: Browser,  # noqa: F811
    live_server: LiveServer,
    rules,
) -> None:
    server = live_server
    add_user(server.db, "eddie", "engineer", PASSWORD)
    seed_study(
        server.db, rules, server.data_dir, study_uid="4.1", accession="MON-POS", probability=0.91
    )
    seed_study(
        server.db,
        rules,
        server.data_dir,
        study_uid="4.2",
        accession="MON-NEG",
        probability=0.12,
        patient_class="O",
        waited_minutes=40,
    )
    dead_id = _seed_integration(server)

    # the manager: Monitoring from the navigation, no truth known yet
    sign_in(page, server, "mona")
    page.get_by_role("link", name="Monitoring").click()
    expect(page.get_by_role("heading", name=re.compile("^Monitoring"))).to_be_visible()
    expect(page.locator("main")).to_contain_text("synthetic phantoms")
    cells = _total_cells(page)
    assert cells[0] == "2" and cells[1].startswith("50 %") and cells[4] == "0"
    expect(page.get_by_role("link", name="Integration")).to_have_count(0)

    # a radiologist disagrees with the positive result
    other = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        rad = other.new_page()
        sign_in(rad, server, "rita")
        rad.goto(server.url + "/studies/4.1")
        rad.get_by_label("I disagree").check()
        rad.get_by_label("Note (optional)").fill("falx calcification")
        rad.get_by_role("button", name="Record feedback").click()
        expect(rad.get_by_role("status").filter(has_text="recorded")).to_be_visible()
    finally:
        other.close()

    # the manager's figures now count it
    page.reload()
    cells = _total_cells(page)
    assert cells[4] == "1"  # one study with a known truth
    assert "0/1" in cells[7]  # PPV 0 of 1
    assert "(1/1;" in cells[8]  # one false alert
    expect(page.locator("#drift")).to_contain_text("too few studies")
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "monitoring.png"), full_page=True)

    # the engineer retries the dead letter
    eng_ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        eng = eng_ctx.new_page()
        sign_in(eng, server, "eddie")
        eng.get_by_role("link", name="Integration").click()
        expect(eng.get_by_role("heading", name="Integration")).to_be_visible()
        expect(eng.locator("#dicom-peers")).to_contain_text("CT_ED1")
        expect(eng.locator("#association-list")).to_contain_text("aborted")
        expect(eng.locator("#inbound-list")).to_contain_text("RIS000812")
        row = eng.locator(f"#dead-{dead_id}")
        expect(row).to_contain_text("unknown accession ACC931")
        eng.screenshot(path=str(IMAGES / "integration.png"), full_page=True)
        row.get_by_label(f"Note for message {dead_id}").fill("accession fixed in the RIS")
        row.get_by_role("button", name=f"Retry message {dead_id}").click()
        expect(eng.get_by_role("status").filter(has_text="queued again")).to_be_visible()
        expect(eng.locator(f"#dead-{dead_id}")).to_have_count(0)
    finally:
        eng_ctx.close()
    with server.db.session() as s:
        msg = s.exec(select(OutboundMessage).where(OutboundMessage.id == dead_id)).one()
    assert msg.status == "pending"
