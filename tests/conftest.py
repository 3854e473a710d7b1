"""Shared fixtures: a real RabbitMQ broker (see tests/broker.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import ReplicaProcess, delete_group, find_broker, new_group


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    try:
        url, container = find_broker()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield url
    if container is not None:
        container.stop()


class Group:
    """A fresh replica group on the broker, with helpers to start replica processes."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url, self.workdir, self.name = url, workdir, new_group()
        self.procs: dict[str, ReplicaProcess] = {}

    def replica(self, replica_id: str, **kw: object) -> ReplicaProcess:
        p = ReplicaProcess(self.url, self.name, replica_id, self.workdir, **kw)  # type: ignore[arg-type]
        self.procs[replica_id] = p
        return p


@pytest.fixture
def group(amqp_url: str, tmp_path: Path) -> Iterator[Group]:
    g = Group(amqp_url, tmp_path)
    yield g
    for p in g.procs.values():
        p.stop()
    delete_group(amqp_url, g.name, list(g.procs))
