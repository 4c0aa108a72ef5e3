"""Where received instances are stored: the UID grammar, safe paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from triage.ingest import dicom_paths
from triage.ingest.dicom_paths import is_valid_uid, safe_instance_path


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("0", True),
        ("1." + "2" * 62, True),
        ("1." + "2" * 63, False),  # 65 characters
        ("1.02.3", False),  # leading zero
        ("1..2", False),
        ("", False),
        ("..", False),
        ("1.2.3 ", False),
        ("1.2.a", False),
    ],
)
def test_uid_grammar(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


def test_safe_path_layout_for_valid_uids(tmp_path: Path) -> None:
    p = safe_instance_path(tmp_path, "1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert p == tmp_path / "dicom" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "..",
        ".",
        "/etc/passwd",
        "1.2/../../x",
        "1.2\\..\\..\\x",
        "1.2.3\x00/../x",
        "1." * 300,
        "x" * 5000,
        "",
        "1.2.3\n",
    ],
)
def test_safe_path_never_escapes(tmp_path: Path, bad: str) -> None:
    data_dir = tmp_path / "data"
    for uids in [(bad, "1.2", "1.3"), ("1.2", bad, "1.3"), ("1.2", "1.3", bad), (bad, bad, bad)]:
        p = safe_instance_path(data_dir, *uids)
        assert p.resolve().is_relative_to((data_dir / "dicom").resolve())
        assert len(p.relative_to(data_dir).parts) == 4
        assert all(len(part) <= 68 for part in p.parts)
        assert "\x00" not in str(p) and ".." not in p.parts
        assert p.suffix == ".dcm"


def test_safe_path_is_deterministic_and_distinct(tmp_path: Path) -> None:
    a = safe_instance_path(tmp_path, "../a", "1.2", "1.3")
    assert a == safe_instance_path(tmp_path, "../a", "1.2", "1.3")
    assert a != safe_instance_path(tmp_path, "../b", "1.2", "1.3")
    assert a != safe_instance_path(tmp_path, "1.2", "1.2", "1.3")


# --------------------------------------------------------------------------- encoding


def test_odd_and_non_uid_files_are_not_valid_paths() -> None:
    assert not os.path.isabs(str(dicom_paths._path_component("/etc/passwd")))


# --------------------------------------------------------------------------- raw-header index
