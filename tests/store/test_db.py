from __future__ import annotations

import sqlite3

from sqlmodel import select

from triage.store import Database, Finding, Study


def test_tables_of_an_older_version_get_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    old = Database(f"sqlite:///{path}")
    old.create_all()
    with old.session() as s:
        s.add(Study(study_uid="1.2.3"))
    old.dispose()
    con = sqlite3.connect(path)  # the schema as an older version made it
    dropped = [("study", "score"), ("study", "reasons"), ("finding", "key_image")]
    dropped += [("study", "accession_from_order"), ("study", "failures")]
    for table, column in dropped:
        con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    con.commit()
    con.close()
    db = Database(f"sqlite:///{path}")
    db.create_all()
    with db.session() as s:
        study = s.exec(select(Study)).one()
        assert study.study_uid == "1.2.3"
        assert study.state == "receiving" and study.score == 0.0 and study.reasons == "[]"
        assert study.failures == 0 and study.accession_from_order is False
        s.add(Finding(study_uid="1.2.3", model_name="ich", key_image="k.png"))
    with db.session() as s:
        assert s.exec(select(Finding)).one().key_image == "k.png"
    db.create_all()  # idempotent
    db.dispose()
