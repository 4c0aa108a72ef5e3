"""The command line as a user runs it: a subprocess, its exit code and its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

from support.paths import REPO_ROOT


def triage(*args: str, env: dict[str, str] | None = None, cwd=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "triage.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=60,
    )


def test_bad_config_value_stops_startup_with_one_line(tmp_path):
    r = triage(
        "serve", env={"TRIAGE_DATA_DIR": str(tmp_path), "TRIAGE_HL7_PORT": "abc"}, cwd=tmp_path
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("triage: error: hl7_port:") and "TRIAGE_HL7_PORT" in lines[0]


def test_bad_rules_file_stops_startup_naming_file_and_line(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "urgency.yaml").write_text((REPO_ROOT / "rules" / "urgency.yaml").read_text())
    (rules / "routing.yaml").write_text("version: 1\nrules:\n  - name: x\n    modle: ich\n")
    r = triage(
        "serve", "--set", f"rules_dir={rules}", "--data-dir", str(tmp_path / "var"), cwd=tmp_path
    )
    assert r.returncode == 2
    assert f"{rules / 'routing.yaml'}:4: unknown key 'modle'" in r.stderr


def test_rules_check_ok():
    r = triage("rules", "check")
    assert r.returncode == 0, r.stderr
    assert "routing rules OK" in r.stdout


def test_config_lists_every_setting_with_its_default(tmp_path):
    r = triage("config", "--dicom-port", "4242", env={"COLUMNS": "250"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "TRIAGE_DICOM_PORT" in r.stdout and "4242" in r.stdout
    assert "TRIAGE_STUDY_STABLE_SECONDS" in r.stdout


def test_unknown_set_key(tmp_path):
    r = triage("config", "--set", "dicom_prot=1", cwd=tmp_path)
    assert r.returncode == 2
    assert "dicom_prot: unknown setting on the command line" in r.stderr
