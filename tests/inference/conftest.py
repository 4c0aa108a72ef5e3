"""A real tritonserver (the one bundled in nvidia-pytriton) on 127.0.0.1, once per test module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from triage.inference.local_triton import LocalTriton

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_pids(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (the server and its Python-backend stubs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def model_repo(tmp: Path, *names: str) -> Path:
    """A model repository with a copy of the named models of models/."""
    repo = tmp / "models"
    repo.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(
            MODELS_DIR / name, repo / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return repo


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    server = LocalTriton(MODELS_DIR, tmp_path_factory.mktemp("triton"), startup_seconds=90)
    server.start()
    pid = server.pid
    assert pid is not None
    try:
        yield server
    finally:
        server.stop()
        assert not pid_alive(pid), "tritonserver still running after stop()"
        assert group_pids(pid) == [], "processes of the Triton group outlived stop()"
        assert os.getpgid(0) != pid
