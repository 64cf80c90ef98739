"""Ctrl-C that is never lost.

Python turns SIGINT into ``KeyboardInterrupt`` at the next bytecode of the main thread. When that bytecode is
in a weakref callback or a ``__del__`` (run by a deallocation or a garbage collection the test run triggered),
the exception is "ignored": printed as an unraisable-exception warning, and the run goes on to exit 0 as if the
key had never been pressed (seen: 20 of 20 scenarios "passed" after Ctrl-C at the second). ``InterruptGuard``
remembers that SIGINT arrived and raises ``KeyboardInterrupt`` again where it cannot be swallowed: before each
item and while an item waits for its conversation.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class InterruptGuard:
    """Wraps Python's default SIGINT handler (only that one: a handler someone else installed is left alone)."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread() \
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return
        self._previous = signal.default_int_handler
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pressed = True
        signal.default_int_handler(signum, frame)

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if SIGINT arrived since the last check (once per press)."""
        if self.pressed:
            self.pressed = False
            raise KeyboardInterrupt

    def uninstall(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None
