"""Ctrl-C held back while a heavy import runs, and raised once it is whole."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def interrupt_after() -> Iterator[None]:
    """Run the block with SIGINT (Ctrl-C, a notebook's "interrupt the kernel") held back, raising the
    KeyboardInterrupt once it ends.

    Python's import of torch, interrupted halfway, leaves half-made modules behind (sys.modules keeps the parts that
    finished), and every later import of it in that process fails: a notebook's kernel had to be restarted. Only
    where Ctrl-C raises KeyboardInterrupt (Python's own handler, as in a notebook's cell) in the main thread: a
    handler of the caller's own, or another thread, is left as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    asked: list[FrameType | None] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        asked.append(frame)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if asked:
        raise KeyboardInterrupt
