"""The hybrid logical clock that timestamps LWW assignments."""

from __future__ import annotations

from collections.abc import Callable

#: The greatest timestamp a replica may write or accept: the int64 range, so that every
#: reader of the wire format (which carries it as uint64) holds it in a signed 64-bit
#: integer. Nanoseconds since the epoch reach it in the year 2262. A replica refuses to
#: make a larger one (:meth:`HybridClock.now`) and refuses a message that holds one
#: (``bad-timestamp``), so no replica's outgoing messages can fail to encode because of
#: a timestamp it was sent.
MAX_TIMESTAMP = 2**63 - 1


class HybridClock:
    """Timestamps ``max(wall(), highest seen + 1)``: strictly increasing locally and
    greater than every timestamp already delivered here, so an assignment made
    after seeing another always wins over it, whatever the machines' clocks say.

    ``wall`` is handed in (e.g. ``time.time_ns``: an int, ns since the epoch); without
    one the clock is a pure Lamport clock. Timestamps are ints from 1 to
    :data:`MAX_TIMESTAMP`.
    """

    def __init__(self, wall: Callable[[], int] | None = None, last: int = 0) -> None:
        self._wall = wall
        self.last = last

    def now(self) -> int:
        """The next timestamp. Raises TypeError when the wall clock returns anything but
        an int, and ValueError when the timestamp would pass :data:`MAX_TIMESTAMP`; the
        clock is unchanged then, so a write that asked for it applies nothing."""
        t = self.last + 1
        if self._wall is not None:
            w = self._wall()
            if type(w) is not int and (not isinstance(w, int) or isinstance(w, bool)):
                raise TypeError(f"the wall clock returned {w!r} ({type(w).__name__}); it must "
                                "return an int, such as time.time_ns()")
            if w > t:
                t = w
        if t > MAX_TIMESTAMP:
            raise ValueError(
                f"no timestamp left: the next would be {t}, past the limit of {MAX_TIMESTAMP} "
                "(2**63 - 1); " + ("the wall clock is that far ahead (it should count ns "
                                   "since the epoch, as time.time_ns() does)"
                                   if t > self.last + 1 else
                                   "a timestamp that high was delivered here"))
        self.last = t
        return t

    def observe(self, timestamp: int) -> None:
        if timestamp > self.last:
            self.last = timestamp
