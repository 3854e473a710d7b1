"""The hybrid logical clock that timestamps LWW assignments."""

from __future__ import annotations

from collections.abc import Callable


class HybridClock:
    """Timestamps ``max(wall(), highest seen + 1)``: strictly increasing locally and
    greater than every timestamp already delivered here, so an assignment made
    after seeing another always wins over it, whatever the machines' clocks say.

    ``wall`` is handed in (e.g. ``time.time_ns``); without one the clock is a
    pure Lamport clock.
    """

    def __init__(self, wall: Callable[[], int] | None = None, last: int = 0) -> None:
        self._wall = wall
        self.last = last

    def now(self) -> int:
        t = self.last + 1
        if self._wall is not None:
            t = max(t, self._wall())
        self.last = t
        return t

    def observe(self, timestamp: int) -> None:
        if timestamp > self.last:
            self.last = timestamp
