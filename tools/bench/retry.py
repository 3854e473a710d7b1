"""Running a measurement again when something outside it disturbed it, and
retrying a clean-up on the broker while the broker is away."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TypeVar

#: Attempts of a measurement before its failure is reported.
ATTEMPTS = 3

T = TypeVar("T")


class Disturbed(Exception):
    """The measurement was disturbed (the broker, a service, a replica that had to
    reconnect): its numbers are not to be trusted, so it is run again."""


def with_retries(what: str, progress: Callable[[str], None], fn: Callable[[int], T], *,
                 attempts: int = ATTEMPTS, pause_s: float = 0.0, retrying: str = "retrying",
                 verbose: bool = False) -> T:
    """``fn(attempt)`` for attempt 1, 2, ... until one returns (its value is
    returned) or ``attempts`` have raised an :class:`Exception` (the last is
    re-raised). ``fn`` must start from scratch each time (new names on the broker).

    Every failed attempt is said on ``progress``: ``what``, the attempt, the
    exception's type and the last line of its message (``verbose``: all of it, and
    the traceback unless it is :class:`Disturbed`), then ``retrying`` before the
    next attempt, which starts ``pause_s`` seconds later."""
    for attempt in range(1, attempts + 1):
        try:
            return fn(attempt)
        except Exception as e:
            last = attempt == attempts
            detail = str(e).strip()
            if not verbose and detail:
                detail = detail.splitlines()[-1]
            progress(f"{what}: attempt {attempt} of {attempts} failed "
                     f"({type(e).__name__}: {detail})" + ("" if last else f"; {retrying}"))
            if verbose and not isinstance(e, Disturbed):
                progress(traceback.format_exc())
            if last:
                raise
            time.sleep(pause_s)
    raise ValueError(f"attempts must be at least 1, got {attempts}")


async def retry_cleanup(what: str, progress: Callable[[str], None],
                        fn: Callable[[], Awaitable[None]], *, tries: int = 6,
                        pause_s: float = 2.0, gave_up: str | None = None) -> None:
    """Await ``fn()`` (a clean-up on the broker) until it returns, at most ``tries``
    times, ``pause_s`` seconds apart, saying each failure on ``progress``. Never
    raises an :class:`Exception`: if every try failed it says ``gave_up`` (default:
    that ``what`` is left to clean up by hand) and returns."""
    for attempt in range(tries):
        try:
            await fn()
            return
        except Exception as e:
            progress(f"{what} failed ({type(e).__name__}: {e}); "
                     f"retrying ({attempt + 1}/{tries})")
            await asyncio.sleep(pause_s)
    progress(gave_up or f"could not finish: {what}; clean up by hand")
