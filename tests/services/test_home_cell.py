"""A new container's home cell (services/model.py ``home_cell``): every process names the
same, containers spread evenly over the cells, and a cell added takes a share from each
cell without moving containers between the others."""

from __future__ import annotations

from collections import Counter

import pytest

from services.model import Container, home_cell

IDS = [f"c{i:05d}" for i in range(6000)]


def test_every_process_names_the_same_cell_whatever_the_order_of_the_cells() -> None:
    assert [home_cell(c, ["a", "b", "c"]) for c in IDS[:200]] == \
        [home_cell(c, ["c", "a", "b"]) for c in IDS[:200]]


def test_containers_spread_evenly_over_the_cells() -> None:
    counts = Counter(home_cell(c, ["a", "b", "c", "d"]) for c in IDS)
    assert set(counts) == {"a", "b", "c", "d"}
    assert all(1300 < n < 1700 for n in counts.values()), counts  # 1,500 each, +-13 %


def test_a_cell_added_takes_a_share_from_each_and_moves_nothing_else() -> None:
    before = {c: home_cell(c, ["a", "b", "c"]) for c in IDS}
    after = {c: home_cell(c, ["a", "b", "c", "d"]) for c in IDS}
    moved = [c for c in IDS if before[c] != after[c]]
    assert all(after[c] == "d" for c in moved)
    assert 1300 < len(moved) < 1700, len(moved)  # a quarter


def test_no_cell_is_an_error() -> None:
    with pytest.raises(ValueError, match="no cell"):
        home_cell("c1", [])


def test_a_record_that_names_its_home_cell_and_was_never_placed_has_nothing_to_copy() -> None:
    rec = {"name": "x", "owner": "o", "power_desired": "off", "cell": "a"}
    assert not Container.of("containers/c1", rec).unsynced
