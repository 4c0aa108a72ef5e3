"""Shared fixtures. Real peers only: dcmtk, the hl7 package's mllp_send, a real Triton."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcmtk(tool: str) -> str:
    """Path of a dcmtk tool. pynetdicom installs its own `storescu` into the venv, so look in
    /usr/bin first to be sure the peer is really dcmtk."""
    for candidate in (f"/usr/bin/{tool}", f"/usr/local/bin/{tool}"):
        if Path(candidate).exists():
            return candidate
    found = shutil.which(tool)
    if not found:
        pytest.fail(f"dcmtk's {tool} is not installed (apt-get install dcmtk; .ci/run does it)")
    return found


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Third-party DICOM and HL7 files (../shared/data, see its README for licences)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA
