"""Retry with exponential backoff and jitter, and a circuit breaker, for calls to Triton.

- :class:`RetryPolicy`: how often and how long to wait before trying a transient failure again
  (``TritonUnavailable``: server unreachable, UNAVAILABLE, deadline exceeded, connection
  refused). Delays grow ``base * 2**n`` up to ``max_delay``, with "full jitter" (a uniform draw
  in ``[0, delay]``) so that many callers do not retry in step.
- :class:`CircuitBreaker`: after ``failure_threshold`` consecutive transient failures it
  *opens*; while open every call fails at once with ``TritonUnavailable`` (the pipeline then
  lists the study as "AI pending" and retries it later) instead of each study waiting out its
  own timeouts. After ``reset_seconds`` it lets *one* probe call through (*half-open*): success
  closes it, failure opens it again for another ``reset_seconds``.

Only transient (server-level) failures count. A model that answers an error, or a model that
is not loaded, means the server answered: such an error is passed through unchanged, is not
retried, and counts as the server being reachable (it closes the breaker).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from triage.errors import InferenceError, TritonUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all (1: no retry); waits ``base_delay * 2**n`` capped, jittered."""

    attempts: int = 3
    base_delay: float = 0.2
    max_delay: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must be >= 0")

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (0 = the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * (2**retry))
        return ceiling * rng() if self.jitter else ceiling


@dataclass
class CircuitBreaker:
    """Consecutive-failure circuit breaker; thread-safe. ``clock`` is injectable for tests."""

    failure_threshold: int = 5
    reset_seconds: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _state: BreakerState = field(default="closed", init=False)
    _failures: int = field(default=0, init=False)
    _opened_at: float | None = field(default=None, init=False)
    _probe_in_flight: bool = field(default=False, init=False)
    _times_opened: int = field(default=0, init=False)
    _last_error: str = field(default="", init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if self.reset_seconds < 0:
            raise ValueError("reset_seconds must be >= 0")

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    def _current(self) -> BreakerState:
        if (
            self._state == "open"
            and self._opened_at is not None
            and self.clock() - self._opened_at >= self.reset_seconds
        ):
            return "half_open"
        return self._state

    def before_call(self) -> None:
        """Raise TritonUnavailable when the call may not go through now."""
        with self._lock:
            state = self._current()
            if state == "closed":
                return
            if state == "half_open" and not self._probe_in_flight:
                self._state = "half_open"
                self._probe_in_flight = True  # this caller is the probe
                log.info("circuit breaker half-open: probing Triton")
                return
            assert self._opened_at is not None
            wait = max(0.0, self.reset_seconds - (self.clock() - self._opened_at))
        raise TritonUnavailable(
            f"circuit breaker open after {self.failure_threshold} consecutive failures "
            f"(last: {self._last_error or '?'}); next probe in {wait:.1f} s"
        )

    def record_success(self) -> None:
        with self._lock:
            if self._state != "closed":
                log.info("circuit breaker closed: Triton answers again")
            self._state = "closed"
            self._failures = 0
            self._opened_at = None
            self._probe_in_flight = False

    def record_failure(self, error: BaseException | str = "") -> None:
        with self._lock:
            self._failures += 1
            self._last_error = str(error)[:300]
            if self._state == "half_open" or (
                self._state == "closed" and self._failures >= self.failure_threshold
            ):
                if self._state == "closed":
                    self._times_opened += 1
                    log.warning(
                        "circuit breaker open after %d consecutive failures: %s",
                        self._failures,
                        self._last_error,
                    )
                self._state = "open"
                self._opened_at = self.clock()
                self._probe_in_flight = False

    def release_probe(self) -> None:
        """The probe ended without telling success or failure (e.g. a model error)."""
        with self._lock:
            self._probe_in_flight = False

    def reset(self) -> None:
        """Back to closed (e.g. the supervised server was restarted and is ready)."""
        self.record_success()

    def snapshot(self) -> dict[str, Any]:
        """State for /healthz."""
        with self._lock:
            state = self._current()
            out: dict[str, Any] = {
                "state": state,
                "consecutive_failures": self._failures,
                "failure_threshold": self.failure_threshold,
                "reset_seconds": self.reset_seconds,
                "times_opened": self._times_opened,
            }
            if state != "closed":
                assert self._opened_at is not None
                out["open_for_seconds"] = round(self.clock() - self._opened_at, 1)
                out["last_error"] = self._last_error
            return out


def call_with_resilience(
    fn: Callable[[], T],
    *,
    breaker: CircuitBreaker | None,
    retry: RetryPolicy,
    what: str = "call",
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """Run ``fn``; retry ``TritonUnavailable`` per ``retry``; guard every try with ``breaker``.

    Other exceptions pass through at once (a model error is not retried). When the breaker is
    open, or opens during the retries, the call fails fast with ``TritonUnavailable``.
    """
    last: TritonUnavailable | None = None
    for attempt in range(retry.attempts):
        if breaker is not None:
            breaker.before_call()  # raises when open
        try:
            result = fn()
        except TritonUnavailable as exc:
            last = exc
            if breaker is not None:
                breaker.record_failure(exc)
            if attempt + 1 < retry.attempts:
                delay = retry.delay(attempt, rng)
                log.info(
                    "%s: %s; retry %d/%d in %.2f s",
                    what,
                    exc,
                    attempt + 1,
                    retry.attempts - 1,
                    delay,
                )
                sleep(delay)
            continue
        except InferenceError:  # the server answered (model error, model not ready)
            if breaker is not None:
                breaker.record_success()
            raise
        except BaseException:
            if breaker is not None:
                breaker.release_probe()
            raise
        if breaker is not None:
            breaker.record_success()
        return result
    assert last is not None
    raise last
