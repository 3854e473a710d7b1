"""Log set-up for crdt-ops processes: plain lines, or one JSON object per line.

``CRDT_OPS_LOG`` sets the level (default INFO); ``CRDT_OPS_LOG_FORMAT=json`` makes
every record a JSON object with ``time``, ``level``, ``logger``, ``message`` (and
``error`` with the traceback), for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup() -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("CRDT_OPS_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=os.environ.get("CRDT_OPS_LOG", "INFO").upper(),
                        handlers=[handler], force=True)
