"""The bad-input catalogue: every command, run with the values a new user gets wrong.

Each case must end the same way: exit code 2, exactly one line on stderr that starts
with ``error:``, names what was wrong and what is allowed (the needles), and no
traceback anywhere; nothing is measured, and a checkpoint that carries code never runs
it. Commands run in-process (Typer's CliRunner) on the tiny test model, so the whole
catalogue takes seconds.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tosa_bench.cli import app

runner = CliRunner()
TINY = ["--model", "test_tiny", "--device", "cpu"]
FAST = [*TINY, "--no-timing"]
SWEEP = ["sweep", *TINY, "--variant", "dense", "--no-timing", "--no-memory"]
BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "ci-cpu.json"


class _Payload:
    """Unpickling this creates the file at ``path``: it stands for any code a pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad and good inputs, made once: files, folders, checkpoints, suites, a run."""
    import torch

    from tosa_bench.build import build_model

    d = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {"dir": d / "folder", "file": d / "afile", "empty": d / "empty.pth", "garbage": d / "garbage.pth"}
    f["dir"].mkdir()
    f["file"].write_text("a regular file\n")
    f["empty"].write_bytes(b"")
    f["garbage"].write_bytes(bytes(range(256)) * 4)
    f["under_file"] = f["file"] / "x.json"  # its parent is a file: no one can create it, root included
    whole = d / "whole.pth"
    torch.save(build_model("test_tiny").state_dict(), whole)
    f["truncated"] = d / "truncated.pth"
    f["truncated"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    f["other_model"] = d / "deep.pth"
    torch.save(build_model("test_deep").state_dict(), f["other_model"])
    f["marker"] = d / "payload-ran"
    f["evil"] = d / "evil.pth"
    torch.save({"model": build_model("test_tiny").state_dict(), "extra": _Payload(f["marker"])}, f["evil"])
    assert not f["marker"].exists()
    for name, text in {"wrong_key": "[grid]\nmodelz = ['test_tiny']\n", "wrong_type": "[grid]\nkeeps = 'half'\n",
                       "bad_toml": "[grid\nmodels = \n", "empty_suite": "# nothing here\n"}.items():
        f[name] = d / f"{name}.toml"
        f[name].write_text(text)
    f["shapes"] = d / "shapes"
    f["rooms"] = d / "rooms"
    f["run"] = d / "run"
    for args in (["data", "make", "shapes", "--out", str(f["shapes"]), "--n", "10", "--size", "32"],
                 ["data", "make", "rooms", "--out", str(f["rooms"]), "--n", "2", "--size", "32"],
                 [*SWEEP, "--out", str(f["run"])]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    f["bad_run"] = d / "bad_run"
    f["bad_run"].mkdir()
    for name in os.listdir(f["run"]):
        if (f["run"] / name).is_file():
            (f["bad_run"] / name).write_bytes((f["run"] / name).read_bytes())
    lines = (f["bad_run"] / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["gmacs"] = "abc"
    (f["bad_run"] / "records.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    return f


# (case id, args with {name} placeholders filled from the files fixture, needles of the line)
CASES = [
    # keep
    *[(f"profile-keep-{v}", ["profile", *FAST, "--keep", v], ["--keep", "(0, 1]"]) for v in ("0", "1.5", "-1", "nan", "abc")],
    *[(f"sweep-keep-{v}", [*SWEEP, "--variant", "tosa", "--keep", v, "--dry-run"], ["--keep", "(0, 1]"]) for v in ("0", "1.5", "-1", "nan", "abc")],
    *[(f"eval-keep-{v}", ["eval", "--imagenet", "{shapes}", *TINY, "--variant", "tosa", "--keep", v], ["--keep", "(0, 1]"]) for v in ("0", "nan", "abc")],
    # names
    ("profile-model", ["profile", "--model", "deit_huge", "--no-timing"], ["'deit_huge'", "known models", "test_tiny"]),
    ("sweep-model", ["sweep", "--model", "deit_huge", "--dry-run"], ["deit_huge", "test_tiny"]),
    ("eval-model", ["eval", "--imagenet", "{shapes}", "--model", "deit_huge"], ["'deit_huge'", "test_tiny"]),
    ("profile-variant", ["profile", *FAST, "--variant", "tosaa"], ["'tosaa'", "dense, tosa"]),
    ("sweep-variant", [*SWEEP, "--variant", "tosaa", "--dry-run"], ["tosaa", "tosa"]),
    ("profile-placement", ["profile", *FAST, "--placement", "diagonal"], ["'diagonal'", "alternate"]),
    ("sweep-placement", [*SWEEP, "--variant", "tosa", "--placement", "diagonal", "--dry-run"], ["diagonal", "alternate"]),
    ("profile-placement-past-depth", ["profile", *FAST, "--placement", "9"], ["9", "[1, 5]", "6-block"]),
    ("sweep-placement-past-depth", [*SWEEP, "--variant", "tosa", "--placement", "9", "--dry-run"], ["9", "[1, 5]"]),
    ("profile-device", ["profile", "--model", "test_tiny", "--no-timing", "--device", "gpu0"], ["'gpu0'", "auto, cpu or cuda"]),
    # numbers
    ("profile-batch-0", ["profile", *FAST, "--batch-size", "0"], ["--batch-size", "'0'", ">= 1"]),
    ("sweep-batch-0", [*SWEEP, "--batch-size", "0", "--dry-run"], ["--batch-size", "positive"]),
    ("eval-batch-0", ["eval", "--imagenet", "{shapes}", *TINY, "--batch-size", "0"], ["--batch-size", ">= 1"]),
    ("eval-workers--1", ["eval", "--imagenet", "{shapes}", *TINY, "--workers", "-1"], ["--workers", ">= 0"]),
    ("profile-time-budget", ["profile", *TINY, "--time-budget", "-1"], ["--time-budget", "> 0"]),
    ("profile-img-size-huge", ["profile", *FAST, "--img-size", "4000"], ["--img-size", "tokens", "GiB"]),
    ("sweep-img-size-huge", [*SWEEP, "--img-size", "4000"], ["--img-size", "tokens", "GiB"]),
    ("profile-img-size-abc", ["profile", *FAST, "--img-size", "abc"], ["--img-size", "'abc'", "N"]),
    ("profile-img-size-nonsquare", ["profile", *FAST, "--img-size", "32x64"], ["--img-size", "square"]),
    ("eval-img-size-0x0", ["eval", "--nyu", "{rooms}", *TINY, "--img-size", "0x0"], ["--img-size", "'0x0'", "1..16384"]),
    ("eval-img-size-huge", ["eval", "--nyu", "{rooms}", *TINY, "--img-size", "4000x4000"], ["--img-size", "tokens", "GiB"]),
    ("compare-tolerance", ["compare", "{run}", "{run}", "--tolerance", "0"], ["--tolerance", "(0, 10)"]),
    ("data-n-0", ["data", "make", "shapes", "--out", "{dir}/new", "--n", "0"], ["--n", ">= 1"]),
    ("data-kind", ["data", "make", "cubes", "--out", "{dir}/new"], ["'cubes'", "'shapes'"]),
    ("models-option", ["models", "--bogus"], ["--bogus"]),
    # checkpoints
    ("ckpt-missing", ["profile", *FAST, "--checkpoint", "{dir}/nope.pth"], ["nope.pth", "no such file"]),
    ("ckpt-empty", ["profile", *FAST, "--checkpoint", "{empty}"], ["empty.pth", "cannot be read as tensors only"]),
    ("ckpt-garbage", ["profile", *FAST, "--checkpoint", "{garbage}"], ["garbage.pth", "refused"]),
    ("ckpt-directory", ["profile", *FAST, "--checkpoint", "{dir}"], ["is a directory", ".safetensors"]),
    ("ckpt-truncated", ["profile", *FAST, "--checkpoint", "{truncated}"], ["truncated.pth", "cannot be read as tensors only"]),
    ("ckpt-other-model", ["profile", *FAST, "--checkpoint", "{other_model}"], ["deep.pth", "does not fit test_tiny", "shape mismatch"]),
    ("ckpt-code", ["profile", *FAST, "--checkpoint", "{evil}"], ["evil.pth", "not only tensors", "refused"]),
    ("sweep-ckpt-code", [*SWEEP, "--checkpoint", "{evil}", "--out", "{dir}/s-evil"], ["evil.pth", "not only tensors"]),
    ("eval-ckpt-code", ["eval", "--imagenet", "{shapes}", *TINY, "--checkpoint", "{evil}"], ["evil.pth", "not only tensors"]),
    ("eval-depth-ckpt-code", ["eval", "--nyu", "{rooms}", *TINY, "--depth-checkpoint", "{evil}"], ["evil.pth", "not only tensors"]),
    ("sweep-ckpt-truncated", [*SWEEP, "--checkpoint", "{truncated}", "--out", "{dir}/s-trunc"], ["truncated.pth", "tensors only"]),
    ("eval-depth-ckpt-backbone", ["eval", "--nyu", "{rooms}", *TINY, "--depth-checkpoint", "{other_model}"], ["deep.pth", "no DPT depth head"]),
    ("eval-depth-ckpt-for-imagenet", ["eval", "--imagenet", "{shapes}", *TINY, "--depth-checkpoint", "{other_model}"], ["--depth-checkpoint", "--nyu"]),
    # datasets
    ("eval-no-dataset", ["eval", *TINY], ["--imagenet DIR", "--nyu PATH"]),
    ("eval-two-datasets", ["eval", "--imagenet", "{shapes}", "--nyu", "{rooms}", *TINY], ["one of --imagenet", "--nyu"]),
    ("eval-imagenet-missing", ["eval", "--imagenet", "{dir}/nope", *TINY], ["nope", "not found"]),
    ("eval-imagenet-empty", ["eval", "--imagenet", "{dir}", *TINY], ["empty", "<wnid>/*.JPEG"]),
    ("eval-imagenet-file", ["eval", "--imagenet", "{file}", *TINY], ["afile", "not a directory"]),
    ("eval-imagenet-classes", ["eval", "--imagenet", "{shapes}", "--model", "deit_tiny_patch16_224", "--device", "cpu"], ["10 class folders", "test_tiny"]),
    ("eval-nyu-missing", ["eval", "--nyu", "{dir}/nope.mat", *TINY], ["nope.mat"]),
    ("eval-nyu-garbage", ["eval", "--nyu", "{garbage}", *TINY], ["garbage.pth"]),
    ("sweep-imagenet-missing", [*SWEEP, "--imagenet", "{dir}/nope", "--out", "{dir}/s-nope"], ["nope", "not found"]),
    # suites
    ("suite-missing", ["sweep", "--suite", "{dir}/nope.toml", "--dry-run"], ["nope.toml", "not found"]),
    ("suite-directory", ["sweep", "--suite", "{dir}", "--dry-run"], ["is a directory", ".toml"]),
    ("suite-wrong-key", ["sweep", "--suite", "{wrong_key}", "--dry-run"], ["modelz"]),
    ("suite-wrong-type", ["sweep", "--suite", "{wrong_type}", "--dry-run"], ["keeps", "'half'"]),
    ("suite-bad-toml", ["sweep", "--suite", "{bad_toml}", "--dry-run"], ["bad_toml.toml", "not valid TOML"]),
    ("suite-empty", ["sweep", "--suite", "{empty_suite}", "--dry-run"], ["empty_suite.toml", "empty"]),
    ("check-suite-empty", ["check", "--suite", "{empty_suite}", "--baseline", str(BASELINE)], ["empty"]),
    # output paths
    ("profile-out-under-file", ["profile", *FAST, "--out", "{under_file}"], ["--out", "afile is a file"]),
    ("profile-out-directory", ["profile", *FAST, "--out", "{dir}"], ["--out", "is a directory"]),
    ("profile-save-old-name", ["profile", *FAST, "--save", "{under_file}"], ["--out", "afile is a file"]),
    ("report-out-under-file", ["report", "{run}", "-o", "{under_file}"], ["--out", "afile is a file"]),
    ("report-out-directory", ["report", "{run}", "--format", "md", "-o", "{dir}"], ["--out", "is a directory"]),
    ("eval-out-under-file", ["eval", "--imagenet", "{shapes}", *TINY, "--out", "{under_file}"], ["--out", "afile is a file"]),
    ("data-out-under-file", ["data", "make", "shapes", "--out", "{under_file}"], ["--out", "afile is a file"]),
    ("data-out-not-empty", ["data", "make", "shapes", "--out", "{shapes}"], ["--out", "not empty", "--overwrite"]),
    ("data-overwrite-foreign", ["data", "make", "shapes", "--out", "{run}", "--overwrite"], ["not a set made by", "remove it yourself"]),
    ("sweep-out-under-file", [*SWEEP, "--out", "{under_file}"], ["afile"]),
    ("merge-out-under-file", ["merge", "{run}", "--out", "{under_file}"], ["afile"]),
    # runs and records
    ("report-missing", ["report", "{dir}/nope"], ["nope", "not found"]),
    ("report-not-a-run", ["report", "{dir}"], ["not a run directory"]),
    ("report-format", ["report", "{run}", "--format", "html"], ["'html'", "'md'"]),
    ("report-wrong-type", ["report", "{bad_run}"], ["record 1", "'gmacs'", "'abc'", "expected a number"]),
    ("compare-missing", ["compare", "{dir}/nope", "{run}"], ["nope", "not found"]),
    ("merge-missing", ["merge", "{dir}/nope", "--out", "{dir}/m"], ["nope", "not found"]),
    ("check-baseline-missing", ["check", "--baseline", "{dir}/nope.json", "--run", "{run}"], ["nope.json", "--update-baseline"]),
    ("check-baseline-not-json", ["check", "--baseline", "{garbage}", "--run", "{run}"], ["garbage.pth"]),
    ("check-neither", ["check", "--baseline", "{dir}/b.json"], ["--suite", "--run"]),
    ("check-on-noisy", ["check", "--baseline", str(BASELINE), "--run", "{run}", "--on-noisy", "maybe"], ["--on-noisy", "'maybe'", "'pass'", "'fail'"]),
    # figures and training (their own tests cover the rest)
    ("plot-missing", ["plot", "{dir}/nope"], ["nope", "not found"]),
    ("plot-out-under-file", ["plot", "{run}", "--out", "{under_file}"], ["--out", "afile is a file"]),
    ("plot-format", ["plot", "{run}", "--format", "gif"], ["--format", "pdf, png, svg"]),
    ("show-tokens-missing", ["show-tokens", "{dir}/nope.jpg", "--model", "test_tiny"], ["nope.jpg", "no such file"]),
    ("show-tokens-not-an-image", ["show-tokens", "{file}", "--model", "test_tiny"], ["afile", "not a readable image"]),
    ("show-tokens-keep", ["show-tokens", "{file}", "--model", "test_tiny", "--keep", "abc"], ["--keep", "(0, 1]"]),
    ("train-epochs-0", ["train", "selector", "--data", "{shapes}", "--model", "test_tiny", "--epochs", "0"], ["--epochs", ">= 1"]),
    ("train-out-under-file", ["train", "selector", "--data", "{shapes}", "--model", "test_tiny", "--out", "{under_file}"], ["--out", "afile is a file"]),
    ("demo-out-under-file", ["demo", "--out", "{under_file}"], ["--out", "afile is a file"]),
    ("demo-epochs-0", ["demo", "--epochs", "0"], ["--epochs", "greater than or equal to 1"]),
    ("status-missing", ["status", "{dir}/nope"], ["nope", "not a launch directory"]),
    ("calibrate-model", ["calibrate", "--model", "deit_nope"], ["deit_nope"]),
    ("calibrate-dtype", ["calibrate", "--dtype", "fp16"], ["fp16"]),
]


def _fill(args: list[str], files: dict[str, Path]) -> list[str]:
    return [re.sub(r"\{(\w+)\}", lambda m: str(files[m.group(1)]), a) for a in args]


@pytest.mark.parametrize("args,needles", [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_input_is_one_line_and_exit_2(files, args, needles):
    r = runner.invoke(app, _fill(args, files))
    assert r.exit_code == 2, (r.exit_code, r.output)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1, r.stderr
    assert err[0].startswith("error: "), err[0]
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert "Traceback" not in r.output
    assert not files["marker"].exists(), "the checkpoint's code ran"


def test_every_command_is_in_the_catalogue():
    """A command added later gets bad-input cases too."""
    import typer

    root = typer.main.get_command(app)
    covered = {a[0] for _, a, _ in CASES}  # a command group counts once (train: its own tests cover each trainer)
    missing = set(root.commands) - covered
    assert not missing, missing


def test_unreadable_file_is_one_line(files, tmp_path):
    """A checkpoint we may not read (permissions; root reads everything, so skipped there)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root can read a file without read permission")
    locked = tmp_path / "locked.pth"
    locked.write_bytes(files["truncated"].read_bytes())
    locked.chmod(0)
    r = runner.invoke(app, ["profile", *FAST, "--checkpoint", str(locked)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.output


def test_old_names_still_work_and_say_so(files, tmp_path):
    """``eval imagenet --data`` and ``profile --save`` keep working, with a note."""
    r = runner.invoke(app, ["eval", "imagenet", "--data", str(files["shapes"]), *TINY, "--workers", "0", "--limit", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert "--data is deprecated; use --imagenet" in r.stderr
    assert json.loads(r.stdout)["n_images"] == 2


def test_ci_cites_existing_tests():
    """Every test file (and test in it) that .ci/run names exists."""
    root = Path(__file__).resolve().parents[1]
    text = (root / ".ci" / "run").read_text()
    cited = re.findall(r"(tests/\w+\.py)(?:::(\w+))?", text)
    assert cited
    for path, name in cited:
        assert (root / path).is_file(), path
        if name:
            assert re.search(rf"^def {name}\(", (root / path).read_text(), re.M), f"{path}::{name}"
