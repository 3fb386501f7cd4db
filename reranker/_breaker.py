"""A circuit breaker in front of the VLM: when Gemini keeps failing, stop asking for a while.

Without one, an outage makes every query wait out its retries and deadline before falling back to
the vote: a service under load stacks up slow requests exactly when the VLM cannot help. With one:

    closed     calls go through; `failures` consecutive upstream failures open the circuit
    open       calls fall back at once (reason "circuit open ..."), for `cooldown_s`
    half-open  after the cool-down, one trial call goes through (the others still fall back):
               its success closes the circuit, its failure opens it for another cool-down

Only upstream failures count (quota, 5xx, timeouts, connection errors, deadlines); any reply that
arrived (even a refused or unreadable answer) shows the service is up, and counts as a success. A refused
API key `trip`s the circuit at once: every call with that key would be refused alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)
State = Literal["closed", "open", "half-open"]


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; `probe` when it is the half-open circuit's trial call."""

    probe: bool


@dataclass(frozen=True)
class Transition:
    at: float  # the breaker's clock (time.monotonic by default)
    state: State
    why: str


class CircuitBreaker:
    """Consecutive-failure breaker; thread-safe.

    >>> cb = CircuitBreaker(failures=5, cooldown_s=30)
    >>> permit = cb.acquire()         # a Permit: call, then cb.success(permit) or cb.failure(permit)
    >>> permit                        # else (a str) the reason to fall back with, without calling

    Args:
        failures: consecutive failures that open the circuit; 0 disables the breaker.
        cooldown_s: how long the circuit stays open before a trial call is let through.
        clock: a monotonic clock in seconds (tests pass their own).
    """

    def __init__(self, failures: int = 5, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._tripped: str | None = None  # why `trip` opened it: said in place of the failure count
        self._probe_out = False
        self.rejected = 0  # calls answered "circuit open" without being made
        self.transitions: deque[Transition] = deque(maxlen=256)

    @property
    def state(self) -> State:
        with self._lock:
            if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
                return "half-open"
            return self._state

    def _move(self, state: State, why: str) -> None:
        self._state = state
        self.transitions.append(Transition(self._clock(), state, why))
        log.warning("re-ranker circuit %s: %s", state, why)

    def acquire(self) -> Permit | str:
        """A `Permit` when a call may go ahead (report its end with `success`, `failure` or
        `release`), else the reason it may not, to fall back with."""
        if self.threshold <= 0:
            return Permit(probe=False)
        with self._lock:
            if self._state == "closed":
                return Permit(probe=False)
            if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
                self._move("half-open", "cool-down over: one trial call")
            if self._state == "half-open" and not self._probe_out:
                self._probe_out = True
                return Permit(probe=True)
            self.rejected += 1
            if self._state == "half-open":
                return "circuit open: Gemini has been failing and a trial call is in flight; this one was not made"
            times = "once" if self.threshold == 1 else f"{self.threshold} times in a row"
            why = self._tripped or f"Gemini failed {times}"
            return f"circuit open: {why}; calls resume after a {self.cooldown_s:g} s cool-down"

    def success(self, permit: Permit) -> None:
        with self._lock:
            self._consecutive = 0
            if permit.probe:
                self._probe_out = False
                self._move("closed", "the trial call succeeded")

    def failure(self, permit: Permit, why: str = "") -> None:
        if self.threshold <= 0:
            return
        with self._lock:
            if permit.probe:
                self._open(f"the trial call failed: {why}" if why else "the trial call failed")
            elif self._state == "closed":
                self._consecutive += 1
                if self._consecutive >= self.threshold:
                    self._open(f"{self._consecutive} consecutive failures" + (f", the last: {why}" if why else ""))
            # A call started before the circuit opened and failing now tells nothing new.

    def trip(self, permit: Permit, why: str) -> None:
        """A failure that every call would meet (a refused key): open now, whatever the count, and say `why`."""
        if self.threshold <= 0:
            return
        with self._lock:
            if permit.probe or self._state == "closed":
                self._open(why)
                self._tripped = why

    def release(self, permit: Permit) -> None:
        """The call ended without telling anything about Gemini (e.g. it was cancelled)."""
        if permit.probe:
            with self._lock:
                self._probe_out = False

    def _open(self, why: str) -> None:
        self._tripped = None
        self._probe_out = False
        self._opened_at = self._clock()
        self._move("open", why)
