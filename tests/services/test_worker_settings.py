"""A worker's transport heartbeat defaults to a beat of its node
(services.main.worker_heartbeat)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services import main


def _read(role: str, *argv: str) -> float:
    parser = argparse.ArgumentParser()
    main.add_arguments(parser.add_subparsers(dest="command"))
    return main.read(role, parser.parse_args([role, *argv])).settings.heartbeat_s


def test_a_workers_heartbeat_is_a_beat_of_its_node_unless_told(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CRDT_OPS_HEARTBEAT_S", raising=False)
    monkeypatch.chdir(tmp_path)
    worker = ("--node", "n1", "--runtime", "process")
    assert _read("worker", *worker) == 6.0  # the default 30 s lease: a beat every 6 s
    assert _read("worker", *worker, "--lease-s", "5") == 2.0  # never under the default
    assert _read("worker", *worker, "--heartbeat-s", "1") == 1.0
    monkeypatch.setenv("CRDT_OPS_HEARTBEAT_S", "3")
    assert _read("worker", *worker) == 3.0
    monkeypatch.delenv("CRDT_OPS_HEARTBEAT_S")
    assert _read("logic") == 2.0


def test_a_workers_runtime_directory_is_named_after_it(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """Without --store or --runtime-dir, ``crdt-ops.worker.<node>.runtime`` (it used to be
    the hidden ``..runtime-<node>``, which a worker that ran before keeps)."""
    from services.settings import WorkerSettings

    monkeypatch.chdir(tmp_path)
    w = WorkerSettings()
    assert main.runtime_dir(w, "", "n1") == Path("crdt-ops.worker.n1.runtime")
    assert main.runtime_dir(w, "s/w.sqlite", "n1") == Path("s/w.sqlite.runtime-n1")
    (tmp_path / "..runtime-n1").mkdir()  # a worker's of an earlier version
    assert main.runtime_dir(w, "", "n1") == Path("..runtime-n1")
    assert main.runtime_dir(w, "", "n2") == Path("crdt-ops.worker.n2.runtime")
