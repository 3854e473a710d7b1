"""The services' log filter (services/logs.py): the client libraries' repeats held back, and
counted truly when one is let through again."""

from __future__ import annotations

import logging

import pytest

from services import logs


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("aiormq.connection", logging.WARNING, __file__, 1, msg, None, None)


def test_a_repeat_is_held_back_and_counted_over_the_time_it_was_held(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """It said "[9 more like it in the last 30s]" of lines held over a minute and more."""
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    f = logs.ConnectionNoise()
    assert f.filter(_record("connection lost"))
    for step in (5, 10, 15):  # within the 30 s: held
        now[0] = 1000.0 + step
        assert not f.filter(_record("connection lost"))
    now[0] = 1095.0
    r = _record("connection lost")
    assert f.filter(r)
    assert r.getMessage() == "connection lost [3 more like it in the 95s since the last]"
    now[0] = 1200.0
    r = _record("connection lost")
    assert f.filter(r) and r.getMessage() == "connection lost"  # nothing held since
