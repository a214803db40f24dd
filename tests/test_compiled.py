"""Compiled models as a measurement axis (measure/compiled.py and where points use it).

- every registered method on a tiny model computes the same outputs under
  ``torch.compile`` as eagerly (float32 rounding: inductor reorders sums), and a compiled
  point's record names its mode, its compile time and graphs, and a selector path that
  says the compiler ran it;
- compile time is spent before the timed window: warm-up calls repeat until a call
  compiles nothing new, and a recompile inside the timing fails the point with a reason;
- the compile setting as a point's identity: modes, older runs' true/false, eager hashes
  unchanged; suites and the command line take a list (eager and compiled in one run);
- tables and compare keep eager and compiled points apart.

Real ``torch.compile`` (inductor, a C++ compiler) on the CPU: a few seconds per graph the
first time on a machine, then from inductor's cache.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tosa_bench.build import build_model
from tosa_bench.cli import app
from tosa_bench.errors import OptionError, SuiteError
from tosa_bench.measure.compiled import MAX_WARM_CALLS, RecompiledWhileTimed, compile_and_warm, fresh_compile, no_recompiles
from tosa_bench.measure.point import measure_point
from tosa_bench.measure.spec import COMPILE_MODES, Point, Settings, compile_label, compile_mode
from tosa_bench.measure.timing import measure_throughput
from tosa_bench.methods import registry
from tosa_bench.methods.base import COMPILED_PATH, kernel_paths
from tosa_bench.models.chunks import FUSED
from tosa_bench.results.compare import point_config, point_label
from tosa_bench.results.tables import frame, to_markdown
from tosa_bench.sweep.grid import expand as build_grid
from tosa_bench.sweep.runner import measure_one
from tosa_bench.sweep.suite import Suite, from_dict

MODEL = "test_tiny"  # 32 px, 6 blocks, 3 heads: models/configs.py
#: options that reduce tokens in every method on test_tiny (ToSA/random choose at blocks 1-5)
OPTIONS = {"dense": {}, "tosa": {"keep": 0.5, "placement": "all"}, "tome": {"r": 4}, "evit": {"keep": 0.5},
           "random": {"keep": 0.5, "placement": "all"}}
QUICK = Settings(latency=False, memory=False, warmup=1, repeats=2, pair_min_rounds=2, pair_max_rounds=2)


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _options(variant: str) -> dict:
    return OPTIONS[variant] if variant in OPTIONS else registry.get(variant).natural_options(0.5, build_model(MODEL, "dense").cfg)


def test_every_registered_method_has_options_here() -> None:
    """A method registered later must be added to OPTIONS (or reduce with its natural keep)."""
    assert set(OPTIONS) <= set(registry.names())


@pytest.mark.parametrize("variant", registry.names())
def test_compiled_outputs_equal_eager_and_the_record_names_the_mode(variant: str) -> None:
    x = _images()
    model = build_model(MODEL, variant, **_options(variant)).eval()
    with torch.inference_mode():
        eager = model(x)
    if hasattr(model.reducer, "_generator"):
        model.reducer._generator = None  # the random control draws the same sequence again

    def call(run) -> None:
        with torch.inference_mode():
            run(x)

    fresh_compile()
    runner, info = compile_and_warm(model, "default", call)
    if hasattr(model.reducer, "_generator"):
        model.reducer._generator = None
    with no_recompiles("test"), torch.inference_mode():
        compiled = runner(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)  # float32 sums in another order
    assert info.mode == "default" and info.graphs >= 1 and 2 <= info.calls <= MAX_WARM_CALLS and info.compile_s > 0

    record = measure_point(Point(MODEL, variant, _options(variant), batch_size=2, compile="default"), QUICK)
    assert record["compile"] == "default" and record["compile_s"] > 0 and record["compile_graphs"] >= 1
    assert "torch.compile" in record["conventions"]["compile"]
    if registry.is_dense(variant):
        assert record["compile_s_dense"] is None  # dense is timed alone: no twin
    else:
        assert record["compile_s_dense"] > 0 and record["speedup_paired"] > 0
    in_graph = [p for p in record["kernel_paths"] if p.endswith(", a custom op in the compiled graph")]
    assert record["kernel_paths"] in ([], [COMPILED_PATH], in_graph) and len(in_graph) <= 1
    if variant in ("tosa", "tome"):  # ToSA's selector kernel where it was timed faster; ToMe's biased attention
        assert record["kernel_paths"] == (in_graph or [COMPILED_PATH])
        assert not in_graph or (variant == "tosa" and in_graph[0].startswith("fused CPU kernel ("))


def test_compiled_tosa_calls_the_cpu_selector_kernel_inside_one_graph(pin_budget) -> None:
    """Where the fused CPU kernel was timed faster, the compiled model keeps it as a custom
    op: one graph, no break, the same selections and outputs as eager, and the record says
    so. The operator's fake (shape) implementation agrees with the real one (opcheck)."""
    from tosa_bench.kernels import selector_cpu

    if selector_cpu.kernel() is None:
        pytest.skip(f"{selector_cpu.unavailable_reason()} (tests/test_selector_cpu_build.py covers the build)")
    pin_budget(FUSED)
    x = _images()
    model = build_model(MODEL, "tosa", keep=0.5).eval()
    with torch.inference_mode():
        eager = model(x)
        eager_sel = {b: s.index.clone() for b, s in model.reducer.last_selection.items()}
    def call(run) -> None:
        with torch.inference_mode():
            run(x)

    fresh_compile()
    runner, info = compile_and_warm(model, "default", call)
    with no_recompiles("test"), torch.inference_mode():
        compiled = runner(x)
    assert (info.graphs, info.graph_breaks) == (1, 0)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(model.reducer.last_selection[b].index, eager_sel[b]) for b in eager_sel)
    width = model.reducer.selectors["1"].compiled_kernel[3]
    assert kernel_paths(model, compiled=True) == [f"fused CPU kernel ({width}-byte vectors), a custom op in the compiled graph"]
    sel = model.reducer.selectors["1"]
    maps = torch.randn(2, sel.num_heads, 5, 7)
    args = (maps, sel.conv1.weight.detach(), sel.conv1.bias.detach(), sel.conv2.weight.detach(), sel.conv2.bias.detach(), width)
    torch.library.opcheck(selector_cpu.received_op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    expect = selector_cpu.received(maps, sel.conv1, sel.conv2, False, width)[0]
    torch.testing.assert_close(selector_cpu.received_op(*args), expect, rtol=0, atol=0)


def test_controls_at_keep_one_compile_to_dense_graph() -> None:
    """ToSA and random at keep 1.0 (the A/A controls) compile to one graph without a break,
    as dense does: the compiled A/A compares like with like."""
    for variant in ("dense", "tosa", "random"):
        model = build_model(MODEL, variant, **({} if variant == "dense" else {"keep": 1.0})).eval()
        fresh_compile()
        _, info = compile_and_warm(model, "default", lambda run: run(_images()))
        assert (info.graphs, info.graph_breaks) == (1, 0), variant


def test_reduce_overhead_says_how_many_graphs_were_captured() -> None:
    """CUDA graphs are counted from inductor's own skips: on a CPU there is nothing to
    capture, and the record says so instead of implying they ran."""
    from tosa_bench.measure.compiled import CompileInfo

    assert CompileInfo("reduce-overhead", 1.0, 2, 3, 0, 1).cuda_graphs == "2 of 3 graphs captured"
    assert CompileInfo("default", 1.0, 2, 3, 0, 3).cuda_graphs is None
    model = build_model(MODEL, "dense").eval()
    fresh_compile()
    _, info = compile_and_warm(model, "reduce-overhead", lambda run: run(_images()))
    assert info.graphs == 1 and info.cuda_graphs == "0 of 1 graphs captured"


def test_an_eager_record_has_empty_compile_fields() -> None:
    record = measure_point(Point(MODEL, "tosa", OPTIONS["tosa"], batch_size=2), QUICK)
    assert record["compile"] is False
    assert all(record[k] is None for k in ("compile_s", "compile_s_dense", "compile_graphs", "compile_graph_breaks", "compile_cuda_graphs",
                                           "compile_cuda_graphs_dense"))
    assert record["kernel_paths"] and COMPILED_PATH not in record["kernel_paths"]


class Counting(nn.Module):
    """Branches on a Python counter that grows every call: dynamo guards on its value, so
    every call compiles again (what a timed phase must never do silently)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * self.calls


class Stable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + 1


def test_warm_up_repeats_until_nothing_new_compiles() -> None:
    fresh_compile()
    _, stable = compile_and_warm(Stable(), "default", lambda run: run(torch.ones(3)))
    assert (stable.calls, stable.graphs, stable.graph_breaks) == (2, 1, 0)
    fresh_compile()
    _, growing = compile_and_warm(Counting(), "default", lambda run: run(torch.ones(3)))
    assert growing.calls == MAX_WARM_CALLS and growing.graphs == MAX_WARM_CALLS  # each call a new graph


def test_a_recompile_inside_the_timing_fails_with_its_reason() -> None:
    with pytest.raises(RecompiledWhileTimed, match=r"recompiled during the throughput timing .*the point is not timed"):
        measure_throughput(Counting(), 2, 4, "cpu", warmup=0, repeats=3, compile="default")
    fresh_compile()
    runner, _ = compile_and_warm(Stable(), "default", lambda run: run(torch.ones(3)))
    with pytest.raises(RecompiledWhileTimed, match="during the latency timing"):
        with no_recompiles("latency"):
            runner(torch.ones(2, 5))  # a new shape
    with pytest.raises(ValueError, match="not mine"):  # other errors pass through unchanged
        with no_recompiles("latency"):
            raise ValueError("not mine")


def test_without_set_stance_a_recompile_is_caught_by_counting_graphs(monkeypatch) -> None:
    """torch before 2.6 has no ``set_stance``: the graphs compiled inside the phase are
    counted after it, and any fails the point."""
    monkeypatch.delattr(torch.compiler, "set_stance")
    with pytest.raises(RecompiledWhileTimed, match=r"compiled [1-9]\d* new graph\(s\) during the throughput timing"):
        measure_throughput(Counting(), 2, 4, "cpu", warmup=0, repeats=3, compile="default")
    r = measure_throughput(Stable(), 2, 4, "cpu", warmup=0, repeats=3, compile="default")  # nothing new: timed
    assert r["repeats"] == 3


def test_the_sweep_records_a_recompile_as_the_points_error_without_traceback() -> None:
    def measure(point, settings, stage):
        raise RecompiledWhileTimed("torch.compile recompiled during the paired throughput timing (x); the point is not timed")

    (gp,) = [g for g in build_grid(Suite(models=(MODEL,), variants=("tosa",), compile=("default",))) if g.point.variant == "tosa"]
    record = measure_one(gp, Settings(), measure, None, lambda s: None)
    assert record["status"] == "error" and "recompiled during the paired throughput" in record["error"]
    assert "error_traceback" not in record and record["compile"] == "default"


def test_throughput_compiles_outside_the_timed_steps(monkeypatch) -> None:
    """torch.compile faked as the identity: the warm-up calls run before ``measure``'s own
    warm-up and timed steps, and the result says the mode and the compile info."""
    calls: list[str] = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: (calls.append(mode), model)[1])
    r = measure_throughput(Stable(), 2, 4, "cpu", warmup=0, repeats=3, compile="max-autotune")
    assert calls == ["max-autotune"] and r["compile"] == "max-autotune"
    assert r["compile_info"].calls == 2 and r["warmup_steps"] == 0 and r["repeats"] == 3


def test_compile_modes_as_identity() -> None:
    assert [compile_mode(v) for v in (None, False, "eager", "none", True, *COMPILE_MODES)] == [None] * 4 + ["default", *COMPILE_MODES]
    with pytest.raises(OptionError, match=r"compile: expected eager or a torch.compile mode \(default, max-autotune, reduce-overhead\), got 'fast'"):
        Point(MODEL, "dense", compile="fast")
    eager, old_true = Point(MODEL, "dense"), Point(MODEL, "dense", compile=True)
    assert eager.config()["compile"] is False and eager.compile is None  # eager hashes as before modes
    assert old_true.compile == "default" and old_true.config_hash() == Point(MODEL, "dense", compile="default").config_hash()
    assert len({Point(MODEL, "dense", compile=m).config_hash() for m in (None, *COMPILE_MODES)}) == 4
    assert [compile_label({"compile": v}) for v in (False, True, "reduce-overhead", None)] == ["eager", "default", "reduce-overhead", "eager"]


def test_a_suite_holds_eager_and_compiled_points() -> None:
    suite = from_dict({"grid": {"models": [MODEL], "variants": ["dense", "tosa"], "compile": ["eager", "default", "eager"]}}, "t")
    assert suite.compile == ("eager", "default")
    modes = [(g.point.variant, g.point.compile) for g in build_grid(suite)]
    assert modes == [("dense", None), ("tosa", None), ("dense", "default"), ("tosa", "default")]
    assert from_dict({"grid": {"compile": True}}, "t").compile == ("default",)
    assert from_dict({"grid": {"compile": False}}, "t").compile == ("eager",)
    assert from_dict({"grid": {"compile": "max-autotune"}}, "t").compile == ("max-autotune",)
    for bad in (["fast"], [], 3):
        with pytest.raises(SuiteError, match="grid.compile"):
            from_dict({"grid": {"compile": bad}}, "t")


def test_command_line_compile_options() -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["sweep", "--model", MODEL, "--variant", "dense", "--compile-mode", "eager,default", "--dry-run"])
    assert ok.exit_code == 0, ok.output
    assert "eager" in ok.output and "default" in ok.output and "4 points" not in ok.output
    for argv, msg in ((["sweep", "--compile-mode", "fast", "--dry-run"], "--compile-mode: expected eager or a torch.compile mode"),
                      (["sweep", "--compile", "--compile-mode", "eager", "--dry-run"], "eager is no compile"),
                      (["profile", "--model", MODEL, "--compile-mode", "eager,default"], "give one mode"),
                      (["check", "--run", "x", "--baseline", "b.json", "--compile"], "apply to a suite run now")):
        bad = runner.invoke(app, argv)
        assert bad.exit_code == 2 and msg in bad.output and "Traceback" not in bad.output, (argv, bad.output)


def _record(variant: str, compile: str | bool, speedup: float | None, gmacs: float) -> dict:
    return {"config_hash": f"{variant}-{compile}", "status": "ok", "model": MODEL, "variant": variant, "batch_size": 8,
            "dtype": "fp32", "device": "cpu", "img_size": 32, "compile": compile, "options": OPTIONS[variant],
            "gmacs": gmacs, "throughput_img_s": 100.0, "speedup_paired": speedup, "peak_mem_mb": 10.0}


def test_tables_and_compare_keep_eager_and_compiled_apart() -> None:
    records = [_record("dense", False, None, 2.0), _record("tosa", False, 1.25, 1.5),
               _record("dense", "default", None, 2.0), _record("tosa", "default", 0.9, 1.5)]
    df = frame(records)
    tosa = df[df["variant"] == "tosa"].set_index("compile")
    assert tosa.loc["eager", "speedup"] == 1.25 and tosa.loc["default", "speedup"] == 0.9
    assert list(tosa["gmacs_ratio"]) == [0.75, 0.75]  # each against the dense of its own mode
    md = to_markdown(df)
    assert "| compile " in md and "eager and torch.compile mode default" in md
    assert point_config(records[1])["compile"] is False and point_config(records[3])["compile"] == "default"
    assert point_label(records[3]).endswith("compiled default") and "compiled" not in point_label(records[1])
    only_eager = to_markdown(frame(records[:2]))
    assert "| compile " not in only_eager and "eager (not compiled)" in only_eager
    assert json.dumps(point_config(records[1]))  # JSON-able, as baselines store it


def test_cpu_peak_of_a_compiled_point_runs_the_compiled_forward() -> None:
    """The child process compiles the point's model in its mode before reading the peak
    (its warm-up forward compiles; the read forward is a compiled one)."""
    from tosa_bench.measure.cpu_peak import measure_cpu_peak

    reading = measure_cpu_peak(Point(MODEL, "tosa", OPTIONS["tosa"], batch_size=2, compile="default"), threads=1)
    assert reading.value_mib is not None and reading.value_mib > 0, reading.reason


def test_profile_of_a_compiled_point_says_how_it_was_compiled(tmp_path) -> None:
    result = CliRunner().invoke(app, ["profile", "--model", MODEL, "--variant", "tosa", "--keep", "0.5", "--compile", "--device", "cpu",
                                      "--time-budget", "0.5", "--warmup", "1", "--repeats", "2", "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "torch.compile mode default:" in text and "never timed" in text and "compiled (default)" in text
    record = json.loads((tmp_path / "p.json").read_text())
    assert record["compile"] == "default" and record["compile_s"] > 0 and record["compile_s_dense"] > 0
    assert "per-block time needs module hooks" in record["time_share_reason"] and "time_share_per_block" not in record


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: compiled points with CUDA graphs (reduce-overhead)")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_points_on_a_gpu(mode: str) -> None:
    for variant in registry.names():
        record = measure_point(Point(MODEL, variant, _options(variant), batch_size=8, dtype="fp16", device="cuda", compile=mode), QUICK)
        assert record["compile"] == mode and record["compile_s"] > 0, variant
        assert registry.is_dense(variant) or record["speedup_paired"] > 0
        if mode == "reduce-overhead":  # every graph of the variant and its twin replays as a CUDA graph
            g = record["compile_graphs"]
            assert record["compile_cuda_graphs"] == f"{g} of {g} graphs captured", (variant, record["compile_cuda_graphs"])
            captured, _, total = (record["compile_cuda_graphs_dense"] or "0 of 0 graphs").partition(" of ")
            assert registry.is_dense(variant) or captured == total.split()[0] != "0", record["compile_cuda_graphs_dense"]
        else:
            assert record["compile_cuda_graphs"] is None
