"""Whole-run inputs are checked before anything is measured; accuracy per point on the
embedded synthetic datasets (shapes, rooms) with tiny models."""

from __future__ import annotations

import pytest
import torch

from tosa_bench.build import build_model
from tosa_bench.errors import OutputPathError
from tosa_bench.data.synthetic import make_dataset
from tosa_bench.results.store import read_records
from tosa_bench.sweep.runner import run_points
from tosa_bench.sweep.session import plan_new
from tosa_bench.sweep.suite import Suite
from tosa_bench.tasks.depth_model import DepthModel, save_depth_checkpoint
from test_sweep import TINY, Counting, tiny_suite


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    shapes = make_dataset("shapes", root / "shapes", n=6, size=32)
    rooms = make_dataset("rooms", root / "rooms", n=4, size=32)
    ckpt = root / "tiny.pth"
    torch.save({"model": build_model("test_tiny").state_dict()}, ckpt)
    deep = root / "deep.pth"
    torch.save(build_model("test_deep").state_dict(), deep)
    depth = root / "depth_tiny.pth"
    save_depth_checkpoint(DepthModel(build_model("test_tiny"), features=8), depth)
    return {"shapes": str(shapes), "rooms": str(rooms), "ckpt": str(ckpt), "deep": str(deep), "depth": str(depth)}


def _nothing_written(path):
    return not path.exists() or not (path / "records.jsonl").exists() or (path / "records.jsonl").stat().st_size == 0


# ----------------------------------------------------------------------------- bad inputs
def test_missing_checkpoint_fails_before_any_record(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="no such file"):
        plan_new(tiny_suite(checkpoint={"*": str(tmp_path / "missing.pth")}), out)
    assert not out.exists()


def test_checkpoint_of_another_model_fails_before_any_record(tmp_path, data):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="does not fit test_tiny"):
        plan_new(tiny_suite(checkpoint={"test_tiny": data["deep"]}), out)
    assert not out.exists()


def test_selector_for_wrong_placement_fails_up_front(tmp_path):
    net = build_model("test_tiny", "tosa", keep=0.5, placement="all")
    sel = tmp_path / "sel.pth"
    torch.save(net.reducer.state_dict(), sel)
    with pytest.raises(ValueError, match="selector weights"):
        plan_new(tiny_suite(selector={"*": str(sel)}), tmp_path / "run")  # default placement: alternate
    plan = plan_new(tiny_suite(selector={"*": str(sel)}, placements=("all",)), tmp_path / "ok")
    assert all((gp.point.selector is not None) == (gp.point.variant == "tosa") for gp in plan.points)


def test_unwritable_out_dir_fails_before_any_record(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="out: cannot create"):
        plan_new(tiny_suite(), blocker / "run")
    with pytest.raises(OutputPathError, match="not a directory"):
        plan_new(tiny_suite(), blocker)


def test_read_only_out_dir(tmp_path):
    """An output folder nobody can create, root included (root writes through a chmod
    0o500 folder, and tests run as root in CI, so a permission-based version was always
    skipped): a folder two levels under a regular file."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="out: cannot create"):
        plan_new(tiny_suite(), blocker / "out" / "run")
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_out_dir_that_refuses_files_fails_on_the_probe(tmp_path, monkeypatch):
    """A folder that exists but takes no files (read-only mount, or chmod for a non-root
    user): the write probe must turn the OS error into an ``OutputPathError`` naming the
    folder, before any record. The refusal is simulated so it holds for root too."""
    import re
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    out = tmp_path / "ro"
    out.mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputPathError, match=f"out: {re.escape(str(out))} is not writable"):
        plan_new(tiny_suite(), out)
    monkeypatch.undo()
    assert _nothing_written(out)


def test_bad_datasets_fail_up_front(tmp_path, data):
    with pytest.raises(ValueError):
        plan_new(tiny_suite(imagenet=str(tmp_path / "nope")), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="classes"):
        plan_new(tiny_suite(models=("deit_tiny_patch16_224",), imagenet=data["shapes"], variants=("dense",)), tmp_path / "b")
    with pytest.raises(ValueError, match="nyu"):
        plan_new(tiny_suite(nyu=str(tmp_path / "nope.mat")), tmp_path / "c")
    with pytest.raises(ValueError, match="depth-checkpoint"):
        plan_new(tiny_suite(depth_checkpoint={"*": data["depth"]}), tmp_path / "d")
    with pytest.raises(ValueError, match="does not fit"):
        plan_new(tiny_suite(models=("test_deep",), nyu=data["rooms"], depth_checkpoint={"*": data["depth"]}), tmp_path / "e")
    for name in "abcde":
        assert _nothing_written(tmp_path / name)


# ----------------------------------------------------------------------------- accuracy
def test_top1_with_and_without_checkpoint(tmp_path, data):
    for ckpt, reason in ((None, "no checkpoint: random weights"), (data["ckpt"], None)):
        suite = tiny_suite(variants=("dense", "tosa"), keeps=(0.5,), imagenet=data["shapes"], limit=4,
                           checkpoint={"*": ckpt} if ckpt else {})
        plan = plan_new(suite, tmp_path / f"run{bool(ckpt)}")
        run_points(plan.points, plan.store, TINY, accuracy=plan.accuracy.evaluate, measure=Counting())
        recs = read_records(plan.store.records_path).records
        assert len(recs) == 2
        for r in recs:
            assert r["status"] == "ok", r["error"]
            assert 0 <= r["top1"] <= 100 and 0 <= r["top5"] <= 100 and r["n_images"] == 4 and r["n_unreadable"] == 0
            assert r["weights"] == ("checkpoint" if ckpt else "random")
            assert (reason or "") in (r["accuracy_reason"] or "") and "no --nyu given" in r["accuracy_reason"]
            assert r["delta1"] is None


def test_depth_metrics_with_depth_checkpoint(tmp_path, data):
    suite = tiny_suite(variants=("dense", "tosa", "tome"), keeps=(0.5,), nyu=data["rooms"], depth_checkpoint={"*": data["depth"]})
    plan = plan_new(suite, tmp_path / "run")
    run_points(plan.points, plan.store, TINY, accuracy=plan.accuracy.evaluate, measure=Counting())
    recs = read_records(plan.store.records_path).records
    assert [r["status"] for r in recs] == ["ok"] * 3, [r["error"] for r in recs]
    for r in recs:
        assert 0 <= r["delta1"] <= 1 and r["absrel"] >= 0 and r["rmse"] >= 0 and r["depth_n_images"] >= 1
        assert r["top1"] is None and r["accuracy_reason"] == "no --imagenet given"


def test_nyu_without_depth_checkpoint_is_null_with_reason(tmp_path, data):
    plan = plan_new(tiny_suite(variants=("dense",), nyu=data["rooms"]), tmp_path / "run")
    run_points(plan.points, plan.store, TINY, accuracy=plan.accuracy.evaluate, measure=Counting())
    (r,) = read_records(plan.store.records_path).records
    assert r["status"] == "ok" and r["delta1"] is None and "no --depth-checkpoint" in r["accuracy_reason"]


def test_accuracy_failure_keeps_speed_fields(tmp_path, data):
    plan = plan_new(tiny_suite(variants=("dense",), imagenet=data["shapes"], limit=2), tmp_path / "run")

    def broken(point, stage=lambda s: None):
        raise RuntimeError("loader died")

    run_points(plan.points, plan.store, TINY, accuracy=broken, measure=Counting())
    (r,) = read_records(plan.store.records_path).records
    assert r["status"] == "error" and r["error"].startswith("accuracy: RuntimeError") and r["gmacs"] > 0


def test_no_dataset_means_no_accuracy_plan(tmp_path):
    plan = plan_new(Suite(models=("test_tiny",), devices=("cpu",), variants=("dense",)), tmp_path / "run")
    assert plan.accuracy is None
