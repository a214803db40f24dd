"""The CLI's error contract, driven through real commands.

Bad input (a :class:`tosa_bench.errors.UserInputError`): exit 2 and exactly one line on
stderr, ``error: <message>``, naming the bad value and what is allowed, printed verbatim
(square brackets included), no traceback. Anything else is a bug: exit 1, one line that
says so and names the file the traceback was written to; ``--debug`` prints it too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tosa_bench.cli import app
from tosa_bench.errors import CheckpointError, DatasetError, OptionError, OutputPathError, SuiteError, UserInputError

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def user_error(r, *needles: str) -> str:
    """Assert the bad-input contract on result ``r``; return the one stderr line."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    err = lines(r.stderr)
    assert len(err) == 1, r.stderr
    assert err[0].startswith("error: "), err[0]
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert "Traceback" not in r.output
    return err[0]


# ------------------------------------------------------------------------- the family
def test_family_members_are_value_errors():
    for cls in (OptionError, CheckpointError, DatasetError, SuiteError, OutputPathError):
        assert issubclass(cls, UserInputError) and issubclass(cls, ValueError)
    # the old import paths give the shared classes
    from tosa_bench.data import DatasetError as D
    from tosa_bench.models.checkpoint import CheckpointError as C
    from tosa_bench.sweep.suite import SuiteError as S

    assert (C, D, S) == (CheckpointError, DatasetError, SuiteError)


# ------------------------------------------------------------------------- options
def test_option_keep_nan_sweep():
    line = user_error(run("sweep", "--model", "test_tiny", "--keep", "nan", "--dry-run"), "--keep", "(0, 1]")
    assert "[nan]" in line or "nan" in line.split("got", 1)[1], line  # the value, not swallowed as markup


def test_option_keep_too_big_profile():
    user_error(run("profile", "--model", "test_tiny", "--keep", "1.5", "--no-timing", "--device", "cpu"), "1.5", "(0, 1]")


def test_option_input_size_zero():
    user_error(run("eval", "--nyu", "/nonexistent", "--model", "test_tiny", "--device", "cpu", "--img-size", "0x0"),
               "--img-size", "'0x0'", "1..16384")
    # the old spelling (deprecated names) still gives the one line, no notes before it
    user_error(run("eval", "nyu", "--data", "/nonexistent", "--model", "test_tiny", "--device", "cpu", "--input-size", "0x0"),
               "--img-size", "'0x0'")


def test_option_unknown_model_lists_the_known_ones():
    user_error(run("profile", "--model", "deit_huge", "--no-timing"), "'deit_huge'", "test_tiny")


def test_option_bad_device():
    user_error(run("profile", "--model", "test_tiny", "--device", "gpu0", "--no-timing"), "'gpu0'", "auto, cpu or cuda[:N]")


# ------------------------------------------------------------------------- checkpoints
def test_checkpoint_truncated(tmp_path):
    torch = pytest.importorskip("torch")
    whole = tmp_path / "whole.pth"
    torch.save({"pos_embed": torch.zeros(1, 17, 48)}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    user_error(run("profile", "--model", "test_tiny", "--checkpoint", str(cut), "--no-timing", "--device", "cpu"),
               str(cut), "cannot be read as tensors only")


class _Payload:
    """Unpickling this creates ``path`` (stands for any code a pickle can run)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_code_is_refused_unrun(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"pos_embed": torch.zeros(1, 17, 48)}, "extra": _Payload(marker)}, evil)
    assert not marker.exists()
    user_error(run("profile", "--model", "test_tiny", "--checkpoint", str(evil), "--no-timing", "--device", "cpu"),
               str(evil), "not only tensors")
    assert not marker.exists(), "the checkpoint's code ran"


def test_checkpoint_directory(tmp_path):
    user_error(run("profile", "--model", "test_tiny", "--checkpoint", str(tmp_path), "--no-timing", "--device", "cpu"),
               str(tmp_path), "is a directory", ".pth")


# ------------------------------------------------------------------------- datasets
def test_dataset_empty_dir(tmp_path):
    empty = tmp_path / "val"
    empty.mkdir()
    user_error(run("eval", "--imagenet", str(empty), "--model", "test_tiny", "--device", "cpu", "--workers", "0"),
               str(empty), "empty", "<wnid>/*.JPEG")


# ------------------------------------------------------------------------- suites
def test_suite_unknown_section_printed_verbatim(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text("[gird]\nmodels = ['test_tiny']\n")
    user_error(run("sweep", "--suite", str(suite), "--dry-run"),
               str(suite), "'gird'", "[suite], [grid], [weights], [data], [measure]")


def test_suite_bad_toml(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text("[grid\nmodels = \n")
    user_error(run("sweep", "--suite", str(suite), "--dry-run"), str(suite), "not valid TOML")


# ------------------------------------------------------------------------- output paths
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors") / "run"
    r = run("sweep", "--model", "test_tiny", "--variant", "dense", "--no-timing", "--no-memory", "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output
    return out


def test_output_parent_is_a_file(tiny_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    target = blocker / "table.md"
    for fmt in ("md", "table"):
        user_error(run("report", str(tiny_run), "--format", fmt, "-o", str(target)), str(target), f"{blocker} is a file, not a directory")
    assert blocker.read_text() == "not a folder"


def test_output_is_a_directory(tiny_run, tmp_path):
    user_error(run("report", str(tiny_run), "-o", str(tmp_path)), str(tmp_path), "is a directory")


# ------------------------------------------------------------------------- bugs
@pytest.fixture
def boom(monkeypatch, tmp_path):
    """``data make`` raising a RuntimeError (a bug), tracebacks going under tmp_path."""
    import tosa_bench.data.synthetic as synthetic

    def broken(*args, **kwargs):
        raise RuntimeError("boom [x]\nsecond line")

    monkeypatch.setattr(synthetic, "make_dataset", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return ["data", "make", "shapes", "--out", str(tmp_path / "shapes")]


def _bug_line(r) -> Path:
    assert r.exit_code == 1, (r.exit_code, r.output)
    err = lines(r.stderr)
    line = err[-1]
    assert line.startswith("internal error (a bug in tosa-bench): RuntimeError: boom [x]; traceback written to "), line
    assert "second line" not in line and "--debug" in line
    path = Path(re.search(r"traceback written to (\S+) \(rerun", line).group(1))
    assert path.is_file()
    text = path.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom [x]" in text and "broken" in text
    return path


def test_internal_error_writes_the_traceback(boom, tmp_path):
    r = run(*boom)
    assert len(lines(r.stderr)) == 1, r.stderr
    assert "Traceback" not in r.output
    path = _bug_line(r)
    assert path.parent == tmp_path / "cache" / "tosa-bench" / "tracebacks"
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}\.\d{{6}}Z-{os.getpid()}\.txt", path.name), path.name


def test_internal_error_debug_prints_the_traceback(boom):
    for args in ([*boom, "--debug"], ["--debug", *boom]):
        r = run(*args)
        assert "Traceback (most recent call last)" in r.stderr and "RuntimeError: boom [x]" in r.stderr
        _bug_line(r)
    r = run(*boom)  # the root flag does not stick to the next call
    assert "Traceback" not in r.stderr


def test_internal_error_falls_back_to_the_temp_dir(boom, tmp_path, monkeypatch):
    import tempfile

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # cache dir cannot be created
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    path = _bug_line(run(*boom))
    assert path.parent == tmp_path / "tmp" / "tosa-bench" / "tracebacks"


def test_user_error_debug_prints_the_traceback():
    r = run("profile", "--model", "deit_huge", "--no-timing", "--debug")
    assert r.exit_code == 2
    assert "Traceback (most recent call last)" in r.stderr
    assert lines(r.stderr)[-1].startswith("error: model: unknown model 'deit_huge'")


def test_typer_exit_and_usage_errors_pass_through(monkeypatch, tmp_path):
    r = run("profile", "--batch-size", "0")  # click's own range check: a usage error
    assert r.exit_code == 2 and "internal error" not in r.output
    import tosa_bench.data.synthetic as synthetic

    for raised, code in ((typer.Exit(3), 3), (typer.BadParameter("no good"), 2)):
        def raise_it(*args, _e=raised, **kwargs):
            raise _e

        monkeypatch.setattr(synthetic, "make_dataset", raise_it)
        r = run("data", "make", "shapes", "--out", str(tmp_path / "x"))
        assert r.exit_code == code and "internal error" not in r.output, r.output


def test_every_command_has_debug():
    root = typer.main.get_command(app)
    assert "--debug" in [o for p in root.params for o in p.opts]

    def leaves(cmd, path: str):
        if hasattr(cmd, "commands"):  # a group (Typer's own click)
            for name, sub in cmd.commands.items():
                yield from leaves(sub, f"{path} {name}")
        else:
            yield path, cmd

    found = dict(leaves(root, "tosa-bench"))
    assert {"tosa-bench sweep", "tosa-bench report", "tosa-bench merge", "tosa-bench profile", "tosa-bench eval",
            "tosa-bench data make", "tosa-bench models"} <= set(found)
    for name, cmd in found.items():
        assert "--debug" in [o for p in cmd.params for o in p.opts], name


def test_run_script_turns_input_errors_into_one_line_and_exit_2(capsys):
    from tosa_bench.errors import run_script

    def bad() -> int:
        raise OptionError("dtype: fp16 autocast is not supported on CPU here\nsecond line")

    assert run_script(bad) == 2
    assert capsys.readouterr().err == "error: dtype: fp16 autocast is not supported on CPU here\n"
    assert run_script(lambda: 7) == 7

    def bug() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # not input: a traceback, as the CLI does with --debug
        run_script(bug)


@pytest.mark.parametrize("script,args", [
    ("aa_check.py", ["--dtype", "fp16"]),
    ("tosa_speedup.py", ["--dtype", "fp16"]),
    ("tosa_speedup_grid.py", ["--dtypes", "fp32,fp16"]),
])
def test_benchmark_scripts_refuse_a_dtype_the_cpu_cannot_run_in_one_line(script, args, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(root / "benchmarks" / script), *args, "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: dtype: fp16 autocast is not supported on CPU here; use fp32 or bf16 on CPU, fp16 on CUDA"]
    assert not out.exists()  # refused before anything was measured or written
