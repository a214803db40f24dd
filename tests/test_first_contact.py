"""What a new user meets beyond bad input (issue 14): output checked before work, the
table fitting the terminal, one depth checkpoint format, data problems counted and
shown, random-weight accuracy marked, datasets never left half old and half new, named
suites found after any install, machine-sized defaults."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tosa_bench.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "test_tiny", "--device", "cpu"]
SWEEP = ["sweep", *TINY, "--variant", "dense", "--no-timing", "--no-memory"]


def ok(r):
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A shapes set with one corrupt JPEG and one empty class folder, a rooms set, and
    test_tiny weights."""
    import torch

    from tosa_bench.build import build_model

    d = tmp_path_factory.mktemp("contact")
    ok(runner.invoke(app, ["data", "make", "shapes", "--out", str(d / "shapes"), "--n", "20", "--size", "32"]))
    ok(runner.invoke(app, ["data", "make", "rooms", "--out", str(d / "rooms"), "--n", "2", "--size", "32"]))
    classes = sorted(p for p in (d / "shapes" / "val").iterdir() if p.is_dir())
    for img in classes[0].iterdir():
        img.unlink()  # an empty class folder
    sorted(classes[2].iterdir())[-1].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # a corrupt JPEG (not the first)
    torch.save(build_model("test_tiny").state_dict(), d / "tiny.pth")
    return d


# ------------------------------------------------------------------------- output before work
def test_profile_output_is_checked_before_measuring(tmp_path, monkeypatch):
    import tosa_bench.measure.point as point

    def never(*args, **kwargs):
        raise AssertionError("measured although the output cannot be written")

    monkeypatch.setattr(point, "measure_point", never)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    for target in (blocker / "x.json", tmp_path):
        r = runner.invoke(app, ["profile", *TINY, "--no-timing", "--out", str(target)])
        assert r.exit_code == 2 and r.stderr.startswith("error: --out"), r.output


# ------------------------------------------------------------------------- table width
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _numbers(text: str) -> set[str]:
    return set(NUMBER.findall(text))


@pytest.fixture(scope="module")
def wide_run():
    """A committed run with every metric column (paired speed-ups with intervals)."""
    run = ROOT / "results" / "quick-cpu-2core"
    if not (run / "records.jsonl").is_file():
        pytest.skip("the committed quick run is not there")
    return run


@pytest.mark.parametrize("width", [80, 120])
def test_report_table_fits_the_terminal(wide_run, width):
    full = ok(runner.invoke(app, ["report", str(wide_run)], env={"COLUMNS": "400"})).stdout
    r = ok(runner.invoke(app, ["report", str(wide_run)], env={"COLUMNS": str(width)}))
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(line for line in lines if len(line) > width)
    assert "…" not in r.stdout  # rich's mark of a cut cell
    assert _numbers(full) <= _numbers(r.stdout), _numbers(full) - _numbers(r.stdout)
    md = ok(runner.invoke(app, ["report", str(wide_run), "--format", "md"])).stdout
    assert all(h in md for h in ("throughput (im/s)", "speed-up (x)", "latency (ms)", "peak mem (MiB)", "top-1 (%)"))


def test_report_table_at_400_columns_is_one_table(wide_run):
    text = ok(runner.invoke(app, ["report", str(wide_run)], env={"COLUMNS": "400"})).stdout
    assert "(1/2)" not in text and "throughput (im/s)" in text


def test_report_table_stacks_when_very_narrow(wide_run):
    r = ok(runner.invoke(app, ["report", str(wide_run)], env={"COLUMNS": "30"}))
    assert max(len(line) for line in r.stdout.splitlines()) <= 30
    assert "speed-up 1.26 (1.22-1.31)" in r.stdout.replace("\n", " ") or "1.26 (1.22-1.31)" in r.stdout


# ------------------------------------------------------------------------- depth checkpoints
def test_one_depth_checkpoint_format_for_eval_and_sweep(data, tmp_path):
    """A depth model saved with or without the backbone's classifier is read by both."""
    import torch

    from tosa_bench.build import build_model
    from tosa_bench.tasks.depth_model import DepthModel, save_depth_checkpoint

    with_head = tmp_path / "with-head.pth"
    torch.save(DepthModel(build_model("test_tiny")).state_dict(), with_head)  # as a training script would
    saved = tmp_path / "saved.safetensors"
    save_depth_checkpoint(DepthModel(build_model("test_tiny", num_classes=0)), saved)
    for ckpt in (with_head, saved):
        r = ok(runner.invoke(app, ["eval", "--nyu", str(data / "rooms"), *TINY, "--depth-checkpoint", str(ckpt), "--workers", "0", "--json"]))
        assert json.loads(r.stdout)["meaningful"] is True
        out = tmp_path / f"run-{ckpt.stem}"
        ok(runner.invoke(app, [*SWEEP, "--nyu", str(data / "rooms"), "--depth-checkpoint", str(ckpt), "--out", str(out)]))
        record = json.loads((out / "records.jsonl").read_text().splitlines()[0])
        assert record["delta1"] is not None


def test_all_nan_depth_is_valid_json_with_null_and_a_reason(data, tmp_path):
    import torch

    from tosa_bench.build import build_model
    from tosa_bench.tasks.depth_model import DepthModel

    model = DepthModel(build_model("test_tiny", num_classes=0))
    state = model.state_dict()
    for k in state:
        if k.startswith("head.output"):
            state[k] = torch.full_like(state[k], float("nan"))
    ckpt = tmp_path / "nan.pth"
    torch.save(state, ckpt)
    r = runner.invoke(app, ["eval", "--nyu", str(data / "rooms"), *TINY, "--depth-checkpoint", str(ckpt), "--workers", "0", "--json"])
    assert r.exit_code == 1, r.output
    record = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert record["delta1"] is None and record["absrel"] is None and record["n_nonfinite_pixels"] > 0
    assert "NaN" in record["reason"]
    assert r.stderr.strip().splitlines()[-1].startswith("error: nyu: no metric could be computed")


# ------------------------------------------------------------------------- data problems
def test_eval_counts_unreadable_images_and_empty_classes(data):
    r = ok(runner.invoke(app, ["eval", "--imagenet", str(data / "shapes"), *TINY, "--checkpoint", str(data / "tiny.pth"), "--workers", "0", "--json"]))
    record = json.loads(r.stdout)
    assert record["n_unreadable"] == 1 and record["n_empty_classes"] == 1 and record["meaningful"] is True
    assert "1 image(s) could not be decoded" in r.stderr and "1 class folder(s) hold no image" in r.stderr


def test_sweep_table_shows_unreadable_images_and_random_weights(data, tmp_path):
    run = tmp_path / "trained"
    ok(runner.invoke(app, [*SWEEP, "--imagenet", str(data / "shapes"), "--checkpoint", str(data / "tiny.pth"), "--out", str(run)]))
    record = json.loads((run / "records.jsonl").read_text().splitlines()[0])
    assert record["n_unreadable"] == 1 and record["n_empty_classes"] == 1
    md = ok(runner.invoke(app, ["report", str(run), "--format", "md"])).stdout
    assert f"{record['top1']:.2f}*" in md and "1 unreadable image(s) skipped" in md
    random = tmp_path / "random"
    ok(runner.invoke(app, [*SWEEP, "--imagenet", str(data / "shapes"), "--out", str(random)]))
    record = json.loads((random / "records.jsonl").read_text().splitlines()[0])
    assert record["top1"] is not None and record["weights"] == "random"
    for fmt in ("table", "md"):
        text = ok(runner.invoke(app, ["report", str(random), "--format", fmt], env={"COLUMNS": "200"})).stdout
        assert "rand" in text and "not a result" in text
    rows = [line for line in text.splitlines() if line.startswith("| Dense")]
    assert rows and all(line.rstrip().endswith("rand |") for line in rows)  # top-1 not printed like a result
    assert str(record["top1"])[:4] in ok(runner.invoke(app, ["report", str(random), "--format", "csv"])).stdout


def test_eval_without_weights_is_marked_not_a_result(data):
    r = ok(runner.invoke(app, ["eval", "--imagenet", str(data / "shapes"), *TINY, "--workers", "0"], env={"COLUMNS": "120"}))
    assert "random weights: not a result" in r.stdout and "warning:" in r.stderr


# ------------------------------------------------------------------------- data make
def test_data_make_never_leaves_a_mix(tmp_path):
    target = tmp_path / "shapes"
    ok(runner.invoke(app, ["data", "make", "shapes", "-o", str(target), "--n", "12", "--size", "32"]))
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    r = runner.invoke(app, ["data", "make", "shapes", "-o", str(target), "--n", "10", "--size", "32", "--seed", "1"])
    assert r.exit_code == 2 and "not empty" in r.stderr
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    ok(runner.invoke(app, ["data", "make", "shapes", "-o", str(target), "--n", "10", "--size", "32", "--overwrite"]))
    images = [p for p in (target / "val").rglob("*") if p.is_file()]
    assert len(images) == 10  # none of the 12 old ones left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no partial or old folders beside it


def test_data_make_failure_leaves_nothing(tmp_path, monkeypatch):
    import tosa_bench.data.synthetic as synthetic

    def fail_midway(out, **kwargs):
        (Path(out) / "val").mkdir()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(synthetic, "make_shapes", fail_midway)
    r = runner.invoke(app, ["data", "make", "shapes", "-o", str(tmp_path / "s")])
    assert r.exit_code == 2 and "No space left" in r.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- suites, defaults
def test_named_suites_ship_in_the_package(tmp_path, monkeypatch):
    """`--suite quick` works without the checkout: the suites are package data."""
    import tomllib
    from importlib.resources import files

    from tosa_bench.sweep.suite import load_suite, resolve_suite_path

    shipped = files("tosa_bench") / "suites"
    names = sorted(p.name for p in shipped.iterdir() if p.name.endswith(".toml"))
    assert {"quick.toml", "ci.toml"} <= set(names)
    assert sorted(p.name for p in (ROOT / "suites").glob("*.toml")) == names  # the checkout's suites/ is the same folder
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tosa_bench"]
    assert "suites/*.toml" in package_data
    monkeypatch.chdir(tmp_path)  # nowhere near the checkout
    for name in names:
        path = resolve_suite_path(name.removesuffix(".toml"))
        assert Path(str(shipped)).resolve() in path.resolve().parents
        load_suite(name.removesuffix(".toml"))


def test_default_workers_never_exceed_the_cores(data):
    import os

    from tosa_bench.cli.common import default_batch_size, default_workers

    cores = len(os.sched_getaffinity(0))
    assert 0 <= default_workers() <= max(0, cores - 1)
    assert default_batch_size("cpu") == 8 and default_batch_size("cuda:1") == 64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok(runner.invoke(app, ["eval", "--imagenet", str(data / "shapes"), *TINY, "--limit", "4", "--json"]))
    assert not [w for w in caught if "DataLoader" in str(w.message)], [str(w.message) for w in caught]


def test_shared_options_on_every_model_command():
    """The vocabulary of the Options table in docs/usage.md, on every command that builds a model."""
    import typer

    root = typer.main.get_command(app)
    for name in ("profile", "eval"):
        opts = {o for p in root.commands[name].params for o in p.opts}
        assert {"--model", "--variant", "--keep", "--placement", "--seed", "--importance", "--fuse", "--checkpoint",
                "--selector", "--img-size", "--batch-size", "--device", "--dtype", "--out", "-o"} <= opts, name
    for name in ("sweep", "report", "merge"):
        opts = {o for p in root.commands[name].params for o in p.opts}
        assert {"--out", "-o"} <= opts, name
    assert {"--out", "-o"} <= {o for p in root.commands["data"].commands["make"].params for o in p.opts}
