"""Log set-up for crdt-ops processes: plain lines, or one JSON object per line.

``CRDT_OPS_LOG`` sets the level (default INFO); ``CRDT_OPS_LOG_FORMAT=json`` makes
every record a JSON object with ``time``, ``level``, ``logger``, ``message`` (and
``error`` with the traceback), for log shippers.

A lost broker connection is one line per event above DEBUG (:class:`ConnectionNoise`):
the replica says it lost the connection, aio-pika's failed reconnect attempts show
once and then at most every :data:`REPEAT_S` seconds, and the replica says when it
reconnected; no tracebacks. ``CRDT_OPS_LOG=DEBUG`` shows everything, tracebacks
included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Mapping

#: The same connection message (logger and format) is shown at most once this often.
REPEAT_S = 30.0
#: The client libraries whose records about a lost connection are condensed.
LIBRARIES = ("aiormq", "aio_pika")
#: Their records that only repeat what another line says (substrings of the format).
REDUNDANT = (
    "Cancelling cause reader exited abnormally",  # the replica's "lost its connection"
    "error when creating transport",  # aio-pika's "Connection attempt ... failed"
    "closed. Reconnecting after",  # ditto
    "Unexpected connection close from remote",  # the replica's "lost its connection"
)


def _connection_errors() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [ConnectionError, OSError, TimeoutError,
                                        asyncio.IncompleteReadError]
    try:
        import aiormq.exceptions as e

        kinds += [e.AMQPConnectionError, e.ChannelInvalidStateError, e.ConnectionClosed]
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


class ConnectionNoise(logging.Filter):
    """Above DEBUG: the client libraries' records (and ours that carry a connection
    error) become one line without a traceback; those that repeat another line are
    dropped, and one message repeats at most every :data:`REPEAT_S` seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.errors = _connection_errors()
        self.last: dict[tuple[str, str], float] = {}
        self.held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        library = record.name.split(".")[0] in LIBRARIES
        error = record.exc_info[1] if record.exc_info else None
        if not library and not isinstance(error, self.errors):
            return True
        fmt = str(record.msg)
        text = record.getMessage()
        if library and (any(r in fmt for r in REDUNDANT)
                        or ("Callback" in fmt and ("ChannelInvalidStateError" in text
                                                   or text.endswith(" closed")))):
            return False
        key = (record.name, fmt)
        now = time.monotonic()
        before = self.last.get(key, -REPEAT_S)
        if now - before < REPEAT_S:
            self.held[key] = self.held.get(key, 0) + 1
            return False
        self.last[key] = now
        if error is not None:
            detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            text += f" ({type(error).__name__}{': ' + detail if detail else ''})"
        held = self.held.pop(key, 0)
        if held:  # (held since this line was last let through)
            text += f" [{held} more like it in the {now - before:.0f}s since the last]"
        if error is not None and record.levelno > logging.WARNING:  # a lost connection is
            record.levelno, record.levelname = logging.WARNING, "WARNING"  # no error of ours
        record.msg, record.args = text.splitlines()[0] if text else text, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data)


#: What ``CRDT_OPS_LOG`` takes (Python's logging levels, in any case) and
#: ``CRDT_OPS_LOG_FORMAT`` takes (unset or empty: text).
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Raise ValueError, naming the variable and what it takes, when ``CRDT_OPS_LOG`` or
    ``CRDT_OPS_LOG_FORMAT`` in ``env`` (default ``os.environ``) has a value it does not
    take (a typo would otherwise crash :func:`setup`, or be ignored)."""
    env = os.environ if env is None else env
    level = env.get("CRDT_OPS_LOG") or "INFO"
    if level.upper() not in LEVELS:
        raise ValueError(f"CRDT_OPS_LOG must be one of {', '.join(LEVELS)} (any case), not "
                         f"{level[:50]!r}")
    fmt = env.get("CRDT_OPS_LOG_FORMAT") or "text"
    if fmt.lower() not in FORMATS:
        raise ValueError(f"CRDT_OPS_LOG_FORMAT must be {' or '.join(FORMATS)}, not "
                         f"{fmt[:50]!r}")


def setup() -> None:
    """Log one line per event to stderr, as the environment says (:func:`check_environment`
    first: an unknown level falls back to INFO here)."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("CRDT_OPS_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(ConnectionNoise())
    level = (os.environ.get("CRDT_OPS_LOG") or "INFO").upper()
    logging.basicConfig(level=level if level in LEVELS else "INFO", handlers=[handler],
                        force=True)
