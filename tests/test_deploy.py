"""deploy/: the example configuration stays in sync with the settings and loads; the systemd
unit is one systemd accepts and runs what the README says."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from triage.config import REPO_ROOT, Settings, example_config, load_settings

DEPLOY = REPO_ROOT / "deploy"


def test_example_config_is_current() -> None:
    committed = (DEPLOY / "triage.toml.example").read_text(encoding="utf-8")
    assert committed == example_config(), (
        "deploy/triage.toml.example is stale: "
        "`triage config --example > deploy/triage.toml.example`"
    )


def test_example_config_lists_every_setting_and_loads_to_the_defaults(tmp_path: Path) -> None:
    text = example_config()
    names = list(Settings.model_fields)
    for name in names:
        assert len(re.findall(rf"^# {name} = ", text, flags=re.M)) == 1, name
        assert f"# environment: TRIAGE_{name.upper()}\n" in text
    # Uncommented as a whole, it is a valid file that gives the defaults.
    pattern = re.compile(rf"^# (({'|'.join(names)}) = .*)$", flags=re.M)
    cfg = tmp_path / "triage.toml"
    cfg.write_text(pattern.sub(r"\1", text), encoding="utf-8")
    loaded, defaults = load_settings(cfg, environ={}), Settings()
    for name in names:
        if name in ("models_dir", "rules_dir"):  # described as installation paths
            assert getattr(loaded, name) == Path("/opt/triage") / name.removesuffix("_dir")
        else:
            assert getattr(loaded, name) == getattr(defaults, name), name


def test_config_example_command_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "triage.cli", "config", "--example"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out == example_config()


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "triage.service", encoding="utf-8")
    return unit


def test_unit_runs_the_engine_with_the_site_config() -> None:
    service = _unit()["Service"]
    assert service["ExecStart"] == "/opt/triage/.venv/bin/triage serve"
    assert service["Environment"] == "TRIAGE_CONFIG=/etc/triage/triage.toml"
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    assert service["ReadWritePaths"] == "/var/lib/triage"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "triage.service").read_text(encoding="utf-8")
    # The same unit, pointed at this checkout (verify checks that the program exists).
    text = text.replace("/opt/triage/.venv/bin/triage", str(Path(sys.executable).parent / "triage"))
    text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.M)
    text = text.replace("WorkingDirectory=/opt/triage", f"WorkingDirectory={tmp_path}")
    unit = tmp_path / "triage.service"
    unit.write_text(text, encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    complaints = [line for line in done.stderr.splitlines() if "triage.service" in line]
    assert done.returncode == 0 and not complaints, done.stderr
