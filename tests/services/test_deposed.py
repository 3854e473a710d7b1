"""The services' logic cut off from the broker while its standby took over: it exits with
status 1, its stores marked deposed, and started again (its supervisor's part) it sets them
aside, runs as a new replica and retires the old one, so that what it committed while cut
off never goes out (crdt_ops/transport/deposition.py). Real OS processes
(``python -m services.cli logic``), against the real broker."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.transport.topology import Topology
from services import model
from tests.broker import claim_founding, cut_off_and_take_over
from tools.harness import delete_queues, free_port, wait_until


def _service(role: str, url: str, group: str, workdir: Path, log: Path,
             *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", role, "--amqp-url", url, "--group",
             group, "--store", str(workdir / f"{role}.sqlite"), "--heartbeat-s", "0.5",
             *args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
            env={**os.environ, "PYTHONPATH": os.getcwd()})


async def _take_over_from(logic: subprocess.Popen[bytes], url: str, group: str,
                          replica_id: str) -> None:
    """Cut logic ``replica_id`` (the process ``logic``) off while a standby takes its
    principal's queue; the standby holds it until the process exits (it reconnects and
    learns it lost), or for 30 s at most."""
    standby = await cut_off_and_take_over(url, group, "logic", replica_id)
    try:
        for _ in range(600):
            if logic.poll() is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        await standby.close()


@pytest.fixture
def group(amqp_url: str) -> Iterator[str]:
    g = f"test-deposed-{uuid.uuid4().hex[:8]}"
    yield g
    for name in model.groups(g):
        queues, exchanges = Topology(name).objects([])
        asyncio.run(delete_queues(amqp_url, queues, exchanges))


def test_a_deposed_logic_exits_and_its_next_process_runs_as_a_new_replica(
        amqp_url: str, group: str, tmp_path: Path) -> None:
    log, web_log = tmp_path / "logic.log", tmp_path / "web.log"
    first = _service("logic", amqp_url, group, tmp_path, log)
    web = None
    try:
        wait_until(lambda: "founded group" in log.read_text(), 60, "logic to found its group",
                   lambda: log.read_text()[-3000:])
        found = re.search(r"replica (logic\.\S+) founded group", log.read_text())
        assert found is not None
        old = found.group(1)
        # a member beside it, to admit its next process (a new replica)
        web = _service("web", amqp_url, group, tmp_path, web_log, "--port", str(free_port()))
        wait_until(lambda: "web: http://" in web_log.read_text(), 60, "web to be up",
                   lambda: web_log.read_text()[-3000:])

        asyncio.run(_take_over_from(first, amqp_url, group, old))
        assert first.wait(timeout=10) == 1, log.read_text()[-3000:]
        text = log.read_text()
        assert "took over while this one was cut off" in text
        assert text.count("is marked so, and is set aside when it is opened again") == 2
        assert "Traceback" not in text

        second = _service("logic", amqp_url, group, tmp_path, log)  # (its supervisor)
        try:
            wait_until(lambda: f"retired {old}, the deposed replica" in log.read_text()
                       and log.read_text().count(f"retired {old}") >= 2, 60,
                       f"the next logic to retire {old} in both groups",
                       lambda: log.read_text()[-3000:])
            asides = sorted(p.name for p in tmp_path.iterdir() if ".deposed-" in p.name
                            and not p.name.endswith(("-wal", "-shm")))
            assert len(asides) == 2, asides  # the platform's group and the cell's
            new = re.findall(r"replica (logic\.\S+) retired", log.read_text())
            assert new and all(rid == new[0] != old for rid in new)
        finally:
            second.terminate()
            second.wait(timeout=30)
    finally:
        for p in (first, web):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_a_logic_deposed_before_it_is_up_exits_1_and_does_not_wait_for_good(
        amqp_url: str, group: str, tmp_path: Path) -> None:
    """A logic takes its principal's queue first thing as it starts, then joins its groups.
    Cut off before it was up (here it waits to be admitted: the founding claim names a
    replica that never runs) while a standby took over, it learnt it was deposed as it
    reconnected and then waited for good, neither running nor standing by, saying every
    10 s that it waits to be stopped: a platform left without its standby (seen in
    ``crdt-ops platform-chaos``: a logic started again by its supervisor, its connection
    lost as it read the streams). Now it exits with status 1, for its supervisor."""
    for g in model.groups(group):
        asyncio.run(claim_founding(amqp_url, g))
    log = tmp_path / "logic.log"
    logic = _service("logic", amqp_url, group, tmp_path, log, "--replica-id", "logic.b")
    try:
        wait_until(lambda: "asks the members of group" in log.read_text(), 60,
                   "logic to wait to be admitted (its principal's queue held)",
                   lambda: log.read_text()[-3000:])

        asyncio.run(_take_over_from(logic, amqp_url, group, "logic.b"))
        assert logic.poll() == 1, log.read_text()[-3000:]
        text = log.read_text()
        assert "is marked so, and is set aside when it is opened again" in text
        assert text.strip().splitlines()[-1].startswith(
            "crdt-ops logic: deposed: another process")
        assert "Traceback" not in text
    finally:
        if logic.poll() is None:
            logic.kill()
            logic.wait()


def test_a_logic_deposed_as_it_starts_exits_1_like_one_deposed_while_it_runs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Found deposed as it starts (it finds another logic's operations in the stream before
    it sends what it committed and never sent), a service exits with status 1, as README
    says and as one deposed while it runs does: Deposed is a ValueError, and a bad setting's
    ValueError exits 2, which a supervisor may take for a mistake not worth a restart
    (seen in ``crdt-ops platform-chaos``: a logic started again during a broker restart)."""
    from crdt_ops.errors import Deposed
    from crdt_ops.transport.config import Settings
    from services import main

    async def deposed(role: str, service: main.Service) -> str:
        raise Deposed("replica logic.x: logic.y wrote while this one was down")

    monkeypatch.setattr(main, "run_service", deposed)
    assert main.main("logic", None, main.Service(Settings())) == 1  # type: ignore[arg-type]
    assert capsys.readouterr().err == \
        "crdt-ops logic: deposed: replica logic.x: logic.y wrote while this one was down\n"
