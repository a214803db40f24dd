"""`tosa-bench demo --quick`: the whole chain (data, classifier, selectors, sweep with
accuracy, figures, token pictures) runs and every piece lands where the next one reads it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tosa_bench.cli import app
from tosa_bench.models.selector_file import read_selector_metadata
from tosa_bench.results import load_run

runner = CliRunner()


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--quick", "--epochs", "1", "--train-images", "100", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    run = load_run(out / "sweep")
    # dense + 4 methods x 3 keeps, ToMe's r=1 standing for keeps 0.5 and 0.75 (one point, two keeps)
    assert len(run.records) == 12 and all(r["status"] == "ok" for r in run.records)
    assert sorted(sum((r["grid_keeps"] for r in run.records), [])) == [0.25] * 4 + [0.5] * 4 + [0.75] * 4
    assert all(r["top1"] is not None and r["weights"] == "checkpoint" for r in run.records)
    tosa = [r for r in run.records if r["variant"] == "tosa"]
    assert tosa and all(r["selector"] == str(out / "selector" / "selectors.safetensors") for r in tosa)
    assert read_selector_metadata(out / "selector" / "selectors.safetensors")["model"] == "test_tiny"
    figures = {p.name for p in (out / "sweep" / "figures").iterdir()}
    assert {"tradeoff-top1-vs-gmacs.pdf", "speedup-vs-keep.png", "tokens-per-block-keep0.5.png"} <= figures
    for part in ("classifier", "selector"):
        assert (out / part / "figures" / "training-curves.png").is_file()
        assert json.loads((out / part / "env.json").read_text())["device"] == "cpu"
    assert len(list((out / "tokens").glob("*.png"))) == 6
    res = runner.invoke(app, ["demo", "--quick", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output
