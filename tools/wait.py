"""The one polling wait of the tests and the tools."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """A wait ran out: an AssertionError (a test fails) and a TimeoutError (a tool may catch it)."""


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.05, what: str = "condition") -> T:
    """Call `predicate` every `interval_s` until it returns something truthy, and return that; raise
    WaitTimeout after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)
