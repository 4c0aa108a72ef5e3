"""Shared-memory regions left by a killed engine (triage.inference.shm.reap_dead)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from triage.inference.shm import REGION_NAME, ShmPool, reap_dead


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_regions_of_dead_processes_are_removed_the_rest_kept(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    names = {
        f"triage_{dead}_0123abcd_1": False,  # its process is gone: removed
        f"triage_{alive}_0123abcd_1": True,  # a live engine's: kept
        f"triage_triton_{dead}_0123abcd_1": True,  # the bundled Triton's own naming: not ours
        "other_file": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert reap_dead(tmp_path) == 1
    assert {p.name for p in tmp_path.iterdir()} == {n for n, keep in names.items() if keep}
    assert reap_dead(tmp_path / "missing") == 0


def test_a_pools_regions_are_named_as_the_reaper_reads_them() -> None:
    """The name a pool gives its regions and the pattern reap_dead() removes are one format;
    the owner's PID is the one the reaper checks."""
    registered: list[str] = []
    pool = ShmPool(lambda name, key, size: registered.append(key), lambda name: None)
    region = pool.acquire(4096)
    assert region is not None
    try:
        m = REGION_NAME.fullmatch(region.name)
        assert m is not None and int(m.group(1)) == os.getpid()
    finally:
        pool.release(region)
        pool.close()


def test_a_gone_engines_triton_regions_are_removed_unless_a_server_names_them(
    tmp_path: Path,
) -> None:
    """A bundled Triton killed outright after its engine (a test's teardown, out of memory)
    left its Python backend's regions in /dev/shm; they are removed - but never those of a
    server still running under their prefix."""
    dead = _dead_pid()
    gone = f"triage_triton_{dead}_0123456789ab_"
    running = f"triage_triton_{dead}_ba9876543210_"
    server = subprocess.Popen(  # stands for a tritonserver started with that prefix
        [sys.executable, "-c", "import time; time.sleep(60)", f"shm-region-prefix-name={running}"]
    )
    try:
        # until the child has exec'd, its /proc cmdline is still this process's (a fresh-clone
        # CI run reaped the "running" region in that window)
        cmdline = Path(f"/proc/{server.pid}/cmdline")
        deadline = time.monotonic() + 30
        while running.encode() not in cmdline.read_bytes():
            assert time.monotonic() < deadline, "the stand-in server did not start"
            time.sleep(0.01)
        for name in (f"{gone}96e58ad8-7bbd", f"{gone}a861e16b-6cd1", f"{running}0001"):
            (tmp_path / name).write_bytes(b"x")
        assert reap_dead(tmp_path) == 2
        assert {p.name for p in tmp_path.iterdir()} == {f"{running}0001"}
    finally:
        server.kill()
        server.wait()
