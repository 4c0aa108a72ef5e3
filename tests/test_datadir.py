"""The data directory: made, checked and held by one engine (triage.datadir)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from triage.datadir import LOCK_NAME, claim
from triage.errors import ConfigError


def test_claim_makes_the_directory_and_holds_it_until_released(tmp_path: Path) -> None:
    data = tmp_path / "a" / "var"
    lock = claim(data)
    assert data.is_dir() and lock.held
    assert (data / LOCK_NAME).read_text().split() == [str(os.getpid())]
    with pytest.raises(ConfigError, match=rf"another engine \(pid {os.getpid()}\)") as err:
        claim(data)
    assert err.value.setting == "data_dir"
    lock.release()
    lock.release()  # idempotent
    assert not lock.held
    claim(data).release()  # free again


def test_a_file_where_the_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match="cannot create"):
        claim(tmp_path / "afile" / "var")
    with pytest.raises(ConfigError, match=r"is not a directory|cannot create"):
        claim(tmp_path / "afile")
