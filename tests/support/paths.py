"""Where things are: the repository, its model repository (and copies of it), the shared
third-party test data."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def model_repo(tmp: Path, *names: str) -> Path:
    """A model repository in ``tmp`` with a copy of the named models of models/."""
    repo = tmp / "models"
    repo.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(
            MODELS_DIR / name, repo / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return repo
