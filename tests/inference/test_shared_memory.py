"""The input through system shared memory with the real local Triton: used, same answers as
over the network, shared by threads, cleaned up on close, and the fallbacks (server refuses
the region, server lost it)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.paths import MODELS_DIR

from triage.inference import shm
from triage.inference.client import InferenceClient
from triage.inference.local_triton import LocalTriton

from .phantoms import head_ct

pytestmark = pytest.mark.integration

PROTOCOLS = ["grpc", "http"]


def _client(triton: LocalTriton, protocol: str, **kw: Any) -> InferenceClient:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    return InferenceClient(url, protocol, timeout=30, models_dir=MODELS_DIR, **kw)  # type: ignore[arg-type]


def _server_regions(triton: LocalTriton) -> set[str]:
    import tritonclient.grpc as tc

    raw = tc.InferenceServerClient(triton.grpc_url)
    try:
        status = raw.get_system_shared_memory_status(as_json=True)
    finally:
        raw.close()
    return set(status.get("regions", {}))


def _ours_in_dev_shm() -> list[str]:
    return [n for n in os.listdir(shm.SHM_DIR) if n.startswith(f"triage_{os.getpid()}_")]


@pytest.fixture(scope="module")
def volumes() -> list[np.ndarray]:
    return [head_ct(lesion_diameter_mm=20 if i % 2 else None, seed=i) for i in range(6)]


@pytest.fixture(scope="module")
def over_network(triton: LocalTriton, volumes: list[np.ndarray]) -> list[float]:
    with _client(triton, "grpc", shared_memory=False) as c:
        assert not c.uses_shared_memory
        return [c.infer("ich", v).probability for v in volumes]


def test_local_urls() -> None:
    for url in ("127.0.0.1:8001", "localhost:8000", "[::1]:8001", "http://127.0.0.1:8000"):
        assert shm.is_local_url(url), url
    for url in ("10.0.0.5:8001", "triton.hospital.local:8001", "192.0.2.1:8000"):
        assert not shm.is_local_url(url), url
    remote = InferenceClient("192.0.2.1:8001", "grpc")  # no connection is made here
    try:
        assert not remote.uses_shared_memory
    finally:
        remote.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_local_triton_gets_the_input_through_shared_memory(
    triton: LocalTriton, protocol: str, volumes: list[np.ndarray], over_network: list[float]
) -> None:
    before = _server_regions(triton)
    c = _client(triton, protocol)
    try:
        assert c.uses_shared_memory
        answers = [c.infer("ich", v).probability for v in volumes]
        ours = _server_regions(triton) - before
        # one request at a time: one region, registered once and reused
        assert len(ours) == 1 and next(iter(ours)).startswith(f"triage_{os.getpid()}_")
        assert c._shm is not None and c._shm.created == 1
        assert _ours_in_dev_shm() == []  # unlinked once the server mapped it
    finally:
        c.close()
    assert answers == pytest.approx(over_network, abs=1e-6)
    assert _server_regions(triton) == before  # unregistered on close
    assert _ours_in_dev_shm() == []


def test_threads_sharing_one_client_get_a_region_each(
    triton: LocalTriton, volumes: list[np.ndarray], over_network: list[float]
) -> None:
    before = _server_regions(triton)
    results: dict[int, float] = {}
    errors: list[BaseException] = []
    seen: list[int] = []
    c = _client(triton, "grpc")

    def run(k: int) -> None:
        try:
            for _ in range(3):
                i = (k + _) % len(volumes)
                p = c.infer("ich", volumes[i]).probability
                assert abs(p - over_network[i]) < 1e-6, (i, p, over_network[i])
                results[k * 10 + _] = p
                seen.append(len(_server_regions(triton) - before))
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len(results) == 12
        assert c._shm is not None and 1 <= c._shm.created <= 4 and c._shm.regions <= 4
        assert max(seen) <= 4
    finally:
        c.close()
    assert _server_regions(triton) == before
    assert _ours_in_dev_shm() == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_refusing_the_region_falls_back_to_the_network(
    triton: LocalTriton,
    protocol: str,
    volumes: list[np.ndarray],
    over_network: list[float],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regions created where the server cannot open them (as for a Triton in another
    container or host): the real server answers "Unable to open shared memory region"."""
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    before = _server_regions(triton)
    with _client(triton, protocol) as c:
        assert c.uses_shared_memory
        first = c.infer("ich", volumes[0]).probability
        assert not c.uses_shared_memory  # switched off after the refusal, once
        second = c.infer("ich", volumes[1]).probability
    assert [first, second] == pytest.approx(over_network[:2], abs=1e-6)
    assert "sending inputs over the network" in caplog.text
    assert "Unable to open shared memory region" in caplog.text
    assert list(tmp_path.iterdir()) == []  # the refused region was removed
    assert _server_regions(triton) == before


def test_no_shared_memory_here_falls_back_to_the_network(
    triton: LocalTriton,
    volumes: list[np.ndarray],
    over_network: list[float],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path / "missing")
    with _client(triton, "grpc") as c:
        assert c.infer("ich", volumes[0]).probability == pytest.approx(over_network[0], abs=1e-6)
        assert not c.uses_shared_memory


def test_server_that_lost_the_regions_gets_the_request_over_the_network(
    triton: LocalTriton, volumes: list[np.ndarray], over_network: list[float]
) -> None:
    """As after a restart of the server: its registrations are gone. That request goes over
    the network; the next registers a new region."""
    import tritonclient.grpc as tc

    before = _server_regions(triton)
    with _client(triton, "grpc") as c:
        assert c.infer("ich", volumes[0]).probability == pytest.approx(over_network[0], abs=1e-6)
        (lost,) = _server_regions(triton) - before
        raw = tc.InferenceServerClient(triton.grpc_url)
        try:
            deadline = time.monotonic() + 5
            while True:
                try:  # "currently in use" for a moment after the response
                    raw.unregister_system_shared_memory(lost)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
        finally:
            raw.close()
        assert c.infer("ich", volumes[1]).probability == pytest.approx(over_network[1], abs=1e-6)
        assert c.uses_shared_memory and c._shm is not None and c._shm.regions == 0
        assert c.infer("ich", volumes[2]).probability == pytest.approx(over_network[2], abs=1e-6)
        assert c._shm.created == 2 and c._shm.regions == 1
        assert len(_server_regions(triton) - before) == 1
    assert _server_regions(triton) == before
    assert _ours_in_dev_shm() == []
