"""Shared fixtures. Real peers only: dcmtk, the hl7 package's mllp_send, a real Triton. What the
tests share that is not a fixture is in tests/support (``from support.<module> import ...``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.paths import REPO_ROOT, SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Third-party DICOM and HL7 files (../shared/data, see its README for licences)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA
