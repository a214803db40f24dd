"""Suite files: the shipped suites parse and have the grid size they state; malformed
suites fail with the file, the key and what was expected."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from tosa_bench.sweep.grid import expand
from tosa_bench.errors import SuiteError
from tosa_bench.sweep.suite import SUITES_DIR, Suite, from_dict, load_suite, to_dict

SHIPPED = sorted(SUITES_DIR.glob("*.toml"))


def test_required_suites_are_shipped():
    assert {p.stem for p in SHIPPED} >= {"quick", "paper-imagenet", "paper-nyu", "ci"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_suite_parses_and_grid_size_matches(path):
    suite = load_suite(path)
    assert suite.points is not None, f"{path.name} should state its grid size in [suite] points"
    assert len(expand(suite)) == suite.points


def test_quick_suite_is_the_default_run():
    quick = load_suite(SUITES_DIR / "quick.toml")
    default = Suite()
    for f in fields(Suite):
        if f.name not in ("points", "source", "description"):
            assert getattr(quick, f.name) == getattr(default, f.name), f.name
    pts = expand(quick)
    assert [gp.point.variant for gp in pts] == ["dense", "tosa", "tome", "evit", "random"]
    assert all(gp.point.model == "deit_small_patch16_224" for gp in pts)


def test_ci_suite_is_small_cpu_and_tiny():
    ci = load_suite("ci")
    assert ci.devices == ("cpu",) and set(ci.models) <= {"test_tiny", "test_deep"}
    assert all(b <= 2 for b in ci.batch_size["cpu"])


def test_paper_suites_cover_the_grid():
    imagenet = load_suite("paper-imagenet")
    assert set(imagenet.models) == {"deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"}
    assert min(imagenet.keeps) == 0.3 and max(imagenet.keeps) == 1.0 and len(imagenet.placements) >= 2
    nyu = load_suite("paper-nyu")
    assert nyu.img_size == 384 and nyu.match == "gmacs"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,key,expected", [
    ('[grid]\nkeeps = ["half"]\n', "grid.keeps", "numbers in (0, 1]"),
    ("[grid]\nkeeps = [1.5]\n", "grid.keeps", "numbers in (0, 1]"),
    ('[grid]\nmodels = ["resnet50"]\n', "grid.models", "model names"),
    ('[grid]\nvariants = ["dense", "fast"]\n', "grid.variants", "variants"),
    ("[grid]\nbatch_size = 0\n", "grid.batch_size", "positive integers"),
    ("[grid]\nbatch_size = {cpu = 2, tpu = 4}\n", "grid.batch_size.tpu", "device type"),
    ('[grid]\ndtypes = ["fp64"]\n', "grid.dtypes", "precisions"),
    ('[grid]\ndevices = ["gpu"]\n', "grid.devices", "devices"),
    ('[grid]\nmatch = "flops"\n', "grid.match", "none, gmacs"),
    ("[grid]\nkeep = [0.5]\n", "grid.keep", "a known key of [grid]"),
    ("[grids]\nkeeps = [0.5]\n", "grids", "a section"),
    ('[measure]\nwarmup = "ten"\n', "measure.warmup", "an integer"),
    ("[measure]\ntiming = 1\n", "measure.timing", "true or false"),
    ("[measure]\ntime_budget_s = -1\n", "measure.time_budget_s", "seconds"),
    ("[gate]\nremeasure_budget_s = -5\n", "gate.remeasure_budget_s", "seconds >= 0 (0: never)"),
    ('[gate]\nremeasure_budget_s = "1m"\n', "gate.remeasure_budget_s", "seconds >= 0 (0: never)"),
    ('[weights]\ncheckpoint = {resnet = "a.pth"}\n', "weights.checkpoint.resnet", "a model of grid.models"),
    ("[data]\ndepth_input = [480]\n", "data.depth_input", "two positive integers"),
    ('[grid]\nmatch = "gmacs"\ntome_r = [8]\n', "grid.tome_r", "no explicit ToMe r"),
])
def test_malformed_suite_names_file_key_and_expectation(tmp_path, text, key, expected):
    p = _write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(p)
    msg = str(info.value)
    assert str(p) in msg and f"'{key}'" in msg and expected in msg
    assert "\n" not in msg


def test_invalid_toml_names_the_file(tmp_path):
    p = _write(tmp_path, "[grid\nkeeps = ")
    with pytest.raises(SuiteError, match="not valid TOML") as info:
        load_suite(p)
    assert str(p) in str(info.value)


def test_missing_suite_file(tmp_path):
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "nope.toml")


def test_per_device_tables_paths_and_no_budget(tmp_path):
    p = _write(tmp_path, """
[grid]
batch_size = {cpu = 4, cuda = [32, 64]}
dtypes = {cpu = "fp32", cuda = ["fp16", "bf16"]}
placements = ["alternate", "3,5,7", [2, 4]]
evit_locations = [3, 6, 9]
[weights]
checkpoint = "w/deit.pth"
[measure]
time_budget_s = 0
[gate]
remeasure_budget_s = 0
""")
    s = load_suite(p)
    assert s.batch_size == {"cpu": (4,), "cuda": (32, 64)} and s.dtypes["cuda"] == ("fp16", "bf16")
    assert s.placements == ("alternate", (3, 5, 7), (2, 4)) and s.evit_locations == ((3, 6, 9),)
    assert s.checkpoint == {"*": str(tmp_path / "w" / "deit.pth")}
    assert s.time_budget_s is None and s.settings().time_budget_s is None
    again = from_dict(to_dict(s), source="again")
    assert again.batch_size == s.batch_size and again.placements == s.placements and again.time_budget_s is None
    assert s.remeasure_budget_s == again.remeasure_budget_s == 0.0 and Suite().remeasure_budget_s == 60.0  # 0: the gate never re-measures


def test_overrides_are_validated_with_option_names():
    with pytest.raises(SuiteError, match="--keep"):
        Suite().with_overrides(keeps=(0.0,))
    s = Suite(points=5).with_overrides(models=("test_tiny",))
    assert s.models == ("test_tiny",) and s.points is None
    assert Suite(points=5).with_overrides(keeps=(0.5,)).points == 5  # unchanged grid keeps its size


def test_importance_rule_reaches_tosa_points_only(tmp_path):
    path = tmp_path / "imp.toml"
    path.write_text('[grid]\nmodels = ["test_tiny"]\nvariants = ["tosa", "random"]\nkeeps = [0.5]\nimportance = "cls"\ndevices = ["cpu"]\n')
    points = {p.point.variant: p.point.options for p in expand(load_suite(path))}
    assert points["tosa"]["importance"] == "cls" and "importance" not in points["random"]
    default = {p.point.variant: p.point.options for p in expand(Suite(models=("test_tiny",), variants=("tosa",), devices=("cpu",)))}
    assert "importance" not in default["tosa"], "the default rule leaves config hashes unchanged"
    path.write_text('[grid]\nimportance = "max"\n')
    with pytest.raises(SuiteError, match="grid.importance"):
        load_suite(path)


def test_fuse_and_workers_follow_the_one_vocabulary(tmp_path):
    """--fuse/--no-fuse (and [grid] fuse) reach EViT's options; the workers default is the
    CPU-count rule every command uses, a suite's own value wins."""
    from tosa_bench.data.loader import default_workers
    from tosa_bench.sweep.grid import expand
    from tosa_bench.sweep.inputs import validate_inputs
    from tosa_bench.sweep.suite import Suite, load_suite

    base = Suite().with_overrides(models=("test_tiny",), variants=("evit",), devices=("cpu",))
    assert [gp.point.options.get("fuse") for gp in expand(base)] == [True]
    assert [gp.point.options.get("fuse") for gp in expand(base.with_overrides(fuse=False))] == [False]
    path = tmp_path / "s.toml"
    path.write_text('[grid]\nmodels = ["test_tiny"]\nvariants = ["evit"]\nfuse = false\n')
    assert [gp.point.options.get("fuse") for gp in expand(load_suite(path))] == [False]
    shapes = tmp_path / "shapes"
    from tosa_bench.data.synthetic import make_dataset

    make_dataset("shapes", shapes, n=10, size=32)
    plan = validate_inputs(base.with_overrides(imagenet=str(shapes)), expand(base))
    assert plan.num_workers == default_workers()
    plan = validate_inputs(base.with_overrides(imagenet=str(shapes), num_workers=0), expand(base))
    assert plan.num_workers == 0
