"""A thin client for the engine's models on Triton, over ``tritonclient`` (gRPC or HTTP).

Every exception from tritonclient, grpc, gevent or sockets is translated here, where it enters
the engine, into :class:`~triage.errors.TritonUnavailable` (server down, unreachable, timed out:
retry later), :class:`~triage.errors.ModelNotReady` (the named model is unknown or not loaded)
or :class:`~triage.errors.InferenceError` (anything else, e.g. the model answered an error).

Calls that need the server (:meth:`InferenceClient.infer`, a contract read from the server) go
through :func:`~triage.inference.breaker.call_with_resilience`: transient failures
(``TritonUnavailable``) are retried with exponential backoff and jitter, and a circuit breaker
makes calls fail fast while the server is down. Health probes (:meth:`is_server_ready`,
:meth:`model_states`) make one attempt and bypass the breaker: they must say the truth now.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np

from triage.errors import (
    BackendFailed,
    InferenceError,
    ModelNotReady,
    TriageError,
    TritonUnavailable,
)
from triage.inference.breaker import CircuitBreaker, RetryPolicy, call_with_resilience
from triage.inference.contract import (
    PROBABILITY,
    SLICE_PROBABILITIES,
    ModelContract,
    contract_from_config,
    load_contract,
)
from triage.inference.shm import Region, RegisterError, ShmPool, is_local_url

log = logging.getLogger(__name__)

LOCALIZATION_NAMES = ("localization", "localisation", "localization_map", "lesion_map")

T = TypeVar("T")
Protocol = Literal["grpc", "http"]

_UNAVAILABLE_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED")
_UNAVAILABLE_WORDS = (
    "failed to connect",
    "connection refused",
    "connect failed",
    "deadline exceeded",
    "timed out",
    "timeout",
    "socket closed",
    "server is not ready",
    "unavailable",
    "broken pipe",
    "connection reset",
)
_NOT_READY_WORDS = (
    "unknown model",
    "is not found",
    "not found",
    "no available versions",
    "is not ready",
    "not loaded",
    "unavailable model",
)


@dataclass(frozen=True)
class ModelOutput:
    """One model answer for one volume."""

    model_name: str
    model_version: str  # contract version and Triton version, e.g. "ich-synthcnn-1.0/1"
    probability: float
    slice_probabilities: np.ndarray  # float32 [z] on the model grid, inferior -> superior
    threshold: float  # operating point from the model contract
    positive: bool  # probability >= threshold
    key_slice: int  # index (model grid) of the most suspicious slice
    # coarse lesion map in [0, 1] when the model has a localization output: [z', y', x'] or
    # [y', x'] on its own (coarser) grid covering the input volume; None otherwise
    localization: np.ndarray | None = None


def _translate(exc: BaseException, what: str) -> InferenceError:
    """Our error for a library exception raised while doing ``what``."""
    status = ""
    message = str(exc)
    status_fn = getattr(exc, "status", None)
    message_fn = getattr(exc, "message", None)
    if callable(status_fn):
        status = str(status_fn() or "")
    if callable(message_fn):
        message = str(message_fn() or message)
    code_fn = getattr(exc, "code", None)  # grpc.RpcError
    if not status and callable(code_fn):
        try:
            status = str(code_fn())
        except Exception:
            status = ""
    lower = message.lower()
    detail = f"{what}: {message}" + (f" ({status})" if status else "")
    if "stub" in lower and "not healthy" in lower:
        return BackendFailed(detail)
    if any(w in lower for w in _NOT_READY_WORDS) and "connect" not in lower:
        return ModelNotReady(detail)
    if (
        any(s in status.upper() for s in _UNAVAILABLE_STATUS)
        or any(w in lower for w in _UNAVAILABLE_WORDS)
        or isinstance(exc, OSError | TimeoutError)
    ):
        return TritonUnavailable(detail)
    return InferenceError(detail)


class InferenceClient:
    """Calls models on a running Triton at ``url`` ("host:port" of the gRPC or HTTP endpoint).

    ``timeout`` bounds every request in seconds. ``models_dir``, when given, is where
    :meth:`contract` reads ``<model>/config.pbtxt``; otherwise (or when a model has no folder
    there) the contract is read from the server's model config.

    ``shared_memory``: send the input volume through system shared memory (no 4 MiB copy
    through the socket); None (default): when ``url`` is on the loopback (127.0.0.1,
    localhost, ::1), i.e. the bundled Triton or one on this host. When the server refuses to
    register a region (another host or container, no shared memory), the client logs it once
    and sends inputs over the network; when the server lost its registrations (restarted), the
    request is sent over the network and new regions are registered for the next ones.
    ``close()`` unregisters and unmaps the regions.
    """

    def __init__(
        self,
        url: str,
        protocol: Protocol = "grpc",
        timeout: float = 30.0,
        models_dir: Path | None = None,
        *,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], None] = time.sleep,
        shared_memory: bool | None = None,
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
        self.url = url
        self.protocol: Protocol = protocol
        self.timeout = float(timeout)
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.retry = retry if retry is not None else RetryPolicy()
        self.breaker = breaker  # None: no breaker (each call tries)
        self._sleep = sleep
        self._contracts: dict[str, ModelContract] = {}
        # per model, the last "backend process died" answer (BackendFailed), until the model
        # answers again: the supervisor restarts the bundled server on it, /healthz reports it
        self.backend_failures: dict[str, str] = {}
        self._client: Any = None
        try:
            if protocol == "grpc":
                import tritonclient.grpc as tgrpc

                self._client = tgrpc.InferenceServerClient(url)
            else:
                import tritonclient.http as thttp

                self._client = thttp.InferenceServerClient(
                    url, connection_timeout=self.timeout, network_timeout=self.timeout
                )
        except Exception as exc:
            raise _translate(exc, f"cannot create a Triton {protocol} client for {url}") from exc
        if shared_memory is None:
            shared_memory = is_local_url(url)
        self._shm: ShmPool | None = None
        if shared_memory:
            client = self._client
            self._shm = ShmPool(
                lambda name, key, size: client.register_system_shared_memory(
                    name, key, size, **self._kw()
                ),
                lambda name: client.unregister_system_shared_memory(name, **self._kw()),
            )

    # -- plumbing -----------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except TriageError:
            raise
        except Exception as exc:
            raise _translate(exc, f"{what} at {self.url}") from exc

    def _resilient(self, what: str, fn: Callable[[], T]) -> T:
        """``_call`` with retries (transient errors only) behind the circuit breaker."""
        return call_with_resilience(
            lambda: self._call(what, fn),
            breaker=self.breaker,
            retry=self.retry,
            what=what,
            sleep=self._sleep,
        )

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        """Per-call timeout keyword (gRPC only; HTTP's is set on the client): ``timeout``, else
        the client's."""
        if self.protocol != "grpc":
            return {}
        return {"client_timeout": self.timeout if timeout is None else timeout}

    def _json_kw(self, timeout: float | None = None) -> dict[str, Any]:
        """gRPC answers protobuf unless asked for JSON; HTTP answers JSON already."""
        return {"as_json": True, **self._kw(timeout)} if self.protocol == "grpc" else {}

    @property
    def uses_shared_memory(self) -> bool:
        """True while inputs go through system shared memory (False after a refusal)."""
        return self._shm is not None

    def _shm_region(self, nbytes: int) -> tuple[ShmPool, Region] | None:
        """A registered region for one request and its pool, or None: send over the network."""
        pool = self._shm
        if pool is None:
            return None
        try:
            region = pool.acquire(nbytes)
            return (pool, region) if region is not None else None
        except RegisterError as exc:
            err = _translate(exc.__cause__ or exc, "registering system shared memory")
            if isinstance(err, TritonUnavailable):
                return None  # server down or slow: the request itself will say so
            reason = str(err)
        except Exception as exc:  # cannot create it here (no /dev/shm, no space)
            reason = f"creating system shared memory: {exc}"
        log.warning(
            "Triton at %s: %s; sending inputs over the network from now on", self.url, reason
        )
        if self._shm is pool:
            self._shm = None
            pool.close()
        return None

    def close(self) -> None:
        pool, self._shm = self._shm, None
        if pool is not None:
            pool.close()  # needs the client: unregisters the regions from the server
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing must never raise
                log.debug("closing Triton client: %s", exc)

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _c(self) -> Any:
        if self._client is None:
            raise InferenceError("the inference client is closed")
        return self._client

    # -- API ----------------------------------------------------------------------------------

    def is_server_ready(self, timeout: float | None = None) -> bool:
        """True when the server answers and is ready; False when down or unreachable (or no
        answer within ``timeout`` seconds, gRPC; default: the client's)."""
        try:
            return bool(
                self._call("server ready", lambda: self._c.is_server_ready(**self._kw(timeout)))
            )
        except TritonUnavailable:
            return False

    def model_states(self, timeout: float | None = None) -> dict[str, str]:
        """Every model of the server's repository and its state ("READY", "UNAVAILABLE", ...);
        ``timeout`` as for :meth:`is_server_ready`."""
        index = self._call(
            "model repository index",
            lambda: self._c.get_model_repository_index(**self._json_kw(timeout)),
        )
        models = index.get("models", []) if isinstance(index, Mapping) else index
        states: dict[str, str] = {}
        for m in models or []:
            name = str(m.get("name", ""))
            state = str(m.get("state", "") or "UNAVAILABLE")
            if states.get(name) != "READY":  # several versions: READY wins
                states[name] = state
        return states

    def contract(self, model_name: str) -> ModelContract:
        """The model's contract, from ``models_dir/<name>/config.pbtxt`` or the server."""
        cached = self._contracts.get(model_name)
        if cached is not None:
            return cached
        path = self.models_dir / model_name / "config.pbtxt" if self.models_dir else None
        if path is not None and path.is_file():
            contract = load_contract(path)
        else:
            config = self._resilient(
                f"model config of {model_name!r}",
                lambda: self._c.get_model_config(model_name, **self._json_kw()),
            )
            if isinstance(config, Mapping) and isinstance(config.get("config"), Mapping):
                config = config["config"]  # gRPC wraps it in ModelConfigResponse
            contract = contract_from_config(config, f"triton:{self.url}/{model_name}")
        self._contracts[model_name] = contract
        return contract

    def infer(self, model_name: str, volume_array: np.ndarray) -> ModelOutput:
        """Run ``model_name`` on one resampled HU volume shaped as the contract's input."""
        contract = self.contract(model_name)
        volume = np.asarray(volume_array, dtype=np.float32)
        if volume.shape != contract.input.dims:
            raise InferenceError(
                f"{model_name}: volume shape {list(volume.shape)} does not match the "
                f"contract input {list(contract.input.dims)}"
            )
        if not np.isfinite(volume).all():
            raise InferenceError(f"{model_name}: volume contains NaN or infinite values")
        batch = volume[None, ...] if contract.max_batch_size > 0 else volume
        if self.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        t0 = time.monotonic()

        def run() -> Any:
            outs = [
                tc.InferRequestedOutput(PROBABILITY),
                tc.InferRequestedOutput(SLICE_PROBABILITIES),
            ]
            if loc_name:
                outs.append(tc.InferRequestedOutput(loc_name))

            def over_network() -> Any:
                inp = tc.InferInput(contract.input.name, list(batch.shape), "FP32")
                inp.set_data_from_numpy(batch)
                return self._c.infer(model_name, [inp], outputs=outs, **self._kw())

            held = self._shm_region(batch.nbytes)
            if held is None:
                return over_network()
            pool, region = held
            try:
                region.write(batch)
                inp = tc.InferInput(contract.input.name, list(batch.shape), "FP32")
                inp.set_shared_memory(region.name, batch.nbytes)
                try:
                    return self._c.infer(model_name, [inp], outputs=outs, **self._kw())
                except Exception as exc:
                    if "shared memory" not in str(exc).lower():
                        raise
                    # e.g. "Unable to find shared memory region": the server restarted
                    log.info("Triton at %s lost our shared memory regions (%s)", self.url, exc)
                    pool.reset()
                return over_network()
            finally:
                pool.release(region)  # back to the pool, or dropped if it was reset/closed

        loc_name = localization_output(contract)
        try:
            result = self._resilient(f"inference on {model_name!r}", run)
        except BackendFailed as exc:
            self.backend_failures[model_name] = str(exc)
            raise
        self.backend_failures.pop(model_name, None)
        localization: np.ndarray | None = None
        try:
            prob = np.asarray(result.as_numpy(PROBABILITY), dtype=np.float64).reshape(-1)
            slices = np.asarray(result.as_numpy(SLICE_PROBABILITIES), dtype=np.float32).reshape(-1)
            if loc_name:
                raw = result.as_numpy(loc_name)
                if raw is not None:
                    localization = _localization_map(raw, contract.max_batch_size > 0)
            response = result.get_response()
        except Exception as exc:
            raise InferenceError(f"{model_name}: unreadable response: {exc}") from exc
        if prob.size != 1 or not np.isfinite(prob).all() or not 0.0 <= prob[0] <= 1.0:
            raise InferenceError(f"{model_name}: probability output is not one value in [0, 1]")
        expected = contract.output(SLICE_PROBABILITIES).dims[0]
        if slices.size != expected:
            raise InferenceError(
                f"{model_name}: {slices.size} slice probabilities, contract says {expected}"
            )
        triton_version = (
            response.get("model_version", "")
            if isinstance(response, Mapping)
            else getattr(response, "model_version", "")
        )
        version = "/".join(v for v in (contract.version, str(triton_version)) if v)
        probability = float(prob[0])
        log.debug("%s answered in %.3f s: p=%.3f", model_name, time.monotonic() - t0, probability)
        return ModelOutput(
            model_name=model_name,
            model_version=version,
            probability=probability,
            slice_probabilities=slices,
            threshold=contract.threshold,
            positive=probability >= contract.threshold,
            key_slice=int(np.argmax(slices)),
            localization=localization,
        )

    def warm_up(self, models: list[str] | tuple[str, ...]) -> dict[str, float]:
        """One inference per model on a synthetic air-and-water volume; seconds per model.

        The first request to a model pays for lazy initialisation (session creation, memory
        pools); doing it at start keeps that out of the first study's latency. A model that
        fails raises (the caller decides; the engine logs it and keeps going).
        """
        timings: dict[str, float] = {}
        for name in models:
            shape = self.contract(name).input_shape
            volume = np.full(shape, -1000.0, dtype=np.float32)  # air
            _z, y, x = shape
            volume[:, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = 0.0  # a block of water
            t0 = time.monotonic()
            self.infer(name, volume)
            timings[name] = time.monotonic() - t0
        return timings


def localization_output(contract: ModelContract) -> str:
    """The name of the model's localization output, or "" when it has none."""
    for spec in contract.outputs:
        if spec.name.lower() in LOCALIZATION_NAMES:
            return spec.name
    return ""


def _localization_map(raw: np.ndarray, batched: bool) -> np.ndarray | None:
    """The coarse lesion map of one study, float32 in [0, 1], 2-D or 3-D; None if unusable."""
    arr = np.asarray(raw, dtype=np.float32)
    if batched and arr.ndim >= 3 and arr.shape[0] == 1:
        arr = arr[0]
    while arr.ndim > 3 and arr.shape[0] == 1:  # e.g. a channel axis
        arr = arr[0]
    if arr.ndim not in (2, 3) or arr.size == 0 or not np.isfinite(arr).all():
        log.warning("ignoring a localization output shaped %s", list(np.shape(raw)))
        return None
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:  # logits or scores: bring to [0, 1] for display only
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr
