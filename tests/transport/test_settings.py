"""``Settings`` built in code: a field of the wrong type is refused where it is given,
naming its flag, not deep in the transport later."""

from __future__ import annotations

from typing import Any

import pytest

from crdt_ops.transport.config import Settings


@pytest.mark.parametrize(("kw", "says"), [
    ({"batch_ops": "5"}, "--batch-ops (Settings.batch_ops) must be int, not str '5'"),
    ({"store": 123}, "--store (Settings.store) must be str, not int 123"),
    ({"heartbeat_s": None}, "--heartbeat-s (Settings.heartbeat_s) must be float, not NoneType"),
    ({"prefetch": True}, "--prefetch (Settings.prefetch) must be int, not bool True"),
])
def test_a_field_of_the_wrong_type_is_refused(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(TypeError) as info:
        Settings(**kw)
    assert str(info.value).startswith(says), str(info.value)


def test_an_int_where_a_float_goes_is_taken() -> None:
    assert Settings(heartbeat_s=2, batch_delay_ms=0).heartbeat_s == 2
