"""Circuit breaker and retry policy, with a fake clock and no sleeping; and the client's use of
them against fake tritonclient failures (no server needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support.paths import MODELS_DIR

from triage.errors import InferenceError, ModelNotReady, TritonUnavailable
from triage.inference.breaker import CircuitBreaker, RetryPolicy, call_with_resilience
from triage.inference.client import InferenceClient
from triage.inference.contract import load_contract


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def failing(times: int, exc: Exception, then: Any = "ok") -> Any:
    calls = {"n": 0}

    def fn() -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc
        return then

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


# -- breaker ------------------------------------------------------------------------------------


def test_opens_after_n_consecutive_failures_and_fails_fast() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, reset_seconds=10, clock=clock)
    for _ in range(2):
        b.before_call()
        b.record_failure("boom")
    assert b.state == "closed"
    b.before_call()
    b.record_failure(TritonUnavailable("connection refused"))
    assert b.state == "open"
    with pytest.raises(TritonUnavailable, match=r"circuit breaker open.*connection refused"):
        b.before_call()
    snap = b.snapshot()
    assert snap["state"] == "open" and snap["times_opened"] == 1
    assert snap["consecutive_failures"] == 3 and "connection refused" in snap["last_error"]


def test_success_resets_the_count() -> None:
    b = CircuitBreaker(failure_threshold=2, reset_seconds=10, clock=Clock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"


def test_half_open_lets_one_probe_through_then_closes_on_success() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_seconds=5, clock=clock)
    b.record_failure()
    clock.now += 4.9
    with pytest.raises(TritonUnavailable):
        b.before_call()
    clock.now += 0.2
    assert b.state == "half_open"
    b.before_call()  # the probe
    with pytest.raises(TritonUnavailable):
        b.before_call()  # a second caller while the probe is in flight
    b.record_success()
    assert b.state == "closed"
    b.before_call()


def test_failed_probe_reopens_for_another_cool_down() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=2, reset_seconds=5, clock=clock)
    b.record_failure()
    b.record_failure()
    clock.now += 6
    b.before_call()
    b.record_failure("still down")
    assert b.state == "open"
    clock.now += 4
    with pytest.raises(TritonUnavailable):
        b.before_call()
    clock.now += 1.1
    assert b.state == "half_open"


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# -- retry ----------------------------------------------------------------------------------------


def test_backoff_is_exponential_capped_and_jittered() -> None:
    p = RetryPolicy(attempts=6, base_delay=0.5, max_delay=3.0, jitter=False)
    assert [p.delay(i) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    j = RetryPolicy(attempts=6, base_delay=0.5, max_delay=3.0)
    assert j.delay(2, rng=lambda: 0.25) == 0.5
    draws = {j.delay(1) for _ in range(50)}
    assert len(draws) > 1 and all(0 <= d <= 1.0 for d in draws)


def test_transient_errors_are_retried_then_succeed() -> None:
    sleeps: list[float] = []
    fn = failing(2, TritonUnavailable("UNAVAILABLE"))
    out = call_with_resilience(
        fn, breaker=None, retry=RetryPolicy(3, 0.1, 1.0, jitter=False), sleep=sleeps.append
    )
    assert out == "ok" and fn.calls["n"] == 3 and sleeps == [0.1, 0.2]


def test_retries_give_up_with_the_last_error() -> None:
    sleeps: list[float] = []
    fn = failing(5, TritonUnavailable("deadline exceeded"))
    with pytest.raises(TritonUnavailable, match="deadline"):
        call_with_resilience(fn, breaker=None, retry=RetryPolicy(3), sleep=sleeps.append)
    assert fn.calls["n"] == 3 and len(sleeps) == 2


@pytest.mark.parametrize("exc", [ModelNotReady("unknown model"), InferenceError("model failed")])
def test_answers_from_the_server_are_not_retried_and_close_the_breaker(exc: Exception) -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=5, reset_seconds=1, clock=clock)
    b.record_failure()
    fn = failing(9, exc)
    with pytest.raises(type(exc)):
        call_with_resilience(fn, breaker=b, retry=RetryPolicy(3), sleep=lambda _s: None)
    assert fn.calls["n"] == 1
    assert b.snapshot()["consecutive_failures"] == 0


def test_breaker_opening_during_retries_stops_them() -> None:
    b = CircuitBreaker(failure_threshold=2, reset_seconds=60, clock=Clock())
    fn = failing(9, TritonUnavailable("connection refused"))
    with pytest.raises(TritonUnavailable, match="circuit breaker open"):
        call_with_resilience(fn, breaker=b, retry=RetryPolicy(5), sleep=lambda _s: None)
    assert fn.calls["n"] == 2  # the third try was refused by the open breaker
    fn2 = failing(0, TritonUnavailable("x"))
    with pytest.raises(TritonUnavailable, match="circuit breaker open"):
        call_with_resilience(fn2, breaker=b, retry=RetryPolicy(5), sleep=lambda _s: None)
    assert fn2.calls["n"] == 0  # fail fast: the server is not even tried


# -- the client with fake tritonclient failures ---------------------------------------------------


class FakeRpcError(Exception):
    """Looks like tritonclient's InferenceServerException (status() and message())."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self._status, self._message = status, message

    def status(self) -> str:
        return self._status

    def message(self) -> str:
        return self._message


class FakeResult:
    def __init__(self, p: float) -> None:
        self.p = p

    def as_numpy(self, name: str) -> np.ndarray | None:
        if name == "probability":
            return np.array([[self.p]], np.float32)
        if name == "slice_probabilities":
            s = np.zeros((1, 64), np.float32)
            s[0, 40] = self.p
            return s
        return None

    def get_response(self) -> dict[str, str]:
        return {"model_version": "1"}


class FakeTriton:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.calls = 0

    def infer(self, *_a: Any, **_kw: Any) -> FakeResult:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return FakeResult(0.9)

    def close(self) -> None:
        pass


def _client(fake: FakeTriton, breaker: CircuitBreaker | None = None) -> InferenceClient:
    c = InferenceClient(
        "127.0.0.1:1",
        "grpc",
        timeout=1,
        models_dir=MODELS_DIR,
        retry=RetryPolicy(3, 0.01, 0.02),
        breaker=breaker,
        sleep=lambda _s: None,
    )
    c._client = fake
    return c


VOLUME = np.zeros((64, 128, 128), np.float32)


@pytest.mark.parametrize(
    "error",
    [
        FakeRpcError("StatusCode.UNAVAILABLE", "failed to connect to all addresses"),
        FakeRpcError("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_client_retries_transient_errors(error: Exception) -> None:
    fake = FakeTriton([error, error])
    out = _client(fake).infer("ich", VOLUME)
    assert fake.calls == 3 and out.probability == pytest.approx(0.9)
    assert out.model_version == f"{load_contract(MODELS_DIR / 'ich' / 'config.pbtxt').version}/1"
    assert out.key_slice == 40


def test_client_does_not_retry_a_model_error() -> None:
    fake = FakeTriton([FakeRpcError("StatusCode.INTERNAL", "model raised ValueError")])
    with pytest.raises(InferenceError, match="ValueError") as info:
        _client(fake).infer("ich", VOLUME)
    assert not isinstance(info.value, TritonUnavailable) and fake.calls == 1


def test_client_breaker_fails_fast_after_repeated_outage() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_seconds=60)
    down = FakeRpcError("StatusCode.UNAVAILABLE", "connection refused")
    fake = FakeTriton([down] * 100)
    c = _client(fake, breaker)
    with pytest.raises(TritonUnavailable):
        c.infer("ich", VOLUME)
    assert fake.calls == 3 and breaker.state == "open"
    with pytest.raises(TritonUnavailable, match="circuit breaker open"):
        c.infer("ich", VOLUME)
    assert fake.calls == 3  # not tried again while open
