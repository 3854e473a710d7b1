"""Shared fixtures (a real RabbitMQ broker: tests/broker.py) and the test layers.

Tests live in one folder per layer, each marked with its name so that a tier can be run
alone (``scripts/test -m core``; ``scripts/test --fast`` runs the core tier):

- ``core``: the sans-IO library, no broker, in seconds;
- ``transport``: the RabbitMQ transport against the real broker;
- ``cluster``: throwaway brokers of their own (a cluster, TLS, provisioned users): root
  and Debian's rabbitmq-server;
- ``services``: web, logic and workers as processes, and the ``crdt-ops`` command;
- ``browser``: the page in Chromium (scripts/install-browser);
- ``tools``: chaos, fuzz, benchmarks and simulations, in short runs;
- ``docs``: every code block, command and link of the docs.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.broker import ReplicaProcess, delete_group, find_broker, new_group

LAYERS = ("core", "transport", "cluster", "services", "browser", "tools", "docs")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer: the name of the folder it is in (tests/<layer>/).
    A test file outside the layers' folders is refused."""
    here = Path(__file__).resolve().parent
    for item in items:
        layer = Path(item.fspath).resolve().relative_to(here).parts[0]
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.fspath}: a test belongs in one of the layers' "
                                    f"folders tests/{{{','.join(LAYERS)}}}/")
        item.add_marker(getattr(pytest.mark, layer))


#: set on a test whose call failed (its fixtures' teardown may then show what they saw)
FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True


def show_log_if_failed(request: pytest.FixtureRequest, *logs: Path, lines: int = 60) -> None:
    """After a failed test, print the last ``lines`` of each of ``logs`` (services'
    output; a directory stands for the ``*.log`` files in it): pytest shows them under the
    failure as the teardown's captured output."""
    if not request.node.stash.get(FAILED, False):
        return
    for log in logs:
        for path in sorted(log.glob("*.log")) if log.is_dir() else [log]:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- the last {len(tail)} lines of {path} ---", *tail, sep="\n")


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
