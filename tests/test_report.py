"""Comparison tables from a run's store alone: ratios to dense, units, captions, LaTeX."""

from __future__ import annotations

import re

import pytest

from tosa_bench.errors import OptionError, RunStateError
from tosa_bench.results import load_run
from tosa_bench.results.store import RunStore
from tosa_bench.results.tables import frame, render, to_latex, to_markdown
from tosa_bench.sweep.runner import run_points
from tosa_bench.sweep.session import plan_new
from test_sweep import TINY, Counting, tiny_suite


@pytest.fixture()
def run_dir(tmp_path):
    plan = plan_new(tiny_suite(models=("test_tiny", "test_deep"), keeps=(0.5, 0.7)), tmp_path / "run")
    run_points(plan.points, plan.store, TINY, measure=Counting(fail_at=3, exc=RuntimeError("exploded")))
    return plan.store.path


def test_frame_ratios_to_dense_of_the_same_group(run_dir):
    df = frame(load_run(run_dir).records)
    for model in ("test_tiny", "test_deep"):
        part = df[(df["model"] == model) & (df["status"] == "ok")]
        dense = part[part["variant"] == "dense"].iloc[0]
        assert dense["speedup"] == pytest.approx(1.0) and dense["gmacs_ratio"] == pytest.approx(1.0)
        for _, row in part.iterrows():
            assert row["gmacs_ratio"] == pytest.approx(row["gmacs"] / dense["gmacs"])
            assert row["speedup"] == pytest.approx(row["throughput"] / dense["throughput"])
    # test_tiny's ToMe point stands for both keeps: it appears under each
    tome = df[(df["model"] == "test_tiny") & (df["variant"] == "tome")]
    assert sorted(tome["keep"]) == [0.5, 0.7] and tome["config_hash"].nunique() == 1
    assert list(df["variant"])[0] == "dense"


def test_markdown_has_units_caption_and_failures(run_dir):
    md = render(load_run(run_dir), "md")
    header = md.splitlines()[0]
    for unit in ("GMACs", "(im/s)", "(ms)", "(MiB)", "params (M)", "top-1 (%)"):
        assert unit in header
    assert "Device: cpu" in md and "dtype: fp32" in md and "batch: 1" in md
    assert "n/m" in md and "no --imagenet or --nyu given" in md
    assert "exploded" in md and re.search(r"\| error +\|", md)  # the status cell (tabulate pads cells)


def test_latex_paper_style(run_dir):
    tex = render(load_run(run_dir), "latex")
    assert tex.count(r"\begin{tabular}") == 1 and r"\toprule" in tex and r"\bottomrule" in tex
    assert "Params (M) & GMACs & Throughput (im/s) & Top-1 (\\%)" in tex
    assert r"\textbf{" in tex and r"\caption{Device: cpu" in tex and "batch: 1" in tex
    assert "test\\_tiny" in tex and "test_tiny" not in tex.replace("test\\_tiny", "")
    assert r"\multicolumn" in tex  # one block per model


def test_latex_bold_marks_the_best_non_dense_value():
    recs = []
    for variant, gmacs, tp in (("dense", 4.0, 10.0), ("tosa", 3.0, 12.0), ("tome", 2.5, 11.0)):
        recs.append({"config_hash": variant, "status": "ok", "model": "m", "variant": variant, "batch_size": 8,
                     "dtype": "fp32", "device": "cpu", "img_size": 224, "grid_keeps": [] if variant == "dense" else [0.5],
                     "params": 1e6, "gmacs": gmacs, "throughput_img_s": tp, "options": {}})
    tex = to_latex(frame(recs))
    assert r"\textbf{2.50}" in tex and r"\textbf{12.0}" in tex
    assert r"\textbf{4.00}" not in tex and r"\textbf{1.00}" not in tex  # dense excluded; equal params not bold


def test_csv_has_every_column_with_units(run_dir):
    csv = render(load_run(run_dir), "csv")
    head = csv.splitlines()[0].split(",")
    for col in ("GMACs", "GFLOPs", "throughput_im_s", "latency_ms", "peak_mem_MiB", "speedup_x", "config_hash", "status"):
        assert col in head


def test_table_renders_and_bad_format(run_dir):
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(load_run(run_dir), "table"))
    text = console.export_text()
    assert "throughput" in text and "Device: cpu" in text
    with pytest.raises(OptionError, match="format"):
        render(load_run(run_dir), "html")


def test_report_ignores_torn_tail_and_uses_latest_record(run_dir):
    with open(RunStore(run_dir).records_path, "ab") as fh:
        fh.write(b'{"config_hash": "abc", "sta')
    run = load_run(run_dir)
    assert run.torn_tail and all(r["config_hash"] != "abc" for r in run.records)
    assert to_markdown(frame(run.records), run.env)


def test_empty_run_is_an_error(tmp_path):
    plan = plan_new(tiny_suite(), tmp_path / "empty")
    with pytest.raises(RunStateError, match="no records"):
        render(load_run(plan.store.path), "md")
    with pytest.raises(RunStateError, match="not found"):
        load_run(tmp_path / "nowhere")


def test_speedup_prefers_the_paired_ratio():
    recs = []
    for variant, tp, paired in (("dense", 10.0, None), ("tosa", 30.0, 1.2), ("tome", 15.0, None)):
        recs.append({"config_hash": variant, "status": "ok", "model": "m", "variant": variant, "batch_size": 8,
                     "dtype": "fp32", "device": "cpu", "img_size": 224, "grid_keeps": [] if variant == "dense" else [0.5],
                     "params": 1e6, "gmacs": 1.0, "throughput_img_s": tp, "speedup_paired": paired, "options": {}})
    df = frame(recs).set_index("variant")
    assert df.loc["tosa", "speedup"] == pytest.approx(1.2)  # timed against its dense twin, not 30/10
    assert df.loc["tome", "speedup"] == pytest.approx(1.5)  # no pairing: ratio of separately timed rows
