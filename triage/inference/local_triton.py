"""Start the Triton Inference Server bundled in the ``nvidia-pytriton`` wheel, on loopback only.

The wheel ships ``pytriton/tritonserver/bin/tritonserver``, the Python backend and one backend
stub per Python version. The Python backend looks for its stub next to ``libtriton_python.so``,
so the backend folder is copied once into ``work_dir/backends/python`` with the stub for the
running interpreter beside it. The stub needs the wheel's bundled shared libraries
(``LD_LIBRARY_PATH``) and imports numpy (and later onnxruntime) from the running interpreter's
environment (``PYTHONPATH``).

The server runs in its own process group; :meth:`LocalTriton.stop` terminates the whole group,
so no ``triton_python_backend_stub`` outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

from triage.errors import TritonUnavailable
from triage.inference.shm import SHM_DIR

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_LOG_TAIL_LINES = 30
_PORT_ATTEMPTS = 3


def _site_packages() -> list[Path]:
    """site-packages folders of the running interpreter (venv first)."""
    seen: list[Path] = []
    for key in ("purelib", "platlib"):
        p = Path(sysconfig.get_paths()[key])
        if p.is_dir() and p not in seen:
            seen.append(p)
    return seen


def pytriton_root() -> Path:
    """Folder of the installed ``pytriton`` package (holds ``tritonserver/``)."""
    for sp in _site_packages():
        if (sp / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
            return sp / "pytriton"
    raise TritonUnavailable(
        f"tritonserver not found: the nvidia-pytriton package is not installed in {sys.prefix}"
    )


def _free_ports(n: int) -> list[int]:
    """n distinct ephemeral ports on 127.0.0.1 that were free a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class LocalTriton:
    """A tritonserver child process serving ``models_dir`` on 127.0.0.1 (ephemeral ports).

    ``start()`` returns the gRPC url ``"127.0.0.1:PORT"``; ``http_url`` is
    ``"127.0.0.1:PORT"`` of the HTTP endpoint. Use as a context manager or call ``stop()``.
    """

    def __init__(
        self,
        models_dir: Path,
        work_dir: Path,
        startup_seconds: float = 90.0,
        ports: tuple[int, int, int] | None = None,
    ) -> None:
        """``ports``: (http, grpc, metrics) to use; None: ephemeral ones, and on a restart the
        previous ones first (so a client's URL stays valid), fresh ones if they are taken."""
        self.models_dir = Path(models_dir).resolve()
        self._ports = ports
        self._last_ports: tuple[int, int, int] | None = None
        self.work_dir = Path(work_dir).resolve()
        self.startup_seconds = float(startup_seconds)
        self.log_path = self.work_dir / "triton.log"
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self.startup_time: float | None = None  # seconds from spawn to ready, last start
        self._proc: subprocess.Popen[bytes] | None = None
        # Name prefix of the Python backend's shared-memory regions of the running server: a
        # server that is killed (or crashes) leaves them in /dev/shm; stop(), the next start()
        # and the stale-server reaper remove them by this prefix.
        self.shm_prefix: str | None = None

    # -- public -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def grpc_url(self) -> str:
        if self.grpc_port is None:
            raise TritonUnavailable("local Triton is not started")
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        if self.http_port is None:
            raise TritonUnavailable("local Triton is not started")
        return f"{HOST}:{self.http_port}"

    @property
    def returncode(self) -> int | None:
        """Exit code of the server process when it has exited by itself; None while running."""
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the server and wait until ``/v2/health/ready``; return the gRPC url.

        Raises :class:`TritonUnavailable` (with the tail of ``work_dir/triton.log``) when the
        server exits early or is not ready within ``startup_seconds``.
        """
        if self.is_running():
            return self.grpc_url
        if not (self.models_dir / "").is_dir():
            raise TritonUnavailable(f"model repository not found: {self.models_dir}")
        root = pytriton_root()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._reap_stale()
        backends = self._prepare_backends(root)
        env = self._environment(root)
        deadline = time.monotonic() + self.startup_seconds
        last_error: TritonUnavailable | None = None
        for attempt in range(_PORT_ATTEMPTS):
            ports = self._ports or (self._last_ports if attempt == 0 else None)
            try:
                return self._spawn_and_wait(root, backends, env, deadline, ports)
            except _PortInUse as exc:  # lost a race for an ephemeral port; pick new ones
                last_error = TritonUnavailable(str(exc))
                if self._ports is not None:
                    break
                log.info("local Triton: port in use, retrying with new ports")
        assert last_error is not None
        raise last_error

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM the server's process group, wait ``grace_seconds``, then SIGKILL it."""
        proc = self._proc
        if proc is None:
            self._remove_shm()  # a server that died by itself left its regions
            return
        self._proc = None
        _kill_group(proc, grace_seconds)
        self._remove_shm()
        with contextlib.suppress(FileNotFoundError):
            self._pid_file.unlink()

    def _remove_shm(self, prefix: str | None = None) -> None:
        """Delete the shared-memory regions named ``prefix``* (default: this server's)."""
        prefix = prefix or self.shm_prefix
        if not prefix:
            return
        for path in SHM_DIR.glob(prefix + "*"):
            with contextlib.suppress(OSError):
                path.unlink()
        if prefix == self.shm_prefix:
            self.shm_prefix = None

    @property
    def _pid_file(self) -> Path:
        return self.work_dir / "tritonserver.pid"

    def _reap_stale(self) -> None:
        """Kill a tritonserver left by an engine that was killed (SIGKILL, power loss of the
        parent only) with this work dir: its pid file survives, and so may the server, or
        the Python-backend stubs of a server that went on its parent-death signal (orphans
        still mapping the old regions): whatever is left of its process group."""
        try:
            fields = self._pid_file.read_text().split()
            pid = int(fields[0])
        except (OSError, ValueError, IndexError):
            return
        stale_prefix = (
            fields[1] if len(fields) > 1 and fields[1].startswith("triage_triton_") else None
        )
        killed = kill_leftovers(pid, self.work_dir)
        if killed:
            log.warning(
                "killed %d process(es) left by the tritonserver of a previous run (pid %d)",
                len(killed),
                pid,
            )
            time.sleep(0.2)  # let the group die before its regions go
        if stale_prefix:
            self._remove_shm(stale_prefix)
        with contextlib.suppress(FileNotFoundError):
            self._pid_file.unlink()

    def __enter__(self) -> LocalTriton:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _prepare_backends(self, root: Path) -> Path:
        """work_dir/backends/python = the wheel's Python backend + the stub for this Python."""
        backends = self.work_dir / "backends"
        target = backends / "python"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = (
            root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
        )
        if not stub.is_file():
            raise TritonUnavailable(f"no Triton Python backend stub for Python {version}: {stub}")
        source = root / "tritonserver" / "backends" / "python"
        wanted = [*(p for p in source.iterdir() if p.is_file()), stub]
        if all(
            (target / p.name).is_file() and (target / p.name).stat().st_size == p.stat().st_size
            for p in wanted
        ):
            return backends
        tmp = backends / f".python.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, tmp / stub.name)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return backends

    def _environment(self, root: Path) -> dict[str, str]:
        env = dict(os.environ)
        libs = root.parent / "nvidia_pytriton.libs"
        ld = [str(libs)] if libs.is_dir() else []
        if env.get("LD_LIBRARY_PATH"):
            ld.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
        py = [str(p) for p in _site_packages()]
        if env.get("PYTHONPATH"):
            py.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(py)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = sys.prefix
        env.pop("PYTHONHOME", None)
        return env

    def _command(self, root: Path, backends: Path) -> list[str]:
        assert self.http_port and self.grpc_port and self.metrics_port
        return [
            *DIE_WITH_PARENT,
            str(root / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={self.models_dir}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--disable-auto-complete-config",
            f"--http-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-address={HOST}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={HOST}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]

    def _spawn_and_wait(
        self,
        root: Path,
        backends: Path,
        env: dict[str, str],
        deadline: float,
        ports: tuple[int, int, int] | None = None,
    ) -> str:
        self.http_port, self.grpc_port, self.metrics_port = ports or _free_ports(3)
        self._remove_shm()  # a previous server of ours that died left its regions
        self.shm_prefix = f"triage_triton_{os.getpid()}_{uuid.uuid4().hex[:12]}_"
        cmd = self._command(root, backends)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.work_dir,
                start_new_session=True,  # own process group: stop() kills the stubs too
            )
        self._proc = proc
        self._pid_file.write_text(f"{proc.pid} {self.shm_prefix}\n")
        url = f"http://{HOST}:{self.http_port}/v2/health/ready"
        delay = 0.02
        while True:
            rc = proc.poll()
            if rc is not None:
                self._proc = None
                _kill_group(proc, 1.0)  # stubs may survive a crashed server
                self._remove_shm()
                tail = _tail(self.log_path)
                if "address already in use" in tail.lower():
                    raise _PortInUse(f"tritonserver could not bind its ports:\n{tail}")
                raise TritonUnavailable(
                    f"tritonserver exited with code {rc} during start-up "
                    f"(log {self.log_path}):\n{tail}"
                )
            if _http_ok(url):
                self.startup_time = time.monotonic() - t0
                self._last_ports = (self.http_port, self.grpc_port, self.metrics_port)
                log.info(
                    "local Triton ready in %.2f s: grpc %s http %s (pid %d)",
                    self.startup_time,
                    self.grpc_url,
                    self.http_url,
                    proc.pid,
                )
                return self.grpc_url
            if time.monotonic() > deadline:
                self.stop()
                raise TritonUnavailable(
                    f"tritonserver not ready after {self.startup_seconds:.0f} s "
                    f"(log {self.log_path}):\n{_tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)


class _PortInUse(TritonUnavailable):
    pass


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# The server is told to stop (SIGTERM) when the thread that started it goes: an engine killed
# with SIGKILL leaves no server behind holding its ports and memory (a restart would also reap
# it through the pid file, but only a restart with the same data directory). util-linux's
# setpriv sets the parent-death signal and execs the server (same pid); without it, nothing.
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
DIE_WITH_PARENT: tuple[str, ...] = (_SETPRIV, "--pdeathsig", "TERM") if _SETPRIV else ()


def leftovers(pgid: int, work_dir: Path) -> list[int]:
    """Live processes of process group ``pgid`` whose command line names ``work_dir`` (a
    tritonserver of ours and its Python-backend stubs, whose path is under it): what a server
    started from ``work_dir`` may have left, and nothing else that reuses the number."""
    marker = str(Path(work_dir).resolve()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def kill_leftovers(pgid: int, work_dir: Path) -> list[int]:
    """SIGKILL the :func:`leftovers` of ``pgid``; the pids signalled."""
    left = leftovers(pgid, work_dir)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return left


def _kill_group(proc: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM the process group of ``proc``, wait, SIGKILL what is left."""
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        log.warning("tritonserver did not stop in %.0f s; killing it", grace_seconds)
    # The server is gone (or ignoring us); kill whatever is left in its group (stubs).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)
