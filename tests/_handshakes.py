"""Threads that meet at a lock, told by events rather than sleeps: a test holds one party at a contested point and
waits until the other has reached the lock (or has ended without waiting for it, which the test then reports).

A sleep only widens a race window: when the machine is slow the second party has not yet come to the lock when the
first lets go, and the test passes without the ordering it was written for. Here the test knows it did.

    waits = Waits()
    monkeypatch.setattr(memory, "_edit_lock", waits.watch(memory._edit_lock))
    forget = waits.start(memory.forget, ids=[point])
    assert waits.blocked(forget) is memory._edit_lock  # waiting for the lock the held party has
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class WatchedLock:
    """Stands in for a `threading.Lock` or `RLock` (with, acquire, release, locked), and tells its `Waits` when a
    thread finds it held and waits for it."""

    def __init__(self, lock: Any, waits: Waits) -> None:
        self._lock = lock
        self._waits = waits

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        self._waits._waiting(self)
        try:
            return self._lock.acquire(timeout=timeout)
        finally:
            self._waits._waiting(None)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Waits:
    """Which started thread waits for which watched lock, and which have ended."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._on: dict[int, WatchedLock] = {}  # thread ident -> the lock it waits for
        self._ended: set[int] = set()

    def watch(self, lock: Any) -> WatchedLock:
        return WatchedLock(lock, self)

    def start(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
        """`target(*args, **kwargs)` in a thread of its own, whose end is told (an error in it as a thread's is)."""

        def run() -> None:
            try:
                target(*args, **kwargs)
            finally:
                with self._changed:
                    self._ended.add(threading.get_ident())
                    self._changed.notify_all()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def blocked(self, thread: threading.Thread, timeout: float = 30) -> WatchedLock | None:
        """The watched lock `thread` (from `start`) waits for, once it waits for one; None where it ended first (or
        did neither within `timeout`)."""
        with self._changed:
            self._changed.wait_for(lambda: thread.ident in self._on or thread.ident in self._ended, timeout)
            return self._on.get(thread.ident or 0)

    def _waiting(self, lock: WatchedLock | None) -> None:
        with self._changed:
            if lock is None:
                self._on.pop(threading.get_ident(), None)
            else:
                self._on[threading.get_ident()] = lock
            self._changed.notify_all()
