"""The command line as a user runs it: a subprocess, its exit code and its one-line errors."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time

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


def _serve_args(data_dir, *more: str) -> list[str]:
    from support.net import free_port

    return [
        "serve",
        "--data-dir",
        str(data_dir),
        "--dicom-port",
        "0",
        "--hl7-port",
        "0",
        "--http-port",
        "0",
        "--triton-url",
        f"127.0.0.1:{free_port()}",  # nothing there: no Triton is started
        "--set",
        "triton_warmup=false",
        *more,
    ]


def test_unusable_data_dir_stops_startup_with_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    r = triage(*_serve_args(afile / "var"), cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("triage: error: data_dir: cannot create") and "Traceback" not in r.stderr


def test_busy_hl7_port_names_the_setting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        args = _serve_args(tmp_path / "var")
        args[args.index("--hl7-port") + 1] = str(port)
        r = triage(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"triage: error: hl7_port: cannot listen on 127.0.0.1:{port}: " + os.strerror(
        errno.EADDRINUSE
    )
    assert "Traceback" not in r.stderr


def test_a_second_engine_on_the_same_data_dir_is_refused(tmp_path):
    """It would share the first one's database and files, and remove its endpoints.json when
    it stopped (so that `triage status` lost the running engine)."""
    data = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    first = subprocess.Popen(
        [sys.executable, "-m", "triage.cli", *_serve_args(data)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (data / "endpoints.json").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        r = triage(*_serve_args(data), cwd=tmp_path)
        assert r.returncode == 2
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"triage: error: data_dir: another engine (pid {first.pid})")
        assert (data / "endpoints.json").exists()  # the running engine's, left alone
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)
    # the lock goes with the engine: a new one starts on the directory
    assert not (data / "endpoints.json").exists()
    from triage.datadir import claim

    claim(data).release()
