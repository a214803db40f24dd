"""`tosa-bench compare` and the regression gate `tosa-bench check`.

Most cases edit the numbers of one real (tiny) run, so each verdict is decided by known
values, not by this machine's noise; two cases measure for real: the committed CI
baseline passes, and a method that does its work twice fails the gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tosa_bench.cli import app
from tosa_bench.methods import registry
from tosa_bench.methods.base import BlockTokens, ReducerOutput, TokenReducer
from tosa_bench.methods.registry import Method, OptionSpec
from tosa_bench.results.compare import compare_runs

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "test_tiny", "-b", "2", "--warmup", "1", "--repeats", "8", "--time-budget", "0.1", "--no-latency", "--device", "cpu", "--no-figures"]


def _ok(res, code=0):
    assert res.exit_code == code, res.output
    return res


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gate") / "run"
    _ok(runner.invoke(app, ["sweep", *FAST, "--variant", "dense", "--variant", "tosa", "--variant", "evit", "--keep", "0.5", "--out", str(out)]))
    return out


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]


def clone(run: Path, dest: Path, edit=None, env_edit=None) -> Path:
    """A copy of ``run`` whose records (and env) were changed by ``edit(record)``."""
    shutil.copytree(run, dest)
    recs = _records(run)
    for r in recs:
        if edit is not None:
            edit(r)
    (dest / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if env_edit is not None:
        env = json.loads((dest / "env.json").read_text())
        env_edit(env)
        (dest / "env.json").write_text(json.dumps(env))
    return dest


def scale_speedup(variant: str, factor: float, widen: float = 1.0):
    """Multiply one variant's speed-up and its interval by ``factor``; ``widen`` scales the
    interval's half-width around the new value."""

    def edit(r):
        if r["variant"] == variant:
            s = r["speedup_paired"] * factor
            lo, hi = r["speedup_paired_ci_low"] * factor, r["speedup_paired_ci_high"] * factor
            half = max(hi - s, s - lo, 1e-3 * s) * widen
            r.update(speedup_paired=s, speedup_paired_ci_low=s - half, speedup_paired_ci_high=s + half)

    return edit


def narrow(r):
    """Give every paired speed-up a tight interval (+-1%) so noise cannot hide an edit."""
    if r.get("speedup_paired") is not None:
        s = r["speedup_paired"]
        r.update(speedup_paired_ci_low=0.99 * s, speedup_paired_ci_high=1.01 * s)


def baseline_of(run: Path, path: Path) -> Path:
    _ok(runner.invoke(app, ["check", "--run", str(run), "--baseline", str(path), "--update-baseline"]))
    return path


def gate(run: Path, baseline: Path):
    return runner.invoke(app, ["check", "--run", str(run), "--baseline", str(baseline)])


# --------------------------------------------------------------------------- compare
def test_compare_a_run_with_itself_reports_no_change(base_run):
    res = _ok(runner.invoke(app, ["compare", str(base_run), str(base_run), "--format", "json"]))
    doc = json.loads(res.output)
    assert set(doc["counts"]) <= {"same", "info"} and doc["counts"]["same"] > 0
    md = _ok(runner.invoke(app, ["compare", str(base_run), str(base_run), "--format", "md"])).output
    assert "| point |" not in md  # nothing to list


def test_compare_reports_the_one_slower_point_alone(base_run, tmp_path):
    a = clone(base_run, tmp_path / "a", narrow)
    b = clone(base_run, tmp_path / "b", lambda r: (narrow(r), scale_speedup("tosa", 0.7)(r)))
    cmp = compare_runs(a, b)
    flagged = [r for r in cmp.rows if r.verdict not in ("same", "info")]
    assert [(r.point.split()[1], r.metric, r.verdict) for r in flagged] == [("tosa", "speedup", "regressed")]
    assert flagged[0].change == pytest.approx(-0.3)
    md = _ok(runner.invoke(app, ["compare", str(a), str(b), "--format", "md"])).output
    assert md.count("regressed") == 2 and "tosa" in md and "evit" not in md.split("| point |")[1]


def test_compare_matches_by_configuration_not_paths_or_machine(base_run, tmp_path):
    def moved(r):
        r["config_hash"] = r["config_hash"][::-1]  # another machine's hash (its paths differ)
        r["device"] = "cpu:0"  # another device string of the same type

    b = clone(base_run, tmp_path / "b", moved, env_edit=lambda e: e.update(hostname="elsewhere"))
    cmp = compare_runs(base_run, b)
    assert not cmp.only_old and not cmp.only_new and len({r.point for r in cmp.rows}) == 3


# --------------------------------------------------------------------------- gate
def test_gate_passes_on_an_unchanged_run_and_writes_reports(base_run, tmp_path):
    base = baseline_of(base_run, tmp_path / "base.json")
    md, js = tmp_path / "summary.md", tmp_path / "gate.json"
    res = _ok(runner.invoke(app, ["check", "--run", str(base_run), "--baseline", str(base), "--markdown", str(md), "--json", str(js)]))
    assert "gate passed" in res.output
    assert "passed: nothing regressed" in md.read_text() and json.loads(js.read_text())["passed"] is True
    assert (base_run / "check.md").is_file() and (base_run / "check.json").is_file()


def test_baseline_edited_to_be_30_percent_faster_fails(base_run, tmp_path):
    run = clone(base_run, tmp_path / "run", narrow)
    base = baseline_of(clone(base_run, tmp_path / "b", lambda r: (narrow(r), scale_speedup("tosa", 1.3)(r))), tmp_path / "base.json")
    res = _ok(gate(run, base), 1)
    assert "regression:" in res.output and "speedup regressed" in res.output and "tosa" in res.output


def test_an_improvement_passes_and_is_reported(base_run, tmp_path):
    run = clone(base_run, tmp_path / "run", narrow)
    base = baseline_of(clone(base_run, tmp_path / "b", lambda r: (narrow(r), scale_speedup("tosa", 1 / 1.3)(r))), tmp_path / "base.json")
    res = _ok(gate(run, base))
    assert "improved" in res.output and "gate passed" in res.output


def test_a_noisy_run_within_tolerance_passes(base_run, tmp_path):
    base = baseline_of(clone(base_run, tmp_path / "b", narrow), tmp_path / "base.json")
    within = clone(base_run, tmp_path / "within", lambda r: (narrow(r), scale_speedup("tosa", 0.95, widen=20)(r)))
    _ok(gate(within, base))
    # beyond the tolerance but with an interval that overlaps the baseline's: noisy, passes
    wide = clone(base_run, tmp_path / "wide", lambda r: (narrow(r), scale_speedup("tosa", 0.8, widen=200)(r)))
    res = _ok(gate(wide, base))
    assert "noisy" in res.output


def test_a_deterministic_change_fails(base_run, tmp_path):
    base = baseline_of(base_run, tmp_path / "base.json")

    def more_macs(r):
        if r["variant"] == "evit":
            r["gmacs"] *= 1 + 1e-9

    res = _ok(gate(clone(base_run, tmp_path / "run", more_macs), base), 1)
    assert "gmacs changed" in res.output


def test_baseline_from_another_environment_is_reported_not_compared(base_run, tmp_path):
    base = baseline_of(clone(base_run, tmp_path / "b", lambda r: (narrow(r), scale_speedup("tosa", 2.0)(r)),
                             env_edit=lambda e: e.update(torch="2.0.0")), tmp_path / "base.json")
    res = _ok(gate(clone(base_run, tmp_path / "run", narrow), base))
    assert "baseline from another environment: torch '2.0.0'" in res.output and "not compared" in res.output


def test_gate_refuses_bad_input_before_measuring(tmp_path):
    res = runner.invoke(app, ["check", "--suite", "ci", "--baseline", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "not found" in res.output and not (tmp_path / "runs").exists()
    (tmp_path / "bad.json").write_text("{}")
    res = runner.invoke(app, ["check", "--suite", "ci", "--baseline", str(tmp_path / "bad.json")])
    assert res.exit_code == 2 and "not a tosa-bench baseline" in res.output
    res = runner.invoke(app, ["check", "--baseline", str(tmp_path / "bad.json")])
    assert res.exit_code == 2 and "exactly one of --suite" in res.output


def test_missing_and_extra_points_fail(base_run, tmp_path):
    base = baseline_of(base_run, tmp_path / "base.json")
    doc = json.loads(base.read_text())
    dropped = dict(doc, points=doc["points"][:-1])
    (tmp_path / "dropped.json").write_text(json.dumps(dropped))
    res = _ok(gate(base_run, tmp_path / "dropped.json"), 1)
    assert "not in the baseline" in res.output


# --------------------------------------------------------------------------- real measurements
class TwiceReducer(TokenReducer):
    """Test-only method: dense, but every block runs ``times`` times (same output), so it
    costs ``times`` x the compute."""

    variant = "worktwice"

    def __init__(self, times: int = 1) -> None:
        super().__init__()
        self.times = times

    def forward(self, blocks, x, collect=(), need_full=False) -> ReducerOutput:
        counts = []
        for blk in blocks:
            y = x
            for _ in range(self.times):
                y = blk(x)
            counts.append(BlockTokens(x.shape[1], x.shape[1]))
            x = y
        self.token_counts = counts
        return ReducerOutput(tokens=x, full=x if need_full else None)


class TwiceMethod(Method):
    name = "worktwice"
    display = "Work-twice (test)"
    order = 9
    summary = "dense, each block run `times` times"
    options = (OptionSpec("times", "int", 1, ">= 1", "how often each block runs"),)

    def __init__(self, times: int) -> None:
        self.work = times

    def reducer(self, **options):
        return TwiceReducer(self.work)

    def grid_options(self, keep, cfg, knobs):
        from tosa_bench.methods.registry import GridEntry

        return [GridEntry({})] if keep is not None else []


def test_a_method_doing_its_work_twice_fails_the_gate(tmp_path):
    suite = tmp_path / "twice.toml"
    suite.write_text('[suite]\nname = "twice"\n[grid]\nmodels = ["test_tiny"]\nvariants = ["dense", "worktwice"]\nkeeps = [0.5]\n'
                     'batch_size = 8\ndevices = ["cpu"]\n[measure]\nlatency = false\nmemory = false\nwarmup = 2\nrepeats = 30\n'
                     'time_budget_s = 1.0\npair_min_rounds = 20\n')
    registry.register(TwiceMethod(1))
    try:
        base_dir = tmp_path / "base-run"
        _ok(runner.invoke(app, ["check", "--suite", str(suite), "--out", str(base_dir), "--baseline", str(tmp_path / "b.json"), "--update-baseline"]))
        registry.register(TwiceMethod(2), replace=True)
        res = _ok(runner.invoke(app, ["check", "--suite", str(suite), "--out", str(tmp_path / "run"), "--baseline", str(tmp_path / "b.json")]), 1)
    finally:
        registry.unregister("worktwice")
    # (fvcore's trace drops the unused first call, so GMACs stay: only the time shows it)
    assert "worktwice" in res.output and "speedup regressed" in res.output


@pytest.mark.skipif(not (ROOT / "results" / "baselines" / "ci-cpu.json").is_file(), reason="no committed CI baseline")
def test_the_committed_ci_baseline_passes(tmp_path):
    """The gate as .ci/run runs it: the ci suite measured now against the committed
    baseline (time/memory ratios are compared only on the machine kind that made it)."""
    res = runner.invoke(app, ["check", "--suite", "ci", "--out", str(tmp_path / "run"),
                              "--baseline", str(ROOT / "results" / "baselines" / "ci-cpu.json")])
    assert res.exit_code == 0, res.output
