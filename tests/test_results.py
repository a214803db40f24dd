"""The results package: one entry point to read a run, the committed run directories
stay readable, labels come from the method registry, and results never imports the sweep."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tosa_bench.errors import RunStateError
from tosa_bench.results import load_frame, load_run
from tosa_bench.results.store import RECORDS, read_records
from tosa_bench.results.tables import _setting, frame, render, to_latex, to_markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS_PKG = ROOT / "tosa_bench" / "results"
COMMITTED = sorted(p for p in (ROOT / "results").iterdir() if p.is_dir())


# ----------------------------------------------------------------------------- dependency direction
def test_results_sources_do_not_import_the_sweep():
    offenders = []
    for path in sorted(RESULTS_PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith("tosa_bench.sweep")]
    assert not offenders, offenders


def test_importing_results_loads_no_sweep_module():
    code = ("import sys, tosa_bench.results, tosa_bench.results.store, tosa_bench.results.tables; "
            "print(sorted(m for m in sys.modules if m.startswith('tosa_bench.sweep')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- committed runs
def _sweep_records(run_dir: Path) -> int:
    return len(read_records(run_dir / RECORDS).records)  # lines without a config hash are not sweep records


@pytest.mark.parametrize("run_dir", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_run_dirs_render(run_dir):
    if not (run_dir / RECORDS).is_file():
        pytest.skip(f"{run_dir.name}: no {RECORDS} (not a sweep run; the report never read it)")
    if not _sweep_records(run_dir):
        pytest.skip(f"{run_dir.name}: {RECORDS} has no config hashes (a benchmarks/ script's output, not a sweep run)")
    run = load_run(run_dir)
    assert run.records and not run.torn_tail and not run.bad_lines
    md = render(run, "md")
    assert md.startswith("|") and "Device:" in md
    assert len(load_frame(run_dir)) >= len(run.records)


def test_at_least_one_committed_sweep_run():
    assert any((p / RECORDS).is_file() and _sweep_records(p) for p in COMMITTED)


def test_load_run_of_a_missing_dir_is_a_run_state_error(tmp_path):
    with pytest.raises(RunStateError, match="not found"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(RunStateError, match="not a run directory"):
        load_run(tmp_path)


# ----------------------------------------------------------------------------- registry labels
def _rec(variant: str, options: dict, **kw) -> dict:
    return {"config_hash": f"{variant}-{sorted(options.items())}-{sorted(kw.items())}", "status": "ok", "model": "m",
            "variant": variant, "batch_size": 8, "dtype": "fp32", "device": "cpu", "img_size": 224,
            "grid_keeps": [] if variant == "dense" else [0.5], "params": 1e6, "gmacs": 1.0, "throughput_img_s": 10.0,
            "options": options, **kw}


@pytest.mark.parametrize("record, label", [
    (_rec("dense", {}), "-"),
    (_rec("tosa", {"keep": 0.5, "placement": "alternate"}), "keep 0.5 @ alternate"),
    (_rec("tosa", {"keep": 0.5, "placement": "alternate", "importance": "cls"}), "keep 0.5 @ alternate, importance cls"),
    (_rec("tosa", {"keep": 0.5, "placement": [3, 5]}, selector="sel.safetensors"), "keep 0.5 @ 3,5, trained selectors"),
    (_rec("random", {"keep": 0.5, "placement": "alternate", "seed": 0}), "keep 0.5 @ alternate, seed 0"),
    (_rec("tome", {"r": 8}), "r=8"),
    (_rec("tome", {"r": 8, "prop_attn": False}), "r=8, no prop-attn"),
    (_rec("evit", {"keep": 0.7, "locations": [3, 6, 9]}), "keep 0.7 @ 3,6,9"),
    (_rec("evit", {"keep": 0.7, "fuse": False}), "keep 0.7, no fuse"),
    (_rec("tome", {"r": 8}, match={"target": "tosa"}), "r=8, GMACs-matched"),
])
def test_setting_labels_come_from_the_registry(record, label):
    assert _setting(record) == label


def test_unregistered_variant_still_renders():
    recs = [_rec("dense", {}), _rec("tosa", {"keep": 0.5}), _rec("plugin_x", {"alpha": 1})]
    df = frame(recs)
    row = df[df["variant"] == "plugin_x"].iloc[0]
    assert row["method"] == "plugin_x" and row["setting"] == "-"
    assert list(df["variant"]) == ["dense", "tosa", "plugin_x"]  # unknown methods after the registered ones
    assert "plugin_x" in to_markdown(df) and r"plugin\_x" in to_latex(df)


# ----------------------------------------------------------------------------- formats
def test_markdown_aligns_numbers_right_and_escapes_pipes():
    recs = [_rec("dense", {}), _rec("tosa", {"keep": 0.5, "placement": "a|b"})]
    md = to_markdown(frame(recs))
    lines = md.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    align = [c.strip() for c in lines[1].strip("|").split("|")]
    assert align[head.index("method")].startswith(":") and align[head.index("GMACs")].endswith(":")
    assert r"a\|b" in md and "0.5" in md and "10.0" in md


def test_latex_escapes_and_model_subheaders():
    recs = [_rec("dense", {}), _rec("tosa", {"keep": 0.5}), _rec("tome", {"r": 2})]
    recs += [{**r, "model": "my_net&co", "config_hash": r["config_hash"] + "-2"} for r in recs]
    tex = to_latex(frame(recs), label="tab:x")
    assert tex.count(r"\begin{table}") == 1 and r"\label{tab:x}" in tex and r"\toprule" in tex
    assert r"\multicolumn{7}{l}{\textit{my\_net\&co}} \\" in tex and r"\multicolumn{7}{l}{\textit{m}} \\" in tex
    assert "my_net" not in tex.replace(r"my\_net", "")
    body = tex.split(r"\midrule", 1)[1]
    assert body.index(r"\textit{m}") < body.index(r"m (dense)") < body.index(r"\textit{my\_net") < body.index(r"my\_net\&co (dense)")


def test_latex_one_table_per_setup():
    recs = [_rec("dense", {}), _rec("tosa", {"keep": 0.5})]
    recs += [{**r, "batch_size": 16, "config_hash": r["config_hash"] + "-16"} for r in recs]
    tex = to_latex(frame(recs), label="tab:x")
    assert tex.count(r"\begin{table}[t]") == 2 and r"\label{tab:x-1}" in tex and r"\label{tab:x-2}" in tex


# ----------------------------------------------------------------------------- energy column
def test_energy_column_only_where_some_row_has_it_with_unit_and_counter():
    recs = [_rec("dense", {}), _rec("tosa", {"keep": 0.5})]
    md = to_markdown(frame(recs))
    assert "energy (J/img)" not in md and "Energy:" not in md  # not measured anywhere: no column
    counter = "nvml total energy counter (mJ), device sync around >=1 s windows"
    recs = [_rec("dense", {}, energy_j_per_img=0.25, energy_method=counter),
            _rec("tosa", {"keep": 0.5}, energy_j_per_img=0.125, energy_ratio=0.5, energy_method=counter),
            _rec("evit", {"keep": 0.5}, energy_reason="unavailable: fake")]
    df = frame(recs)
    md = to_markdown(df)
    head = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    col = head.index("energy (J/img)")
    cells = [[c.strip() for c in line.strip("|").split("|")][col] for line in md.splitlines()[2:5]]
    assert cells == ["0.25", "0.125", ""]
    assert f"Energy: joules per image (J/img), median over windows of timed batches, each window the energy a counter read ({counter})" in md
    assert "energy_J_per_img" in render_csv(df)


def render_csv(df):
    from tosa_bench.results.tables import to_csv

    return to_csv(df)


def test_a_record_with_an_energy_field_of_the_wrong_type_is_named():
    from tosa_bench.results.tables import check_records

    with pytest.raises(RunStateError, match="field 'energy_ratio' is 'low', expected a number or null"):
        check_records([_rec("tosa", {"keep": 0.5}, energy_ratio="low")], "x")
