"""The pages over HTTP (no browser): sign-in required, what the study page shows, feedback
stored with the CSRF token and audited, the live worklist's event stream."""

from __future__ import annotations

import json
import re
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from triage.api.app import create_app
from triage.store.models import AuditEvent, Feedback
from triage.web.feed import change_marker

from .conftest import PASSWORD, seed_study


def _client(db, rules, data_dir) -> TestClient:
    return TestClient(create_app(db, rules, lambda: {}, data_dir), follow_redirects=False)


def _sign_in(client: TestClient, name: str) -> None:
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    r = client.post(
        "/login", data={"csrf_token": token, "username": name, "password": PASSWORD, "next": "/"}
    )
    assert r.status_code == 303, r.text


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def test_pages_need_sign_in(db, rules, data_dir):
    seed_study(db, rules, data_dir, study_uid="1.2.3", accession="ACC1")
    c = _client(db, rules, data_dir)
    for path in ("/", "/studies/1.2.3"):
        r = c.get(path, headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert c.get("/worklist/events").status_code == 401
    assert c.get("/studies/1.2.3/findings/1/overlay.png").status_code == 401


def test_worklist_page_most_urgent_first_with_words_and_ai_states(db, rules, data_dir):
    seed_study(
        db,
        rules,
        data_dir,
        study_uid="1.1",
        accession="ROUTINE",
        probability=0.1,
        patient_class="O",
        location="OPD^3",
    )
    seed_study(db, rules, data_dir, study_uid="1.2", accession="BLEED", probability=0.95)
    seed_study(
        db,
        rules,
        data_dir,
        study_uid="1.3",
        accession="WAITING",
        state="ai_pending",
        probability=None,
    )
    c = _client(db, rules, data_dir)
    _sign_in(c, "mona")
    html = c.get("/").text
    order = [html.index(a) for a in ("BLEED", "ROUTINE")]
    assert order == sorted(order)  # the raised study first
    assert 'STAT <span class="code">(S)</span>' in html  # the priority in words, not colour
    assert "Intracranial hemorrhage suspected" in html and "AI pending" in html
    assert "synthetic phantoms" in html and "OPD 3" in html and "Emergency (E)" in html
    assert '<label for="f-modality">' in html and '<label for="f-state">' in html
    # why the bleed moved, on its row; and the reading target the waiting time counts against
    row = html[html.index('data-uid="1.2"') :]
    row = row[: row.index("</tr>")]
    assert "Emergency patient (E): +20 · ICH 0.95 &gt;= " in row, row
    assert "raised from" in row and " of 30 min" in row  # E: 30 min reading target
    routine = html[html.index('data-uid="1.1"') :]
    routine = routine[: routine.index("</tr>")]
    assert 'class="sub why"' not in routine  # not raised: no reasons on the row


def test_study_page_shows_reasons_images_order_messages_history(db, rules, data_dir):
    seeded = seed_study(db, rules, data_dir, study_uid="1.2.840.9", accession="BLEED")
    c = _client(db, rules, data_dir)
    _sign_in(c, "rita")
    html = c.get("/studies/1.2.840.9").text
    assert "Intracranial hemorrhage" in html and "raised from Routine" in html
    assert "Emergency patient (E): +20" in html  # a reason from the urgency rules
    assert "judged on series 2 “AXIAL 5MM BRAIN”, 3 images" in html  # which series
    assert f"/findings/{seeded.finding_id}/overlay.png" in html
    assert f"/findings/{seeded.finding_id}/plain.png" in html
    assert "CT head without contrast" in html and "TRGBLEED" in html and "MSA|AA|TRGBLEED" in html
    assert 'id="history"' in html and "finding" in html
    for which in ("overlay", "plain"):
        img = c.get(f"/studies/1.2.840.9/findings/{seeded.finding_id}/{which}.png")
        assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
    assert c.get("/studies/1.2.840.9/findings/999/plain.png").status_code == 404
    assert c.get("/studies/nope", headers={"Accept": "text/html"}).status_code == 404
    with db.session() as s:
        views = s.exec(select(AuditEvent).where(AuditEvent.action == "view")).all()
    assert any(v.obj == "study:1.2.840.9" and v.user == "rita" for v in views)


def test_a_negative_study_page_shows_no_overlay_and_says_so(db, rules, data_dir):
    """A negative's key slice is the one the model rated highest; its page showed it twice,
    captioned "with the model's overlay", when there is none (found by a radiologist's
    walk-through)."""
    seeded = seed_study(
        db, rules, data_dir, study_uid="1.2.840.10", accession="CLEAR", probability=0.1
    )
    c = _client(db, rules, data_dir)
    _sign_in(c, "rita")
    html = c.get("/studies/1.2.840.10").text
    assert "no finding" in html and "CLEAR" in html
    assert f"/findings/{seeded.finding_id}/plain.png" in html
    assert f"/findings/{seeded.finding_id}/overlay.png" not in html
    assert "below the operating point: no finding, no overlay" in html
    assert "model's overlay" not in html


def test_feedback_needs_the_csrf_token_and_is_stored_and_audited(db, rules, data_dir):
    seed_study(db, rules, data_dir, study_uid="9.9", accession="BLEED")
    c = _client(db, rules, data_dir)
    _sign_in(c, "rita")
    page = c.get("/studies/9.9").text
    r = c.post("/studies/9.9/feedback", data={"verdict": "disagreed", "note": "no bleed"})
    assert r.status_code == 403  # no CSRF token: refused by the auth middleware
    r = c.post(
        "/studies/9.9/feedback",
        data={"csrf_token": _csrf(page), "verdict": "disagreed", "note": "calcification"},
    )
    assert r.status_code == 303 and r.headers["location"].endswith("saved=1#feedback")
    with db.session() as s:
        rows = s.exec(select(Feedback)).all()
        audits = s.exec(select(AuditEvent).where(AuditEvent.action == "feedback")).all()
    assert len(rows) == 1
    fb = rows[0]
    assert (fb.source, fb.verdict, fb.ai_result, fb.truth) == (
        "radiologist",
        "disagreed",
        "positive",
        "negative",
    )
    assert fb.who == "rita" and fb.note == "calcification" and fb.model_name == "ich"
    assert len(audits) == 1 and audits[0].obj == "study:9.9"
    assert "calcification" in c.get("/studies/9.9?saved=1").text
    bad = c.post("/studies/9.9/feedback", data={"csrf_token": _csrf(page), "verdict": "maybe"})
    assert bad.status_code == 400


def test_a_manager_cannot_record_feedback(db, rules, data_dir):
    seed_study(db, rules, data_dir, study_uid="9.8", accession="BLEED")
    c = _client(db, rules, data_dir)
    _sign_in(c, "mona")
    page = c.get("/studies/9.8").text
    assert "Only a radiologist records feedback" in page
    r = c.post("/studies/9.8/feedback", data={"csrf_token": _csrf(page), "verdict": "agreed"})
    assert r.status_code == 403


def test_change_marker_moves_with_what_the_worklist_shows(db, rules, data_dir):
    before = change_marker(db)
    assert change_marker(db) == before
    seed_study(db, rules, data_dir, study_uid="7.1", accession="NEW")
    after = change_marker(db)
    assert after != before
    with db.session() as s:
        s.add(Feedback(study_uid="7.1", source="radiologist", verdict="agreed"))
    assert change_marker(db) != after


def test_event_stream_pushes_a_new_study_and_ends_when_closed(live_server, rules):
    """The stream over a real socket: the rows at once, a new study within the poll period,
    and close() ends it (an open page never holds the server's shutdown)."""
    base = live_server.url
    with httpx.Client(base_url=base, follow_redirects=False) as c:
        form = c.get("/login").text
        c.post(
            "/login",
            data={"csrf_token": _csrf(form), "username": "rita", "password": PASSWORD, "next": "/"},
        )
        events: list[dict] = []
        done = threading.Event()

        def read() -> None:
            with c.stream("GET", "/worklist/events", timeout=20) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if len(events) == 1:
                            seed_study(
                                live_server.db,
                                rules,
                                live_server.data_dir,
                                study_uid="5.5",
                                accession="PUSHED",
                            )
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        for _ in range(200):
            if len(events) >= 2:
                break
            done.wait(0.05)
        live_server.app.state.worklist_feed.close()
        assert done.wait(5), "the stream did not end after close()"
    assert events[0]["count"] == 0 and "No studies yet" in events[0]["rows_html"]
    assert events[1]["count"] == 1 and "PUSHED" in events[1]["rows_html"]


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_study_page_names_the_key_image_by_its_instance_number(db, rules, data_dir):
    """The viewer's image number (InstanceNumber) when the finding has it; a finding stored
    before it was kept says its slice counts from the bottom of the series."""
    from triage.store.models import Finding

    seeded = seed_study(db, rules, data_dir, study_uid="1.2.840.10", accession="KEY")
    c = _client(db, rules, data_dir)
    _sign_in(c, "rita")
    html = c.get("/studies/1.2.840.10").text
    assert "key slice 18 counted from the bottom of the series" in html

    def page_with(**values: object) -> str:
        with db.session() as s:
            f = s.get(Finding, seeded.finding_id)
            assert f is not None
            for name, value in values.items():
                setattr(f, name, value)
            s.add(f)
            s.commit()
        return c.get("/studies/1.2.840.10").text

    html = page_with(key_instance=26)
    assert "key image 26 (image number in the series)" in html
    assert "counted from the bottom" not in html
    # a frame of a multi-frame (Enhanced CT) image: the image and its frame, or the frame
    # alone when the image has no number
    html = page_with(key_frame=31)
    assert "key image 26, frame 31 (image number in the series and frame of" in html
    html = page_with(key_instance=None)
    assert "key frame 31 of the series' multi-frame image" in html
    assert "counted from the bottom" not in html
