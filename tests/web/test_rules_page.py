"""The Rules page and its endpoints over HTTP (no browser): managers only (a radiologist and
the radiologist's API token get 403 everywhere), validation with the engine's loader (line
and reason), the what-if with the same numbers as ``triage rules simulate``, apply (the rules
file written, the version recorded with who/when/why, audited, put in force by the engine's
rules step, the open studies re-scored), restore of a previous version, and the refusals
(no CSRF token, invalid text, no comment, a file changed meanwhile, a failed write).

The engine here is a real :class:`~triage.pipeline.Pipeline` with its rules watcher on a copy
of rules/urgency.yaml; the tests call :meth:`Pipeline.check_rules`, the first step of every
tick, where the engine's scheduler would."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select
from support.paths import REPO_ROOT

from triage.api.app import create_app
from triage.auth.users import add_user
from triage.cli import main
from triage.completion import CompletionPolicy
from triage.config import load_settings
from triage.errors import StoreError
from triage.outbound import RISNotifier
from triage.pipeline import Pipeline
from triage.routing import load_routing_rules
from triage.scoring import UrgencyRulesWatcher
from triage.scoring.rules import version_id_of
from triage.store import Database
from triage.store.models import AuditEvent, Feedback, RulesChange, RulesInForce
from triage.web.rules_routes import MAX_BODY_BYTES

from .conftest import PASSWORD, seed_study

SHIPPED = REPO_ROOT / "rules" / "urgency.yaml"
S_AT_80 = "{min_score: 80, priority: S}"
S_AT_70 = "{min_score: 70, priority: S}"


@dataclass
class EngineParts:
    rules_file: Path
    pipeline: Pipeline
    app: object


def make_engine(tmp_path: Path, db: Database, data_dir: Path) -> EngineParts:
    """The engine's scoring side on a copy of the shipped rules: the watcher, the pipeline
    (no inference, no RIS) and the app reading the rules in force from the pipeline."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    rules_file = rules_dir / "urgency.yaml"
    rules_file.write_text(SHIPPED.read_text())
    settings = load_settings(environ={"TRIAGE_DATA_DIR": str(data_dir)}, overrides={})
    pipeline = Pipeline(
        db,
        load_routing_rules(REPO_ROOT / "rules" / "routing.yaml"),
        None,  # type: ignore[arg-type]  # the watcher gives the rules
        None,
        RISNotifier(settings, db),
        completion=CompletionPolicy(
            stable_seconds_for=settings.stable_seconds_for,
            shortest_seconds=1.0,
            expected_series_quiet_seconds=1.0,
        ),
        retry_seconds=60,
        match_window_hours=settings.order_match_window_hours,
        rules_watcher=UrgencyRulesWatcher(rules_file),
    )
    app = create_app(db, lambda: pipeline.urgency, lambda: {}, data_dir)
    return EngineParts(rules_file, pipeline, app)


@pytest.fixture
def engine(tmp_path, db, data_dir) -> EngineParts:
    return make_engine(tmp_path, db, data_dir)


def client(engine: EngineParts) -> TestClient:
    return TestClient(engine.app, follow_redirects=False)  # type: ignore[arg-type]


def sign_in(c: TestClient, name: str) -> str:
    """Sign in; returns the session's CSRF token (from the worklist page)."""
    form = c.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    r = c.post(
        "/login", data={"csrf_token": token, "username": name, "password": PASSWORD, "next": "/"}
    )
    assert r.status_code == 303, r.text
    page = c.get("/").text
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def post_json(c: TestClient, csrf: str, url: str, body: dict) -> object:
    return c.post(url, json=body, headers={"X-CSRF-Token": csrf})


def changes(db: Database) -> list[RulesChange]:
    with db.session() as s:
        return list(s.exec(select(RulesChange).order_by(col(RulesChange.id))).all())


def audit_rows(db: Database, action: str) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.exec(select(AuditEvent).where(AuditEvent.action == action)).all())


def test_only_managers_and_admins_the_page_and_every_endpoint(engine, db):
    add_user(db, "ada", "admin", PASSWORD)
    before = engine.rules_file.read_bytes()
    vid = version_id_of(before.decode())
    c = client(engine)
    csrf = sign_in(c, "rita")  # radiologist
    assert 'href="/rules"' not in c.get("/").text  # not in her navigation
    page = c.get("/rules", headers={"Accept": "text/html"})
    assert page.status_code == 403 and "text/html" in page.headers["content-type"]
    assert "needs manager, admin" in page.text
    text = SHIPPED.read_text().replace(S_AT_80, S_AT_70)
    for method, url, body in (
        ("GET", "/api/rules", None),
        ("GET", "/api/rules/versions", None),
        ("GET", f"/api/rules/versions/{vid}", None),
        ("POST", "/api/rules/validate", {"text": text}),
        ("POST", "/api/rules/simulate", {"text": text}),
        ("POST", "/api/rules/apply", {"text": text, "comment": "mine", "base_version": vid}),
        ("POST", f"/api/rules/versions/{vid}/restore", {"comment": "mine"}),
    ):
        r = c.request(method, url, json=body, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403, (url, r.status_code, r.text)
        assert r.json()["error"] == "forbidden", url  # the role, not the CSRF check
    # the radiologist's bearer token (api_token): the same
    api = TestClient(
        create_app(
            db,
            lambda: engine.pipeline.urgency,
            lambda: {},
            None,
            settings=load_settings(environ={"TRIAGE_API_TOKEN": "t" * 24}, overrides={}),
        )
    )
    r = api.post(
        "/api/rules/apply",
        json={"text": text, "comment": "x"},
        headers={"Authorization": "Bearer " + "t" * 24},
    )
    assert r.status_code == 403
    assert engine.rules_file.read_bytes() == before and changes(db) == []
    # a manager and an admin may
    for name in ("mona", "ada"):
        m = client(engine)
        sign_in(m, name)
        assert m.get("/rules", headers={"Accept": "text/html"}).status_code == 200, name
        assert 'href="/rules"' in m.get("/").text


def test_validate_answers_the_loaders_line_and_reason(engine):
    c = client(engine)
    csrf = sign_in(c, "mona")
    good = SHIPPED.read_text().replace(S_AT_80, S_AT_70)
    r = post_json(c, csrf, "/api/rules/validate", {"text": good})
    assert r.status_code == 200
    assert r.json() == {
        "ok": True,
        "version_id": version_id_of(good),
        "errors": [],
        "same_as_in_force": False,
    }
    same = post_json(c, csrf, "/api/rules/validate", {"text": SHIPPED.read_text()}).json()
    assert same["ok"] and same["same_as_in_force"]
    lines = good.splitlines()
    n = next(i for i, line in enumerate(lines) if line.strip().startswith("E: {label: Emergency"))
    lines[n] = lines[n].replace("points: 20", "points: -5")
    data = post_json(c, csrf, "/api/rules/validate", {"text": "\n".join(lines)}).json()
    assert data["ok"] is False and len(data["errors"]) == 1
    err = data["errors"][0]
    assert err["line"] == n + 1  # 1-based, the line of the negative points
    assert "'points' is -5: points are never negative" in err["reason"]
    # the proposed text, not the file in force (which would read as if the rules in force
    # were broken); an invalid text has no version id (it can never be in force)
    assert err["message"] == f"the proposed text, line {n + 1}: {err['reason']}"
    assert data["version_id"] == ""
    broken = post_json(c, csrf, "/api/rules/validate", {"text": "version: 1\npriorities: [\n"})
    assert broken.json()["ok"] is False and broken.json()["errors"][0]["line"] is not None
    # a mis-indented line: PyYAML's token names in plain words, with the likely cause
    bad_indent = "version: 1\npriorities:\n  S: {label: STAT, base: 70}\n   A: 1\n"
    reason = post_json(c, csrf, "/api/rules/validate", {"text": bad_indent}).json()["errors"][0]
    assert "<block" not in reason["reason"], reason
    assert post_json(c, csrf, "/api/rules/validate", {"text": 5}).status_code == 400
    # a body that cannot be used: its own 4xx and what is wrong, on every endpoint that reads one
    json_headers = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    for url in ("/api/rules/validate", "/api/rules/simulate", "/api/rules/apply"):
        r = c.post(url, content=b"{not json", headers=json_headers)
        assert r.status_code == 400 and "not JSON" in r.json()["detail"], url
        r = c.post(url, content=b"[1, 2]", headers=json_headers)
        assert r.status_code == 400 and r.json()["detail"] == "expected a JSON object", url
        r = c.post(url, content=b"x" * (MAX_BODY_BYTES + 1), headers=json_headers)
        assert r.status_code == 413 and "larger than" in r.json()["detail"], url
    # a browser form's line ends give the same version as the file's
    crlf = post_json(c, csrf, "/api/rules/validate", {"text": good.replace("\n", "\r\n")})
    assert crlf.json()["version_id"] == version_id_of(good)


def seed_reorder(db, engine, data_dir) -> None:
    """Two open studies: Y ordered STAT, negative (score 70, STAT, listed first) and X
    ordered routine, outpatient, positive 0.9 (score 74, ASAP). With STAT from 70 instead of
    80, X is STAT too and its higher score puts it first."""
    rules = engine.pipeline.urgency
    seed_study(db, rules, data_dir, study_uid="1.5.1", accession="Y-STAT", ordered="S",
               patient_class="O", location="OPD^1", probability=0.1)  # fmt: skip
    seed_study(db, rules, data_dir, study_uid="1.5.2", accession="X-POS", ordered="R",
               patient_class="O", location="OPD^1", probability=0.9)  # fmt: skip


def worklist_order(c: TestClient) -> list[tuple[str, str, float]]:
    items = c.get("/api/worklist").json()["studies"]
    return [(i["accession_number"], i["engine_priority"], i["score"]) for i in items]


def test_simulation_gives_the_same_numbers_as_the_command(
    engine, db, data_dir, capsys, monkeypatch
):
    seed_reorder(db, engine, data_dir)
    with db.session() as s:  # truth for Y: a final report, negative
        s.add(Feedback(study_uid="1.5.1", model_name="ich", source="report", truth="negative"))
    c = client(engine)
    csrf = sign_in(c, "mona")
    proposed = SHIPPED.read_text().replace(S_AT_80, S_AT_70)
    # a whole second after everything stored (the AI results count from when they were stored)
    until = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0).isoformat()
    r = post_json(
        c, csrf, "/api/rules/simulate",
        {"text": proposed, "since": "7d", "until": until, "readers": 1,
         "read_minutes": "ct-head=6,default=12"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    api = r.json()["figures"]

    for key in [k for k in __import__("os").environ if k.startswith("TRIAGE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(data_dir))
    proposed_file = engine.rules_file.parent / "proposed.yaml"
    proposed_file.write_text(proposed)
    capsys.readouterr()
    code = main(
        ["rules", "simulate", str(proposed_file), "--current", str(engine.rules_file), "--json",
         "--since", "7d", "--until", until, "--readers", "1", "--read-minutes",
         "ct-head=6,default=12"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    cli = json.loads(out)
    # the proposed text is attributed to the rules file on the page, to its own file here
    assert api["after"].pop("rules") == str(engine.rules_file)
    assert cli["after"].pop("rules") == str(proposed_file)
    assert api == cli
    assert api["studies"] == 2 and [c["accession_number"] for c in api["changed"]] == ["X-POS"]
    assert api["changed"][0]["before"] == "A" and api["changed"][0]["after"] == "S"
    assert api["after"]["alerts"] == api["before"]["alerts"] == 1  # X raised (A, then S)

    fragment = r.json()["html"]
    assert "<svg" in fragment and fragment.count('class="line-current"') == 1  # one critical study
    assert 'class="line-proposed"' in fragment and "X-POS" in fragment
    assert audit_rows(db, "view")[-1].obj == "rules-simulation"
    bad = post_json(c, csrf, "/api/rules/simulate", {"text": "version: 2\n"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["line"] == 1
    for field, value in (("since", "yesterday"), ("readers", 0), ("read_minutes", "ct=0")):
        r = post_json(c, csrf, "/api/rules/simulate", {"text": proposed, field: value})
        assert r.status_code == 400, field


def test_apply_writes_records_audits_and_the_engine_rescores(engine, db, data_dir):
    seed_reorder(db, engine, data_dir)
    c = client(engine)
    csrf = sign_in(c, "mona")
    assert [a for a, _, _ in worklist_order(c)] == ["Y-STAT", "X-POS"]
    original = engine.rules_file.read_text()
    v1 = version_id_of(original)
    proposed = original.replace(S_AT_80, S_AT_70)
    form = {"text": proposed.replace("\n", "\r\n"), "comment": "STAT from 70", "base_version": v1}

    # refused: no CSRF token, no comment, an invalid text, a stale base version
    assert c.post("/api/rules/apply", data=form).status_code == 403
    r = c.post("/api/rules/apply", data={**form, "comment": " ", "csrf_token": csrf})
    assert r.status_code == 400 and "comment is needed" in r.text
    bad = proposed.replace("priority: S}", "priority: X}", 1)
    r = c.post("/api/rules/apply", data={**form, "text": bad, "csrf_token": csrf})
    assert r.status_code == 400 and "unknown priority &#39;X&#39;" in r.text
    assert 'role="alert"' in r.text and bad in html.unescape(r.text)  # the text is kept
    r = post_json(c, csrf, "/api/rules/apply", {**form, "base_version": "0123456789ab"})
    assert r.status_code == 409 and "changed since the editor read it" in r.json()["error"]
    assert engine.rules_file.read_text() == original and changes(db) == []

    r = c.post("/api/rules/apply", data={**form, "csrf_token": csrf})
    assert r.status_code == 303
    v2 = version_id_of(proposed)
    assert engine.rules_file.read_text() == proposed  # \n line ends, as the file had
    assert not list(engine.rules_file.parent.glob(".*.tmp"))  # no temp file left
    [row] = changes(db)
    assert (row.user, row.comment, row.version_id, row.previous_version_id, row.text) == (
        "mona", "STAT from 70", v2, v1, proposed,
    )  # fmt: skip
    [ev] = audit_rows(db, "rules-change")
    assert (ev.user, ev.obj) == ("mona", f"rules:{engine.rules_file}")
    assert ev.detail == f"{v1} -> {v2}: STAT from 70"
    # applied, not yet in force: the engine's next tick does that
    page = c.get(r.headers["location"]).text
    assert f"Applied version <code>{v2}</code>" in page and "not in force yet" in page
    assert c.get("/api/rules").json()["in_force"]["version_id"] == v1
    assert [a for a, _, _ in worklist_order(c)] == ["Y-STAT", "X-POS"]

    assert engine.pipeline.check_rules() is True  # the engine's tick, its rules step
    state = c.get("/api/rules").json()
    assert state["in_force"]["version_id"] == v2 and state["file"]["in_force"] is True
    assert worklist_order(c) == [("X-POS", "S", 74.0), ("Y-STAT", "S", 70.0)]
    listed = c.get("/api/rules/versions").json()
    assert [(v["version_id"], v["source"], v["in_force"]) for v in listed["versions"]] == [
        (v2, "applied", True),
        (v1, "file", False),  # the text the engine started with
    ]
    assert "<strong>in force</strong>" in c.get("/rules").text


def test_restore_applies_a_previous_version_again_as_a_new_one(engine, db):
    c = client(engine)
    csrf = sign_in(c, "mona")
    original = engine.rules_file.read_text()
    v1 = version_id_of(original)
    proposed = original.replace(S_AT_80, S_AT_70)
    v2 = version_id_of(proposed)
    r = post_json(c, csrf, "/api/rules/apply",
                  {"text": proposed, "comment": "try 70", "base_version": v1})  # fmt: skip
    assert r.status_code == 200 and r.json()["version_id"] == v2
    engine.pipeline.check_rules()
    page = c.get("/rules").text
    assert f"/api/rules/versions/{v1}/restore" in page  # the previous one is restorable
    assert f"/api/rules/versions/{v2}/restore" not in page  # the one in the file is not
    assert c.get(f"/api/rules/versions/{v1}").json()["text"] == original
    assert c.get("/api/rules/versions/ffffffffffff").status_code == 404

    r = c.post(
        f"/api/rules/versions/{v1}/restore",
        data={"comment": "back to 80", "base_version": v2, "csrf_token": csrf},
    )
    assert r.status_code == 303
    assert engine.rules_file.read_text() == original
    assert engine.pipeline.check_rules() is True
    in_force = c.get("/api/rules").json()["in_force"]
    assert in_force["version_id"] == v1
    # since the restore, not since v1 first came into force (before v2 was applied)
    with db.session() as s:
        v2_from = s.exec(select(RulesInForce.at).where(RulesInForce.version_id == v2)).one()
    since = datetime.fromisoformat(in_force["since"])
    assert since >= (v2_from if v2_from.tzinfo else v2_from.replace(tzinfo=UTC))
    rows = changes(db)
    assert [(x.version_id, x.restored_from, x.user, x.comment) for x in rows] == [
        (v2, "", "mona", "try 70"),
        (v1, v1, "mona", "back to 80"),
    ]
    assert audit_rows(db, "rules-change")[-1].detail == f"restore of {v1}: {v2} -> {v1}: back to 80"
    versions = c.get("/api/rules/versions").json()["versions"]
    assert [(v["version_id"], v["source"], v["in_force"]) for v in versions] == [
        (v1, "restored", True),
        (v2, "applied", False),
        (v1, "file", True),
    ]
    again = post_json(c, csrf, f"/api/rules/versions/{v1}/restore", {"comment": "again"})
    assert again.status_code == 400 and "holds this text already" in again.json()["error"]


def test_a_failed_write_records_nothing_and_leaves_the_file(engine, db, monkeypatch):
    import triage.web.rules as rules_module

    def broken(path, data):
        raise StoreError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(rules_module, "write_durably", broken)
    c = client(engine)
    csrf = sign_in(c, "mona")
    original = engine.rules_file.read_text()
    r = post_json(c, csrf, "/api/rules/apply",
                  {"text": original.replace(S_AT_80, S_AT_70), "comment": "x"})  # fmt: skip
    assert r.status_code == 503 and "No space left" in r.json()["detail"]
    assert engine.rules_file.read_text() == original
    assert changes(db) == [] and audit_rows(db, "rules-change") == []
