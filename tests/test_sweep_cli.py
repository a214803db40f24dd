"""`tosa-bench sweep`, `report` and `merge` through typer's CliRunner (tiny models,
tiny time budget)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tosa_bench.cli import app
from tosa_bench.results.store import read_records

runner = CliRunner()
FAST = ["--model", "test_tiny", "-b", "1", "--warmup", "1", "--repeats", "2", "--time-budget", "0.05",
        "--no-latency", "--no-memory", "--device", "cpu", "--no-figures"]


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    res = _ok(runner.invoke(app, ["sweep", *FAST, "--variant", "dense", "--variant", "tosa", "--variant", "evit",
                                  "--keep", "0.5", "--keep", "0.7", "--out", str(out)]))
    return out, res


def test_sweep_writes_store_and_prints_table(swept):
    out, res = swept
    recs = read_records(out / "records.jsonl").records
    assert len(recs) == 5 and all(r["status"] == "ok" for r in recs)
    assert {r["variant"] for r in recs} == {"dense", "tosa", "evit"}
    for name in ("env.json", "suite.toml", "table.md", "table.csv"):
        assert (out / name).is_file()
    assert "speed-up (x)" in res.output and "results:" in res.output
    assert json.loads((out / "env.json").read_text())["device"] == "cpu"


@pytest.mark.parametrize("fmt,needle", [("md", "| method "), ("latex", r"\begin{tabular}"), ("csv", "config_hash"), ("table", "throughput (im/s)")])
def test_report_formats(swept, fmt, needle):
    out, _ = swept
    res = _ok(runner.invoke(app, ["report", str(out), "--format", fmt]))
    assert needle in res.output


def test_report_to_file(swept, tmp_path):
    out, _ = swept
    _ok(runner.invoke(app, ["report", str(out), "--format", "md", "--output", str(tmp_path / "t.md")]))
    assert "GMACs" in (tmp_path / "t.md").read_text()


def test_resume_of_a_complete_run_measures_nothing(swept):
    out, _ = swept
    res = _ok(runner.invoke(app, ["sweep", "--resume", str(out)]))
    assert "5 points already ok" in res.output
    assert len(read_records(out / "records.jsonl").records) == 5


def test_shards_and_merge(tmp_path):
    dirs = []
    for i in (1, 2):
        d = tmp_path / f"s{i}"
        _ok(runner.invoke(app, ["sweep", *FAST, "--no-timing", "--variant", "dense", "--variant", "tosa",
                                "--keep", "0.5", "--keep", "0.7", "--shard", f"{i}/2", "--out", str(d)]))
        dirs.append(d)
    counts = [len(read_records(d / "records.jsonl").records) for d in dirs]
    assert sum(counts) == 3 and min(counts) >= 1
    res = _ok(runner.invoke(app, ["merge", *map(str, dirs), "--out", str(tmp_path / "m")]))
    assert "3 of 3 grid points" in res.output
    assert len(read_records(tmp_path / "m" / "records.jsonl").records) == 3
    res = runner.invoke(app, ["merge", str(dirs[0]), "--out", str(tmp_path / "m2")])
    assert res.exit_code == 0 and "no record" in res.output


def test_dry_run_lists_the_grid(tmp_path):
    res = _ok(runner.invoke(app, ["sweep", *FAST, "--keep", "0.5", "--match", "gmacs", "--dry-run", "--out", str(tmp_path / "x")]))
    assert "5 points" in res.output
    assert not (tmp_path / "x").exists()


def test_suite_file_through_cli(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nname = "mini"\n[grid]\nmodels = ["test_tiny"]\nvariants = ["dense", "random"]\n'
                     'keeps = [0.5]\nbatch_size = 1\ndevices = ["cpu"]\n[measure]\ntiming = false\nmemory = false\n')
    _ok(runner.invoke(app, ["sweep", "--suite", str(suite), "--runs-dir", str(tmp_path / "runs")]))
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-mini") and len(read_records(run / "records.jsonl").records) == 2


@pytest.mark.parametrize("args,needle", [
    (["--keep", "2"], "--keep"),
    (["--model", "nope"], "--model"),
    (["--shard", "3/2"], "shard"),
    (["--checkpoint", "/does/not/exist.pth"], "no such file"),
    (["--dtype", "fp16", "--device", "cpu"], "fp16"),
    (["--placement", "1,99"], "placement"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    out = tmp_path / "run"
    res = runner.invoke(app, ["sweep", *FAST, *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and needle in res.output and "Traceback" not in res.output
    assert not (out / "records.jsonl").exists()


def test_malformed_suite_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nkeeps = [0.5, \"x\"]\n")
    res = runner.invoke(app, ["sweep", "--suite", str(bad), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and str(bad) in res.output and "grid.keeps" in res.output
    assert not (tmp_path / "run").exists()


def test_resume_refuses_grid_options_and_unknown_dirs(tmp_path, swept):
    out, _ = swept
    res = runner.invoke(app, ["sweep", "--resume", str(out), "--keep", "0.3", "--model", "test_deep", "--time-budget", "1"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    for needle in ("--keep (stored 0.5,0.7, given 0.3)", "--model (stored test_tiny, given test_deep)",
                   "--time-budget (stored 0.05, given 1.0)", f"resume it as stored with: tosa-bench sweep --resume {out}"):
        assert needle in res.output
    res = runner.invoke(app, ["sweep", "--resume", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not found" in res.output


def test_the_same_command_with_resume_continues(swept):
    """The command that made the run, plus --resume: accepted (every option equals the
    stored one), nothing measured twice."""
    out, _ = swept
    same = ["sweep", *FAST, "--variant", "dense", "--variant", "tosa", "--variant", "evit", "--keep", "0.5", "--keep", "0.7",
            "--out", str(out), "--resume", str(out)]
    res = _ok(runner.invoke(app, same))
    assert "5 points already ok" in res.output
    assert len(read_records(out / "records.jsonl").records) == 5
    res = runner.invoke(app, [*same, "--shard", "1/2"])
    assert res.exit_code == 2 and "--shard (stored none, given 1/2)" in res.output


def test_dry_run_resume_measures_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["sweep", *FAST, "--no-timing", "--variant", "dense", "--variant", "tosa", "--keep", "0.5", "--keep", "0.7", "--out", str(out)]
    _ok(runner.invoke(app, args))
    lines = (out / "records.jsonl").read_bytes().splitlines(keepends=True)
    (out / "records.jsonl").write_bytes(b"".join(lines[:1]))  # as if stopped after the first point
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    res = _ok(runner.invoke(app, [*args, "--resume", str(out), "--dry-run"]))
    assert "2 of 3 points to measure; 1 already ok" in res.output and "would measure 2 points" in res.output
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before  # nothing written
    assert len(read_records(out / "records.jsonl").records) == 1


def test_existing_out_dir_needs_resume(swept):
    out, _ = swept
    res = runner.invoke(app, ["sweep", *FAST, "--out", str(out)])
    assert res.exit_code == 2 and "--resume" in res.output and "--overwrite" in res.output


@pytest.mark.parametrize("where,needle", [
    ("/", "is the file-system root"), ("~", "is your home folder"), ("file", "exists and is not a directory"),
    ("full", "is not empty and not a run directory"),
])
def test_out_dir_refusals(tmp_path, where, needle):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    target = {"file": str(tmp_path / "file"), "full": str(tmp_path / "full")}.get(where, where)
    for extra in ([], ["--overwrite"]):
        res = runner.invoke(app, ["sweep", *FAST, "--no-timing", "--variant", "dense", "--out", target, *extra])
        assert res.exit_code == 2 and needle in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "x"


def test_overwrite_replaces_an_earlier_run(tmp_path):
    out = tmp_path / "run"
    args = ["sweep", *FAST, "--no-timing", "--variant", "dense", "--out", str(out)]
    _ok(runner.invoke(app, [*args, "--keep", "0.5"]))
    res = runner.invoke(app, [*args, "--overwrite", "--variant", "tosa", "--keep", "0.5", "--checkpoint", str(tmp_path / "no.pth")])
    assert res.exit_code == 2 and len(read_records(out / "records.jsonl").records) == 1  # bad input: the old run stays
    res = _ok(runner.invoke(app, [*args, "--overwrite", "--variant", "tosa", "--keep", "0.5"]))
    assert "removed the earlier run" in res.output
    assert sorted(r["variant"] for r in read_records(out / "records.jsonl").records) == ["dense", "tosa"]


def test_default_run_directory_is_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _ok(runner.invoke(app, ["sweep", *FAST, "--no-timing", "--variant", "dense"]))
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "records.jsonl").is_file() and not (tmp_path / "results").exists()


def test_empty_suite_file_is_refused(tmp_path):
    for text in ("", "# only a comment\n\n"):
        empty = tmp_path / "empty.toml"
        empty.write_text(text)
        res = runner.invoke(app, ["sweep", "--suite", str(empty), "--out", str(tmp_path / "run")])
        assert res.exit_code == 2 and "the suite is empty" in res.output and len(res.output.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_report_of_missing_dir(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "error:" in res.output
