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


GPU_RUNS = ["methods-h100-b256-fp16", "gpu-speed-h100", "gpu-speed-h100-cls"]


@pytest.mark.parametrize("run", GPU_RUNS)
def test_gpu_runs_count_what_todays_code_counts(run):
    """The GPU result sets were measured on a borrowed H100; their hashes, GMACs and token
    counts are device-independent and must match what this code computes on any machine,
    and their speed-ups must be the median of their own per-round ratios."""
    import statistics

    from tosa_bench.measure.spec import Point

    path = RUN.parent / run / "records.jsonl"
    for old in map(json.loads, path.read_text().splitlines()):
        point = Point(model=old["model"], variant=old["variant"], options=old["options"], batch_size=old["batch_size"],
                      dtype=old["dtype"], device=old["device"])
        assert point.config_hash() == old["config_hash"]
        new = count_point(build_point_model(point))
        assert (new["gmacs"], new["params"], new["tokens_per_block"]) == (old["gmacs"], old["params"], old["tokens_per_block"])
        assert old["device"] == "cuda" and old["dtype"] == "fp16" and old["batch_size"] == 256
        if old["variant"] != "dense":
            assert old["speedup_paired"] == statistics.median(old["speedup_paired_rounds"])
            assert old["speedup_paired_ci_low"] <= old["speedup_paired"] <= old["speedup_paired_ci_high"]
