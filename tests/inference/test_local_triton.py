"""The bundled tritonserver, started for real on loopback with the repository's models."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from support.paths import MODELS_DIR, model_repo
from support.procs import group_pids, pid_alive

from triage.errors import TritonUnavailable
from triage.inference.local_triton import SHM_DIR, LocalTriton, pytriton_root

pytestmark = pytest.mark.integration


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, hexport = parts[1].split(":")
            if int(hexport, 16) == port and parts[3] == "0A":
                found.append(addr)
    return found


def test_server_ready_with_both_models(triton: LocalTriton) -> None:
    host, port = triton.grpc_url.split(":")
    assert host == "127.0.0.1" and int(port) > 1024
    assert triton.http_url.startswith("127.0.0.1:")
    assert triton.startup_time is not None and triton.startup_time < 30
    print(f"\nTriton start-up: {triton.startup_time:.2f} s")
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        assert client.is_server_ready()
        index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        assert index == {"ich": "READY", "pe": "READY"}
    finally:
        client.close()


def test_binds_loopback_only(triton: LocalTriton) -> None:
    for port in (triton.http_port, triton.grpc_port, triton.metrics_port):
        assert port is not None
        addrs = _listening(port)
        assert addrs, f"nothing listens on {port}"
        # 127.0.0.1, or its IPv4-mapped IPv6 form ::ffff:127.0.0.1 (gRPC binds that way)
        loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
        assert set(addrs) <= loopback, f"port {port} listens on {addrs}"


def test_log_and_backend_layout(triton: LocalTriton) -> None:
    assert triton.log_path.is_file()
    text = triton.log_path.read_text()
    assert "MODE_NONE" in text  # --model-control-mode=none
    backend = triton.work_dir / "backends" / "python"
    stub = backend / "triton_python_backend_stub"
    assert stub.is_file() and (backend / "libtriton_python.so").is_file()
    mtime = stub.stat().st_mtime_ns
    triton._prepare_backends(pytriton_root())  # idempotent
    assert stub.stat().st_mtime_ns == mtime
    assert triton.start() == triton.grpc_url  # already running: same server


def _regions(prefix: str) -> list[Path]:
    return sorted(SHM_DIR.glob(prefix + "*"))


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    repo = model_repo(tmp_path, "ich")
    with LocalTriton(repo, tmp_path / "work", 60) as server:
        pid = server.pid
        assert pid is not None and pid_alive(pid)
        stubs = [p for p in group_pids(pid) if p != pid]
        assert stubs, "expected a Python backend stub in the server's process group"
        prefix = server.shm_prefix
        assert prefix and _regions(prefix), "the Python backend's regions carry our prefix"
    assert server.pid is None
    assert _regions(prefix) == []
    assert not pid_alive(pid)
    deadline = time.monotonic() + 5
    while group_pids(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_pids(pid) == []
    server.stop()  # twice is harmless


def test_stubs_exit_when_the_server_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL to the server alone (no chance to stop its stubs): the model's stub notices
    its parent is gone and exits within seconds instead of living on as an orphan."""
    repo = model_repo(tmp_path, "ich")
    server = LocalTriton(repo, tmp_path / "work", 60)
    server.start()
    pid = server.pid
    try:
        assert pid is not None
        stubs = [p for p in group_pids(pid) if p != pid]
        assert stubs
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while any(pid_alive(s) for s in stubs) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(pid_alive(s) for s in stubs)
    finally:
        server.stop()


def test_broken_model_fails_fast_with_log_tail(tmp_path: Path) -> None:
    repo = model_repo(tmp_path, "ich")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(
        (MODELS_DIR / "ich" / "config.pbtxt")
        .read_text()
        .replace('name: "ich"', 'name: "broken"')
        .replace('backend: "python"', 'backend: "no_such_backend"')
    )
    server = LocalTriton(repo, tmp_path / "work", 60)
    t0 = time.monotonic()
    with pytest.raises(TritonUnavailable, match="exited with code") as info:
        server.start()
    assert time.monotonic() - t0 < 30
    assert "broken" in str(info.value)  # the log tail names the failing model
    assert server.pid is None and not server.is_running()


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(TritonUnavailable, match="model repository not found"):
        LocalTriton(tmp_path / "nope", tmp_path / "work", 10).start()


def test_not_ready_in_time_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    repo = model_repo(tmp_path, "ich")
    server = LocalTriton(repo, tmp_path / "work", startup_seconds=0.01)
    with pytest.raises(TritonUnavailable, match="not ready after"):
        server.start()
    assert server.pid is None


def test_start_reaps_a_server_left_by_a_killed_engine(tmp_path: Path) -> None:
    first = LocalTriton(model_repo(tmp_path / "m1", "ich"), tmp_path / "work", startup_seconds=60)
    first.start()
    orphan = first.pid
    assert orphan is not None and pid_alive(orphan)
    first._proc = None  # the engine that started it died without stopping it
    orphan_prefix = first.shm_prefix
    second = LocalTriton(model_repo(tmp_path / "m2"), tmp_path / "work", startup_seconds=60)
    try:
        assert orphan_prefix and _regions(orphan_prefix)
        second.start()
        deadline = time.monotonic() + 10
        while pid_alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(orphan)
        assert second.pid != orphan and second.is_running()
        assert _regions(orphan_prefix) == []  # the killed server's shared memory is gone
        assert second.shm_prefix != orphan_prefix
    finally:
        second.stop()
        if pid_alive(orphan):  # never leave it behind, even when the assertion failed
            os.killpg(orphan, signal.SIGKILL)


def test_start_reaps_stubs_whose_server_is_gone(tmp_path: Path) -> None:
    """A server that exited on its parent-death signal may leave Python-backend stubs of its
    process group behind (orphans, their path under the work dir): the next start kills them,
    and nothing of another group or outside the work dir."""
    import subprocess
    import sys

    work = tmp_path / "work"
    stub = work / "backends" / "python" / "triton_python_backend_stub"
    sleeper = "import sys, time; time.sleep(300)"
    # a leader in its own session that starts a 'stub' and exits, as the server did
    leader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
            f"{sleeper!r}, {str(stub)!r}]); print(p.pid, flush=True)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    orphan = int(leader.stdout.readline())
    leader.wait(10)
    bystander = subprocess.Popen([sys.executable, "-c", sleeper, str(stub)])  # not its group
    try:
        assert pid_alive(orphan) and not pid_alive(leader.pid)
        work.mkdir(parents=True, exist_ok=True)
        (work / "tritonserver.pid").write_text(f"{leader.pid} triage_triton_0_gone_\n")
        LocalTriton(tmp_path / "models", work)._reap_stale()
        deadline = time.monotonic() + 10
        while pid_alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(orphan)
        assert bystander.poll() is None  # same path, another group: left alone
    finally:
        bystander.kill()
        bystander.wait()
        if pid_alive(orphan):
            os.kill(orphan, signal.SIGKILL)


def test_a_server_killed_under_us_leaves_no_shared_memory_after_restart(tmp_path: Path) -> None:
    """SIGKILL skips the Python backend's clean-up: its regions stay in /dev/shm until the
    next start (the engine's supervisor restarts the server) or stop removes them."""
    server = LocalTriton(model_repo(tmp_path, "ich"), tmp_path / "work", startup_seconds=60)
    try:
        server.start()
        pid, first = server.pid, server.shm_prefix
        assert pid is not None and first and _regions(first)
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.returncode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.returncode is not None
        assert _regions(first), "SIGKILL leaves the regions behind"
        server.start()
        assert _regions(first) == [] and server.shm_prefix != first
        second = server.shm_prefix
        assert second
        os.killpg(server.pid or 0, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.returncode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop()  # the server is already dead: stop still removes what it left
        assert _regions(second) == []
    finally:
        server.stop()
