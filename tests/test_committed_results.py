"""The committed default run (results/quick-cpu-2core) is reproduced by today's code: the
same grid (config hashes), and for every point the same GMACs and tokens per block, to
the last digit. Guards refactors of the method registry, the grid and the counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tosa_bench.measure.point import count_point
from tosa_bench.measure.spec import build_point_model
from tosa_bench.sweep.grid import expand
from tosa_bench.sweep.suite import Suite

RUN = Path(__file__).resolve().parents[1] / "results" / "quick-cpu-2core"


def _records() -> dict[str, dict]:
    return {r["config_hash"]: r for r in map(json.loads, (RUN / "records.jsonl").read_text().splitlines())}


def test_default_grid_has_the_committed_hashes():
    grid = expand(Suite().with_overrides(devices=("cpu",)))
    assert [gp.hash for gp in grid] == list(_records())


@pytest.mark.parametrize("index", range(5))
def test_counts_equal_the_committed_run(index):
    gp = expand(Suite().with_overrides(devices=("cpu",)))[index]
    old = _records()[gp.hash]
    new = count_point(build_point_model(gp.point))
    assert new["gmacs"] == old["gmacs"]
    assert new["params"] == old["params"]
    assert new["tokens_per_block"] == old["tokens_per_block"]
    assert new["selector_tokens_per_block"] == old["selector_tokens_per_block"]
    # the closed form now equals the counter exactly (the final norm sees all N tokens
    # under ToSA and random: the committed run predates that fix by 5 (N - k - 1) D MACs)
    assert round(new["gmacs_analytic"] * 1e9) == round(new["gmacs"] * 1e9)
