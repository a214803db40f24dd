"""Sweep runner, store, resume, shards, merge and matching (mostly with an injected,
instant measure function, so the bookkeeping is tested without real measurement)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tosa_bench.errors import OutputPathError, RunStateError
from tosa_bench.measure.spec import NonFiniteOutput, Point, Settings
from tosa_bench.results.store import RunStore, encode_record, read_records
from tosa_bench.sweep import lock
from tosa_bench.sweep.grid import GridPoint, expand, parse_shard, select_shard
from tosa_bench.measure.analytic import analytic_gmacs
from tosa_bench.sweep.merge import merge_runs
from tosa_bench.sweep.runner import run_points
from tosa_bench.sweep.session import plan_new, plan_resume, read_resolved, toml_text
from tosa_bench.sweep.suite import Suite

TINY = Settings(timing=True, latency=False, memory=False, warmup=1, repeats=2, time_budget_s=0.05)


def fake_measure(point: Point, settings: Settings, stage=lambda s: None) -> dict:
    """Instant, deterministic stand-in for measure_point."""
    stage("fake")
    g = analytic_gmacs(point.model, point.variant, point.options, point.img_size)
    return {"params": 1000, "gmacs": g, "gflops": 2 * g, "throughput_img_s": 1.0 / g,
            "latency_ms_p50": g * 100, "peak_mem_mb": 1.0, "batch_size": point.batch_size, "timed_steps": 2}


class Counting:
    """A measure function that records which points it measured; optionally fails."""

    def __init__(self, fail_at: int | None = None, exc: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at, self.exc = fail_at, exc

    def __call__(self, point, settings, stage=lambda s: None):
        self.calls.append(point.config_hash())
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise self.exc
        return fake_measure(point, settings, stage)


def tiny_suite(**kw) -> Suite:
    base = dict(models=("test_tiny",), variants=("dense", "tosa", "tome", "evit", "random"), keeps=(0.5, 0.7),
                batch_size={"cpu": (1,), "cuda": (1,)}, devices=("cpu",), timing=False, latency=False, memory=False,
                time_budget_s=None)
    base.update(kw)
    return Suite(**base)


# ----------------------------------------------------------------------------- grid
def test_real_sweep_of_2_variants_x_2_keeps_writes_4_ok_records(tmp_path):
    suite = tiny_suite(variants=("tosa", "evit"), timing=True, warmup=1, repeats=2, time_budget_s=0.05)
    plan = plan_new(suite, tmp_path / "run")
    summary = run_points(plan.points, plan.store, TINY)
    recs = read_records(plan.store.records_path).records
    assert summary.measured == 4 and len(recs) == 4
    assert all(r["status"] == "ok" for r in recs)
    assert len({r["config_hash"] for r in recs}) == 4
    for r in recs:
        assert r["batch_size"] == 1 and r["settings"]["repeats"] == 2 and r["settings"]["time_budget_s"] == 0.05
        assert r["config"]["model"] == "test_tiny" and r["gmacs"] > 0 and r["throughput_img_s"] > 0
        assert r["top1"] is None and "no --imagenet" in r["accuracy_reason"]
    assert json.loads((plan.store.path / "env.json").read_text())["torch"]


def test_dense_once_per_model_batch_dtype_and_tome_deduplicated():
    pts = expand(tiny_suite(keeps=(0.5, 0.7, 0.9)))
    dense = [gp for gp in pts if gp.point.variant == "dense"]
    assert len(dense) == 1 and dense[0].keeps == ()
    assert len({gp.hash for gp in pts}) == len(pts)
    # test_tiny: ToMe r = round((1-keep)*16/6) is 1 at keep 0.5 and 0.7: one point, two keeps
    tome = {gp.point.options["r"]: gp.keeps for gp in pts if gp.point.variant == "tome"}
    assert tome[1] == (0.7, 0.5)
    two_batches = expand(tiny_suite(batch_size={"cpu": (1, 2), "cuda": (1,)}))
    assert sum(gp.point.variant == "dense" for gp in two_batches) == 2


def test_placements_and_locations_multiply():
    pts = expand(tiny_suite(variants=("tosa", "random", "evit"), keeps=(0.5,), placements=("alternate", (2, 4)),
                            evit_locations=((1, 3), (2,))))
    assert [gp.point.options.get("placement") for gp in pts if gp.point.variant == "tosa"] == ["alternate", [2, 4]]
    assert sum(gp.point.variant == "random" for gp in pts) == 2
    assert [gp.point.options["locations"] for gp in pts if gp.point.variant == "evit"] == [[1, 3], [2]]


def test_bad_placement_fails_at_grid_time():
    with pytest.raises(ValueError, match="grid point test_tiny/tosa"):
        expand(tiny_suite(placements=((3, 9),)))


@pytest.mark.parametrize("model", ["test_tiny", "test_deep"])
def test_match_gmacs_within_10_percent_of_tosa(model):
    pts = expand(tiny_suite(models=(model,), keeps=(0.5,), match="gmacs"))
    tosa = next(gp for gp in pts if gp.point.variant == "tosa")
    target = analytic_gmacs(model, "tosa", tosa.point.options)
    matched = [gp for gp in pts if gp.point.variant in ("tome", "evit")]
    assert {gp.point.variant for gp in matched} == {"tome", "evit"}
    for gp in matched:
        g = analytic_gmacs(model, gp.point.variant, gp.point.options)
        assert abs(g / target - 1) <= 0.10, (gp.point.variant, gp.point.options, g, target)
        assert gp.match[0]["target_gmacs"] == pytest.approx(target)
    # without matching EViT keeps its natural keep (0.5) and costs far less than ToSA here
    natural = next(gp for gp in expand(tiny_suite(models=(model,), keeps=(0.5,))) if gp.point.variant == "evit")
    assert natural.point.options["keep"] == 0.5


_COUNTED: dict[tuple, float] = {}


def counter_gmacs(model: str, variant: str, options: dict) -> float:
    """GMACs per image of a built model by the fvcore counter, not the closed form. Cached
    by the token counts a forward pass actually produced: for one variant and otherwise
    equal options, equal counts mean the same computation, so the same count."""
    import torch

    from tosa_bench import build_model
    from tosa_bench.measure.flops import count_macs

    m = build_model(model, variant, **options)
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        m(x)
    fixed = tuple(sorted((k, json.dumps(v)) for k, v in options.items() if k not in ("keep", "r")))
    key = (model, variant, fixed, tuple(m.token_counts))
    if key not in _COUNTED:
        _COUNTED[key] = count_macs(m, x).gmacs
    return _COUNTED[key]


@pytest.mark.parametrize("keep", [0.5, 0.7])
def test_match_gmacs_is_the_counters_argmin(keep):
    """``--match gmacs`` searches with the closed form; brute force over the same documented
    candidates with the fvcore counter on built models must pick the same setting: ToMe
    r = 0 .. (N-1)//2, ties to the smaller r; EViT keep 0.01 .. 1.00, ties to the keep
    nearest the grid's keep (then the smaller). Independent of the formula the matcher uses."""
    from tosa_bench.models.configs import get_config

    model = "test_tiny"
    cfg = get_config(model)
    pts = expand(tiny_suite(models=(model,), keeps=(keep,), match="gmacs"))
    tosa = next(gp for gp in pts if gp.point.variant == "tosa")
    target = counter_gmacs(model, "tosa", tosa.point.options)
    tome = next(gp for gp in pts if gp.point.variant == "tome")
    evit = next(gp for gp in pts if gp.point.variant == "evit")
    for gp in (tome, evit):
        assert gp.match[0]["target_gmacs"] == pytest.approx(target, rel=1e-12)

    r = min(range((cfg.num_tokens - 1) // 2 + 1), key=lambda r: (abs(counter_gmacs(model, "tome", {"r": r}) - target), r))
    assert tome.point.options == {"r": r}
    assert tome.match[0]["gmacs_analytic"] == pytest.approx(counter_gmacs(model, "tome", {"r": r}), rel=1e-12)

    fuse = evit.point.options["fuse"]
    step = min(range(1, 101), key=lambda s: (abs(counter_gmacs(model, "evit", {"keep": s / 100, "fuse": fuse}) - target), abs(s / 100 - keep), s))
    assert evit.point.options["keep"] == step / 100
    assert evit.match[0]["gmacs_analytic"] == pytest.approx(counter_gmacs(model, "evit", {"keep": step / 100, "fuse": fuse}), rel=1e-12)


# ----------------------------------------------------------------------------- failures
@pytest.mark.parametrize("exc,status", [(NonFiniteOutput("NaN out"), "error"), (RuntimeError("boom"), "error")])
def test_failing_point_is_recorded_and_the_rest_continue(tmp_path, exc, status):
    plan = plan_new(tiny_suite(), tmp_path / "run")
    measure = Counting(fail_at=2, exc=exc)
    summary = run_points(plan.points, plan.store, TINY, measure=measure)
    recs = read_records(plan.store.records_path).records
    assert len(recs) == len(plan.points) == summary.measured
    bad = [r for r in recs if r["status"] != "ok"]
    assert len(bad) == 1 and bad[0]["status"] == status and str(exc) in bad[0]["error"]
    assert bad[0]["batch_size"] == 1 and bad[0]["config"]["variant"] == recs[1]["variant"]


def test_oom_point_is_recorded_as_oom(tmp_path):
    import torch

    plan = plan_new(tiny_suite(), tmp_path / "run")
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    run_points(plan.points, plan.store, TINY, measure=Counting(fail_at=1, exc=oom("CUDA out of memory")))
    recs = read_records(plan.store.records_path).records
    assert recs[0]["status"] == "oom" and "out of memory" in recs[0]["error"]
    assert all(r["status"] == "ok" for r in recs[1:])


def test_error_points_are_rerun_on_resume(tmp_path):
    plan = plan_new(tiny_suite(), tmp_path / "run")
    run_points(plan.points, plan.store, TINY, measure=Counting(fail_at=3, exc=RuntimeError("flaky")))
    again = Counting()
    plan2 = plan_resume(plan.store.path)
    run_points(plan2.points, plan2.store, TINY, measure=again)
    assert again.calls == [plan.points[2].hash]
    assert plan2.store.ok_hashes() == {gp.hash for gp in plan.points}


# ----------------------------------------------------------------------------- resume
def test_resume_after_interrupt_completes_without_rerunning(tmp_path):
    plan = plan_new(tiny_suite(), tmp_path / "run")
    n = len(plan.points)
    first = Counting(fail_at=4, exc=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_points(plan.points, plan.store, TINY, measure=first)
    done = {r["config_hash"] for r in read_records(plan.store.records_path).records}
    assert len(done) == 3
    second = Counting()
    plan2 = plan_resume(plan.store.path)
    summary = run_points(plan2.points, plan2.store, TINY, measure=second)
    assert summary.skipped == 3 and len(second.calls) == n - 3
    assert not set(second.calls) & done
    recs = read_records(plan.store.records_path).records
    assert len(recs) == n and {r["config_hash"] for r in recs} == {gp.hash for gp in plan.points}


def test_torn_final_line_is_ignored_and_repaired(tmp_path):
    plan = plan_new(tiny_suite(), tmp_path / "run")
    run_points(plan.points[:2], plan.store, TINY, measure=Counting())
    torn = encode_record({"config_hash": plan.points[2].hash, "status": "ok", "x": "y" * 50})[:37]
    with open(plan.store.records_path, "ab") as fh:
        fh.write(torn)
    loaded = read_records(plan.store.records_path)
    assert loaded.torn_tail and len(loaded.records) == 2 and not loaded.bad_lines
    again = Counting()
    plan2 = plan_resume(plan.store.path)
    run_points(plan2.points, plan2.store, TINY, measure=again)
    assert plan.points[2].hash in again.calls and len(again.calls) == len(plan.points) - 2
    final = read_records(plan.store.records_path)
    assert not final.torn_tail and not final.bad_lines and len(final.records) == len(plan.points)


def test_sigkill_mid_sweep_loses_at_most_the_point_in_flight(tmp_path):
    run = tmp_path / "run"
    plan = plan_new(tiny_suite(), run)
    lock.release(run)  # hand the run to the process below (it would be refused otherwise)
    script = f"""
import time, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_sweep import fake_measure, TINY
from tosa_bench.sweep.session import plan_resume
from tosa_bench.sweep.runner import run_points
def slow(point, settings, stage=lambda s: None):
    time.sleep(0.3)
    return fake_measure(point, settings, stage)
plan = plan_resume({str(run)!r}, check_inputs=False)
run_points(plan.points, plan.store, TINY, measure=slow)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 300  # a guard, not a measurement: a busy machine starts the child slowly
        while time.time() < deadline and len(read_records(run / "records.jsonl").records) < 2:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    got = read_records(run / "records.jsonl")
    assert 2 <= len(got.records) < len(plan.points) and not got.bad_lines
    again = Counting()
    plan2 = plan_resume(run, check_inputs=False)
    run_points(plan2.points, plan2.store, TINY, measure=again)
    assert len(again.calls) == len(plan.points) - len(got.records)
    assert plan2.store.ok_hashes() == {gp.hash for gp in plan.points}


def test_new_run_refuses_an_existing_store(tmp_path):
    plan = plan_new(tiny_suite(), tmp_path / "run")
    run_points(plan.points[:1], plan.store, TINY, measure=Counting())
    with pytest.raises(OutputPathError, match="--resume"):
        plan_new(tiny_suite(), tmp_path / "run")


def test_resolved_suite_round_trips(tmp_path):
    suite = tiny_suite(match="gmacs", placements=("alternate", (2, 4)))
    plan = plan_new(suite, tmp_path / "run")
    suite2, grid, shard, run = read_resolved(plan.store)
    assert [gp.hash for gp in grid] == [gp.hash for gp in plan.grid]
    assert [gp.keeps for gp in grid] == [gp.keeps for gp in plan.grid]
    assert suite2.keeps == suite.keeps and suite2.match == "gmacs" and shard is None
    assert run["grid_points"] == len(plan.grid)


def test_suite_toml_drops_none_and_keeps_the_header():
    doc = {"run": {"run_id": "r", "shard": None, "n": 3}, "points": [{"hash": "h", "options": {"keep": 0.5, "seed": None},
                                                                       "keeps": [0.5, None], "placement": None}]}
    text = toml_text(doc, "first line\nsecond line")
    assert text.startswith("# first line\n# second line\n")
    assert tomllib.loads(text) == {"run": {"run_id": "r", "n": 3}, "points": [{"hash": "h", "options": {"keep": 0.5}, "keeps": [0.5]}]}


# ----------------------------------------------------------------------------- shards
def test_shards_are_disjoint_and_cover_the_grid():
    grid = expand(tiny_suite(models=("test_tiny", "test_deep")))
    shards = [select_shard(grid, (i, 3)) for i in (1, 2, 3)]
    hashes = [{gp.hash for gp in s} for s in shards]
    assert not (hashes[0] & hashes[1]) and not (hashes[0] & hashes[2]) and not (hashes[1] & hashes[2])
    assert set().union(*hashes) == {gp.hash for gp in grid}
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [gp.hash for gp in select_shard(grid, (2, 3))] == [gp.hash for gp in shards[1]]  # deterministic


@pytest.mark.parametrize("text", ["0/3", "4/3", "1-3", "a/b", "1/0"])
def test_bad_shard_spec(text):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


def test_merge_of_shards_equals_unsharded_configs(tmp_path):
    suite = tiny_suite(models=("test_tiny", "test_deep"))
    full = plan_new(suite, tmp_path / "full")
    run_points(full.points, full.store, TINY, measure=Counting())
    dirs = []
    for i in (1, 2, 3):
        p = plan_new(suite, tmp_path / f"s{i}", shard=(i, 3))
        run_points(p.points, p.store, TINY, measure=Counting())
        dirs.append(p.store.path)
    summary = merge_runs(dirs, tmp_path / "merged")
    merged = read_records(tmp_path / "merged" / "records.jsonl").records
    unsharded = read_records(full.store.records_path).records
    assert summary.missing == [] and summary.records == len(full.grid)
    assert sorted(r["config_hash"] for r in merged) == sorted(r["config_hash"] for r in unsharded)
    assert sorted(json.dumps(r["config"], sort_keys=True) for r in merged) == sorted(json.dumps(r["config"], sort_keys=True) for r in unsharded)
    assert (tmp_path / "merged" / "table.md").is_file()
    _, grid, shard, _ = read_resolved(RunStore(tmp_path / "merged"))
    assert shard is None and len(grid) == len(full.grid)


def test_merge_refuses_different_results_for_one_config(tmp_path):
    suite = tiny_suite()
    a = plan_new(suite, tmp_path / "a")
    run_points(a.points, a.store, TINY, measure=Counting())
    b = plan_new(suite, tmp_path / "b")

    def other(point, settings, stage=lambda s: None):
        return {**fake_measure(point, settings, stage), "throughput_img_s": 123.0}

    run_points(b.points[:1], b.store, TINY, measure=other)
    with pytest.raises(RunStateError, match="different results"):
        merge_runs([a.store.path, b.store.path], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_merge_accepts_identical_copies_and_ok_over_error(tmp_path):
    import shutil

    suite = tiny_suite()
    a = plan_new(suite, tmp_path / "a")
    run_points(a.points, a.store, TINY, measure=Counting())
    shutil.copytree(a.store.path, tmp_path / "copy")
    b = plan_new(suite, tmp_path / "b")
    run_points(b.points[:1], b.store, TINY, measure=Counting(fail_at=1, exc=RuntimeError("x")))
    summary = merge_runs([a.store.path, tmp_path / "copy", b.store.path], tmp_path / "m")
    recs = read_records(tmp_path / "m" / "records.jsonl").records
    assert summary.records == len(a.grid) and all(r["status"] == "ok" for r in recs)


def test_merge_refuses_other_grids(tmp_path):
    a = plan_new(tiny_suite(), tmp_path / "a")
    b = plan_new(tiny_suite(keeps=(0.5,)), tmp_path / "b")
    with pytest.raises(RunStateError, match="another grid"):
        merge_runs([a.store.path, b.store.path], tmp_path / "m")


def test_merge_refuses_a_run_being_written_and_an_out_that_holds_a_run(tmp_path):
    a = plan_new(tiny_suite(), tmp_path / "a")
    run_points(a.points, a.store, TINY, measure=Counting())
    lock.release(a.store.path)
    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom tosa_bench.sweep import lock\n"
                               f"lock.acquire({str(a.store.path)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunStateError, match=f"still being written \\(pid {holder.pid} on host "):
            merge_runs([a.store.path], tmp_path / "m")
        assert not (tmp_path / "m").exists()
    finally:
        holder.kill()
        holder.wait()
    assert merge_runs([a.store.path], tmp_path / "m").records == len(a.points)
    with pytest.raises(OutputPathError, match="already holds a run; give a new or empty directory$"):
        merge_runs([a.store.path], tmp_path / "m")
    with pytest.raises(OutputPathError, match="is not empty and not a run directory"):
        merge_runs([a.store.path], tmp_path)


def test_gridpoint_labels_are_json():
    gp = GridPoint(Point("test_tiny", "tosa", {"keep": 0.5}, batch_size=1), (0.5,), "alternate")
    assert json.loads(json.dumps(gp.labels())) == {"grid_keeps": [0.5], "placement_label": "alternate", "match": None}


# ----------------------------------------------------------------------------- resume rules
def test_resume_judges_grid_options_by_the_grid_and_adds_data():
    from dataclasses import replace

    import torch

    from tosa_bench.errors import OptionError
    from tosa_bench.sweep.resume import reconcile

    stored = tiny_suite(variants=("dense", "tosa"), keeps=(0.5, 0.7), devices=("auto",))
    grid = expand(stored)
    same_grid = replace(stored, keeps=(0.7, 0.5), seed=3, num_workers=2,  # no random points: the seed changes nothing
                        devices=("auto",) if torch.cuda.is_available() else ("cpu",))
    assert reconcile(stored, same_grid, "RUN", grid=grid) == replace(stored, num_workers=2)
    with pytest.raises(OptionError) as err:
        reconcile(stored, replace(stored, keeps=(0.3,), warmup=9), "RUN", [("--shard", None, "1/2")], grid=grid)
    assert str(err.value) == ("resume: --keep (stored 0.5,0.7, given 0.3); --warmup (stored 3, given 9); --shard (stored none, "
                              "given 1/2): these options differ from the run stored in RUN and would change its grid or how "
                              "it is measured; resume it as stored with: tosa-bench sweep --resume RUN")
    added = reconcile(stored, replace(stored, imagenet="/data/val", limit=50), "RUN", grid=grid)
    assert (added.imagenet, added.limit) == ("/data/val", 50)
    assert reconcile(added, replace(added, imagenet=None, limit=None), "RUN", grid=grid) == added  # not given: kept
    with pytest.raises(OptionError, match=r"--imagenet \(stored /data/val, given /other\); --limit \(stored 50, given 10\)"):
        reconcile(added, replace(added, imagenet="/other", limit=10), "RUN", grid=grid)
