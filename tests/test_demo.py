"""The printed origin story (crdt-ops story) runs and converges, as a real OS process."""

from __future__ import annotations

import subprocess
import sys


def test_story_command_converges() -> None:
    out = subprocess.run([sys.executable, "-m", "crdt_ops.cli", "story"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "in-memory network" in out.splitlines()[0]
    assert "actual=on" in out
    assert out.strip().splitlines()[-1].startswith("converged=true")
