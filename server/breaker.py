"""A circuit breaker for the upstream: stop hammering a registry that fails,
try again after a pause."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from .errors import UpstreamUnavailable

log = logging.getLogger("overlaystore.upstream")


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed → (``threshold`` consecutive failures) → open → (``reset_s``) →
    half-open: one trial; its success closes, its failure re-opens.

    A ``threshold`` below 1 disables the breaker.
    """

    def __init__(self, threshold: int, reset_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._reset_s = reset_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._reset_s:
            return BreakerState.HALF_OPEN
        return self._state

    def acquire(self) -> None:
        """Allow one attempt or raise :class:`UpstreamUnavailable`."""
        if self._state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.HALF_OPEN and not self._trial:
            self._state = BreakerState.HALF_OPEN
            self._trial = True
            return
        wait = max(0.0, self._opened_at + self._reset_s - self._clock())
        raise UpstreamUnavailable(f"upstream circuit breaker is open (next trial in {wait:.0f}s)")

    def success(self) -> None:
        if self._state is not BreakerState.CLOSED:
            log.info("upstream circuit breaker closed")
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._trial = False

    def failure(self) -> None:
        self._failures += 1
        if self._threshold < 1:
            return
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self._threshold
        ):
            if self._state is BreakerState.CLOSED:
                log.warning("upstream circuit breaker opened after %d consecutive failures", self._failures)
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._trial = False
            self.times_opened += 1

    def release(self) -> None:
        """The attempt ended without a verdict (cancelled): free the trial slot."""
        self._trial = False
