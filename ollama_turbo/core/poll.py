"""The one wait loop: call something until it gives an answer, out of time, or out of tries."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(attempt: Callable[[], T | None], *, interval: float, timeout: float | None = None,
          tries: int | None = None) -> T | None:
    """Call ``attempt`` every ``interval`` seconds until it returns something other than None.

    Gives up (returning None) after ``timeout`` seconds or ``tries`` calls, whichever comes
    first; ``attempt`` is always called at least once. Errors it should survive are its own to
    catch: what it raises ends the wait.
    """
    if timeout is None and tries is None:
        raise ValueError("poll.until needs a timeout or a number of tries")
    deadline = time.monotonic() + timeout if timeout is not None else None
    n = 0
    while True:
        value = attempt()
        n += 1
        if value is not None:
            return value
        if tries is not None and n >= tries:
            return None
        if deadline is not None and time.monotonic() + interval > deadline:
            return None
        time.sleep(interval)
