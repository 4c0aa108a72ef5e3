"""A real tritonserver (the one bundled in nvidia-pytriton) on 127.0.0.1, once per test module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support.paths import MODELS_DIR
from support.procs import group_pids, pid_alive

from triage.inference.local_triton import LocalTriton


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
