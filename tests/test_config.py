from __future__ import annotations

import pytest

from triage.config import load_settings
from triage.errors import ConfigError


def test_precedence_defaults_file_env_cli(tmp_path):
    cfg = tmp_path / "triage.toml"
    cfg.write_text("[triage]\ndicom_port = 1111\nhl7_port = 2222\nhttp_port = 3333\n")
    env = {"TRIAGE_HL7_PORT": "4444", "TRIAGE_HTTP_PORT": "5555"}
    s = load_settings(cfg, environ=env, overrides={"http_port": "6666"})
    assert (s.dicom_port, s.hl7_port, s.http_port) == (1111, 4444, 6666)
    assert s.dicom_ae_title == "TRIAGE" and s.study_stable_seconds == 10


def test_defaults_bind_loopback_and_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={})
    assert s.bind_host == "127.0.0.1"
    assert (s.dicom_port, s.hl7_port, s.http_port) == (11112, 2575, 8080)
    assert not s.ris_configured and s.triton_url == ""
    assert s.resolved_database_url.startswith("sqlite:///")


def test_config_path_from_environment(tmp_path):
    cfg = tmp_path / "site.toml"
    cfg.write_text("dicom_ae_title = 'ERTRIAGE'\n")
    s = load_settings(environ={"TRIAGE_CONFIG": str(cfg)})
    assert s.dicom_ae_title == "ERTRIAGE"


@pytest.mark.parametrize(
    ("env", "setting", "fragment"),
    [
        ({"TRIAGE_DICOM_PORT": "abc"}, "dicom_port", "TRIAGE_DICOM_PORT"),
        ({"TRIAGE_HL7_PORT": "70000"}, "hl7_port", "65535"),
        ({"TRIAGE_DICOM_AE_TITLE": "A_TITLE_THAT_IS_TOO_LONG"}, "dicom_ae_title", "1-16"),
        ({"TRIAGE_STUDY_STABLE_SECONDS": "-1"}, "study_stable_seconds", "greater than 0"),
        ({"TRIAGE_LOG_LEVEL": "LOUD"}, "log_level", "LOUD"),
        (
            {"TRIAGE_DICOM_ALLOWED_PEERS": '{"CT1": ["10.0.0.5", "10.0.0.300"]}'},
            "dicom_allowed_peers",
            "CT1: '10.0.0.300' is not an address or network",
        ),
        (
            {"TRIAGE_HL7_ALLOWED_PEERS": '["10.0.0.7", "ris.example"]'},
            "hl7_allowed_peers",
            "'ris.example' is not an address or network",
        ),
    ],
)
def test_bad_values_name_the_setting(env, setting, fragment):
    with pytest.raises(ConfigError) as err:
        load_settings(environ=env)
    assert err.value.setting == setting
    assert str(err.value).startswith(setting + ":") and fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text("dicom_prot = 1\n")
    with pytest.raises(ConfigError, match="dicom_prot: unknown setting"):
        load_settings(cfg, environ={})


def test_broken_toml(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text("dicom_port = \n")
    with pytest.raises(ConfigError, match=r"t\.toml"):
        load_settings(cfg, environ={})


@pytest.mark.parametrize(
    ("text", "setting", "fragment"),
    [
        ("dicom_port = 11113\n[triage]\nhl7_port = 2576\n", "dicom_port", "setting outside"),
        ("[triage]\nhl7_port = 2576\n[other]\nx = 1\n", "other", "table outside"),
    ],
)
def test_a_key_outside_the_triage_table_is_refused_not_ignored(tmp_path, text, setting, fragment):
    """With a [triage] table, a key above it (or another table) used to be silently unread."""
    cfg = tmp_path / "triage.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as err:
        load_settings(cfg, environ={})
    assert err.value.setting == setting and str(cfg) in str(err.value)


@pytest.mark.parametrize(
    ("env", "missing", "given"),
    [
        ({"TRIAGE_RIS_HOST": "ris.local"}, "ris_port", "environment TRIAGE_RIS_HOST"),
        ({"TRIAGE_RIS_PORT": "2575"}, "ris_host", "environment TRIAGE_RIS_PORT"),
    ],
)
def test_half_a_ris_address_stops_start_up(env, missing, given):
    """A RIS host without its port (or the reverse) used to start and send nothing."""
    with pytest.raises(ConfigError, match=given) as err:
        load_settings(environ=env)
    assert err.value.setting == missing
    both = load_settings(environ={"TRIAGE_RIS_HOST": "ris.local", "TRIAGE_RIS_PORT": "2575"})
    assert both.ris_configured
    assert not load_settings(environ={}).ris_configured


def test_a_mistyped_environment_variable_is_named(caplog):
    """TRIAGE_DICOM_PROT=5 was ignored without a word (the default port stayed in force)."""
    with caplog.at_level("WARNING", logger="triage.config"):
        s = load_settings(environ={"TRIAGE_DICOM_PROT": "5", "TRIAGE_CONFIG_X": ""})
    assert s.dicom_port == 11112
    text = caplog.text
    assert "TRIAGE_DICOM_PROT is not a setting" in text and "did you mean TRIAGE_DICOM_PORT" in text
    caplog.clear()
    with caplog.at_level("WARNING", logger="triage.config"):
        load_settings(environ={"TRIAGE_DICOM_PORT": "5"})
    assert caplog.text == ""


def test_allowlists_are_read_stripped_and_the_dicom_one_takes_a_wildcard() -> None:
    s = load_settings(
        environ={
            "TRIAGE_DICOM_ALLOWED_PEERS": '{"CT1": " 10.0.0.5 ", "ANY": ["*"]}',
            "TRIAGE_HL7_ALLOWED_PEERS": '[" 10.0.4.0/24"]',
        }
    )
    assert s.dicom_allowed_peers == {"CT1": ["10.0.0.5"], "ANY": ["*"]}
    assert s.hl7_allowed_peers == ["10.0.4.0/24"]
    with pytest.raises(ConfigError, match="is not an address or network"):
        load_settings(environ={"TRIAGE_HL7_ALLOWED_PEERS": '["*"]'})
