"""The cells simulation (tools/sim/cells.py, ``crdt-ops cells``), a bounded slice: the
services' own logic and worker code, 12 nodes in 3 cells over the in-memory network. Every
started container was placed once and started once, never on two nodes at once; every
group converged; a worker holds its cell's records only."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from tools.sim.cells import simulate


def test_twelve_nodes_in_three_cells_place_and_start_each_container_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where it keeps lease files
    result = asyncio.run(simulate(12, 600, 120, cell_size=4, batch=40, heartbeat_s=5,
                                  idle_s=0.5, timeout_s=120))
    assert list(tmp_path.iterdir()) == []  # it removed them
    print(result.line())
    assert result.ok, result.line()
    assert result.cells == 3
    # a worker holds its cell's nodes and placements: about a third of the 120 placements
    assert result.worker_records < 4 + 120 // 2 < result.platform_records
    assert result.worker_msgs_per_start < result.logic_msgs_per_start
