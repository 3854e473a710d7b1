"""A bounded slice of the benchmarks runs in CI: the scripts work and check themselves."""

from __future__ import annotations

import subprocess
import sys


def test_core_benchmark_quick_run() -> None:
    out = subprocess.run([sys.executable, "-m", "crdt_ops.bench", "core", "--quick"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ops/msg" not in line]
    assert {r.split("|")[1].strip() for r in rows} >= {"counter", "register", "orset", "map"}


def test_simulation_command() -> None:
    out = subprocess.run([sys.executable, "-m", "crdt_ops.cli", "simulate", "--replicas", "20",
                          "--ops", "200"], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    assert out.strip().endswith("converged=true")
