"""A hundred replicas over the in-memory network converge."""

from __future__ import annotations

from tools.sim.simulation import simulate


def test_hundred_replicas_converge() -> None:
    result = simulate(replicas=100, ops=600, seed=3)
    print(result.line())
    assert result.converged
    assert result.deliveries >= 100 * 1  # every message reached every replica
