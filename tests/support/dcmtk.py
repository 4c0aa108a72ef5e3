"""dcmtk's tools as real DICOM peers: where they are, storescu and echoscu run to the end, and
storescu followed response by response (:class:`StoreSCU`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


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


def _peer(
    tool: str, host: str, port: int, aet: str | None, aec: str, options: Sequence[str]
) -> list[str]:
    return [dcmtk(tool), *options, *(["-aet", aet] if aet else []), "-aec", aec, host, str(port)]


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    host: str = "127.0.0.1",
    aet: str | None = None,
    aec: str = "TRIAGE",
    options: Sequence[str] = (),
    timeout: float = 120,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """storescu sends ``files`` on one association (calling AE ``aet``, storescu's own when
    None); its output captured. ``check``: raise when it fails."""
    return subprocess.run(
        [*_peer("storescu", host, port, aet, aec, options), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def echoscu(
    port: int,
    *,
    host: str = "127.0.0.1",
    aet: str | None = None,
    aec: str = "TRIAGE",
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """echoscu (C-ECHO) against ``host:port``; its output captured."""
    return subprocess.run(
        _peer("echoscu", host, port, aet, aec, ()),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class StoreSCU:
    """dcmtk's storescu sending ``files`` on one association, followed line by line: which file
    each response answered, and its status text (``Success``, ``Refused: OutOfResources``...).
    ``on_response(file, status)`` is called for each response; ``halt=False``: go on after a
    failure status (storescu stops at the first one by default)."""

    def __init__(
        self,
        port: int,
        files: Sequence[Path],
        *,
        aet: str = "MODALITY",
        on_response: Callable[[Path, str], None] | None = None,
        halt: bool = True,
    ) -> None:
        self.responses: list[tuple[Path, str]] = []
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [dcmtk("storescu"), "-v", "-aet", aet, "-aec", "TRIAGE"]
            + ([] if halt else ["--no-halt"])
            + ["127.0.0.1", str(port), *map(str, files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        )
        self._on_response = on_response
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        current: Path | None = None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if "Sending file:" in line:
                current = Path(line.split("Sending file:", 1)[1].strip())
                continue
            m = _RESPONSE.search(line)
            if m and current is not None:
                self.responses.append((current, m.group(1)))
                if self._on_response is not None:
                    self._on_response(current, m.group(1))

    def wait(self, timeout: float = 120) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def succeeded(self) -> list[Path]:
        return [f for f, status in self.responses if status == "Success"]


def store(port: int, files: Sequence[Path], timeout: float = 120, halt: bool = True) -> StoreSCU:
    """Send ``files`` on one association, followed (:class:`StoreSCU`), and wait for storescu
    to finish."""
    scu = StoreSCU(port, files, halt=halt)
    scu.wait(timeout)
    return scu
