"""Chunk budgets calibrated per machine (tosa_bench.models.chunks): the calibration picks
the fastest budget by its medians, the cache is keyed by op, shape, dtype and machine,
damaged or unwritable caches cost a calibration and nothing else, and nothing is
calibrated while a model is traced or off the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from tosa_bench.build import build_model
from tosa_bench.models import chunks
from tosa_bench.models.chunks import BUDGETS_ENV, CACHE_ENV, FUSED, WHOLE, Budget, ChunkKey


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(BUDGETS_ENV, raising=False)
    chunks.forget_budgets()
    yield
    chunks.forget_budgets()


class FakeClock:
    """Each run(b) advances the clock by seconds[b] plus a per-call jitter list."""

    def __init__(self, seconds, jitter=()):
        self.now, self.seconds, self.jitter, self.calls = 0.0, seconds, list(jitter), []

    def __call__(self):
        return self.now

    def run(self, b):
        self.calls.append(b)
        self.now += self.seconds[b] + (self.jitter.pop(0) if self.jitter else 0.0)


def test_calibrate_keeps_the_budget_with_the_lowest_median():
    seconds = {b: 1.0 for b in chunks.CANDIDATE_BYTES} | {WHOLE: 1.0, 2**20: 0.5}
    clock = FakeClock(seconds)
    best, medians = chunks.calibrate(clock.run, rounds=3, clock=clock)
    assert best == 2**20 and medians[2**20] == pytest.approx(0.5) and medians[WHOLE] == pytest.approx(1.0)
    options = len(chunks.CANDIDATE_BYTES) + 1
    assert len(clock.calls) == options * 4  # one untimed pass, then 3 timed rounds
    rounds = [clock.calls[options * (r + 1): options * (r + 2)] for r in range(3)]
    assert all(sorted(r) == sorted(rounds[0]) for r in rounds) and rounds[0] != rounds[1]  # every budget each round, order rotated


def test_calibrate_uses_medians_not_means_and_prefers_smaller_budgets_on_ties():
    # budget 2**17 is fastest in 2 of 3 rounds but has one huge outlier: its median still wins
    candidates = (2**17, 2**18)
    seconds = {2**17: 0.4, 2**18: 0.5, WHOLE: 0.5}
    untimed = [0.0] * 3
    jitter = untimed + [0.0, 0.0, 0.0] + [9.0, 0.0, 0.0] + [0.0, 0.0, 0.0]  # round 2 starts at 2**17 rotated: outlier lands on 2**18's slot
    clock = FakeClock(seconds, jitter)
    best, medians = chunks.calibrate(clock.run, candidates=candidates, rounds=3, clock=clock)
    assert best == 2**17
    assert medians[2**18] == pytest.approx(0.5)  # the 9 s outlier did not move a median
    tie = FakeClock({2**17: 0.5, 2**18: 0.5, WHOLE: 0.5})
    assert chunks.calibrate(tie.run, candidates=candidates, rounds=3, clock=tie)[0] == 2**17


def test_whole_wins_when_it_is_fastest():
    clock = FakeClock({b: 1.0 for b in chunks.CANDIDATE_BYTES} | {WHOLE: 0.2})
    assert chunks.calibrate(clock.run, rounds=2, clock=clock)[0] == WHOLE


def _runner(log):
    def make():
        log.append("made")
        return lambda b: None
    return make


def test_budget_is_calibrated_once_cached_and_read_back(monkeypatch):
    monkeypatch.setattr(chunks, "calibrate", lambda run, **kw: (2**21, {2**21: 0.001, WHOLE: 0.002}))
    key, log = ChunkKey("selector", "heads 3 keys 17", "float32"), []
    first = chunks.budget(key, _runner(log))
    assert first == Budget(2**21, "calibrated", 2**21) and log == ["made"]
    assert chunks.budget(key, _runner(log)) is first and log == ["made"]  # this process remembers
    entry = json.loads(chunks.cache_path().read_text())[key.text()]
    assert entry["bytes"] == 2**21 and entry["median_ms"] == {str(2**21): 1.0, "0": 2.0}
    chunks.forget_budgets()  # as a new process would start
    assert chunks.budget(key, _runner(log)) == Budget(2**21, "cache", 2**21) and log == ["made"]


def test_the_kernel_is_a_candidate_and_its_fallback_the_fastest_other(monkeypatch):
    """With the kernel among the candidates the fastest wins; the fallback (for calls the
    kernel cannot take) is the fastest of the rest, kept in the cache too."""
    seen = {}

    def fake(run, candidates=(), **kw):
        seen["candidates"] = candidates
        return FUSED, {FUSED: 0.001, 2**20: 0.003, 2**22: 0.002, WHOLE: 0.004}

    monkeypatch.setattr(chunks, "calibrate", fake)
    key = ChunkKey("selector", "k", "float32")
    assert chunks.budget(key, _runner([]), candidates=(2**20, 2**22, FUSED)) == Budget(FUSED, "calibrated", 2**22)
    assert seen["candidates"] == (2**20, 2**22, FUSED)
    chunks.forget_budgets()
    assert chunks.budget(key, _runner([])) == Budget(FUSED, "cache", 2**22)
    clock = FakeClock({2**17: 0.3, FUSED: 0.1, WHOLE: 0.2})
    assert chunks.calibrate(clock.run, candidates=(2**17, FUSED), rounds=2, clock=clock)[0] == FUSED


def test_keys_differ_by_op_shape_dtype_and_machine(monkeypatch):
    keys = {ChunkKey("selector", "s", "float32").text(), ChunkKey("attention", "s", "float32").text(),
            ChunkKey("selector", "t", "float32").text(), ChunkKey("selector", "s", "bfloat16").text()}
    assert len(keys) == 4
    text = ChunkKey("selector", "s", "float32").text()
    assert f"torch {torch.__version__}" in text and f"threads {torch.get_num_threads()}" in text and "caches " in text
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert ChunkKey("selector", "s", "float32").text() != text
    finally:
        torch.set_num_threads(threads)


def test_cache_sizes_read_from_sysfs(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "512K"), (3, "Unified", "32768K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert chunks._cache_sizes(str(tmp_path)) == "L1d 32K L2 512K L3 32768K"
    assert chunks._cache_sizes(str(tmp_path / "none")) == "unknown"


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"KEY": {"bytes": -5}}', '{"KEY": {"bytes": "big"}}', '{"KEY": {"bytes": true}}',
                                    '{"KEY": {"bytes": 4096, "fallback": -7}}'])
def test_a_damaged_cache_is_recalibrated_and_rewritten(monkeypatch, damage):
    key = ChunkKey("attention", "heads 2", "float32")
    chunks.cache_path().parent.mkdir(parents=True)
    chunks.cache_path().write_text(damage.replace("KEY", key.text()))
    monkeypatch.setattr(chunks, "calibrate", lambda run, **kw: (2**18, {2**18: 0.001}))
    assert chunks.budget(key, _runner([])) == Budget(2**18, "calibrated", 2**18)
    assert json.loads(chunks.cache_path().read_text())[key.text()]["bytes"] == 2**18


def test_an_unwritable_cache_costs_a_calibration_and_nothing_else(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file, so no directory can be made below it (even by root)")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(chunks, "calibrate", lambda run, **kw: (2**19, {2**19: 0.001}))
    key = ChunkKey("selector", "x", "float32")
    assert chunks.budget(key, _runner([])) == Budget(2**19, "calibrated", 2**19)
    assert chunks._write_cache("k", {"bytes": 1}) is not None  # says why
    assert chunks.budget(key, _runner([])).bytes == 2**19


def test_a_parents_budgets_come_first(monkeypatch):
    key = ChunkKey("selector", "y", "float32")
    monkeypatch.setenv(BUDGETS_ENV, json.dumps({key.text(): [FUSED, 12345]}))
    monkeypatch.setattr(chunks, "calibrate", lambda run, **kw: pytest.fail("calibrated although the parent said"))
    assert chunks.budget(key, _runner([])) == Budget(FUSED, "parent", 12345)
    assert chunks.known_budgets() == {key.text(): [FUSED, 12345]}


def test_no_budget_off_the_cpu_or_while_tracing(monkeypatch):
    monkeypatch.setattr(chunks, "budget", lambda *a, **k: pytest.fail("asked for a budget"))
    key = lambda: ChunkKey("a", "b", "float32")  # noqa: E731
    assert chunks.device_budget(torch.device("meta"), key, _runner([])) is None
    seen = []

    def f(x):
        seen.append(chunks.device_budget(x.device, key, _runner([])))
        return x * 2

    torch.jit.trace(f, torch.ones(2), check_trace=False)
    assert seen == [None]


def test_counting_macs_calibrates_nothing(monkeypatch):
    """The MAC counter traces the model: no calibration may run inside (its ops would be
    counted), and the one-piece path it takes counts what the chunked path computes."""
    from tosa_bench.measure.flops import count_macs

    monkeypatch.setattr(chunks, "budget", lambda *a, **k: pytest.fail("asked for a budget while tracing"))
    m = build_model("test_deep", "tosa", keep=0.5, placement=[2, 3, 5]).eval()
    assert count_macs(m, torch.randn(1, 3, 32, 32)).total > 0


def test_items_per_chunk():
    assert chunks.items_per_chunk(10, 100, None) == 10 and chunks.items_per_chunk(10, 100, WHOLE) == 10
    assert chunks.items_per_chunk(10, 100, 350) == 3 and chunks.items_per_chunk(10, 100, 1) == 1
    assert chunks.items_per_chunk(10, 100, 10**9) == 10


def test_a_model_calibrates_its_real_ops_and_names_them(monkeypatch):
    """A ToSA model's first CPU forward settles one budget per chunked op and shape (the
    map block's attention, the selectors), by timing the real op; the record lists them."""
    timed = []
    real = chunks.calibrate

    def spy(run, candidates=(), whole=True, **kw):
        timed.append(run)
        if not whole:  # the selector kernel's vector width: its candidates are widths, not budgets
            return real(run, candidates=candidates, rounds=1, whole=False)
        return real(run, candidates=(2**16,) + tuple(c for c in candidates if c == FUSED), rounds=1)

    monkeypatch.setattr(chunks, "calibrate", spy)
    m = build_model("test_deep", "tosa", keep=0.5, placement=[2, 3, 5]).eval()
    with torch.inference_mode():
        m(torch.randn(2, 3, 32, 32))
    used = chunks.used_by(m)
    from tosa_bench.kernels import selector_cpu

    ops = ["attention", "selector"] + (["selector-kernel"] if selector_cpu.kernel() is not None else [])
    assert len(timed) == len(ops) and sorted(k.split(" ")[0] for k in used) == ops

    tag = selector_cpu.build_tag() or "pytorch ops only"
    # test_deep: 2 heads of 16 dims, 65 tokens; selector hidden 2 x heads, kernel 3
    assert any(k.startswith(f"selector heads 2 hidden 4 kernel 3 rows 65 keys 65 | {tag} float32 | ") for k in used), used
    assert any(k.startswith("attention heads 2 tokens 65 head_dim 16 | chunks or fused float32 | ") for k in used), used
    assert {v["source"] for v in used.values()} == {"calibrated"}
    chunks.forget_budgets()
    m2 = build_model("test_deep", "tosa", keep=0.5, placement=[2, 3, 5]).eval()
    with torch.inference_mode():
        m2(torch.randn(2, 3, 32, 32))
    assert {v["source"] for v in chunks.used_by(m2).values()} == {"cache"} and len(timed) == len(ops)


def test_drop_machine_forgets_this_machines_calibrations_only(monkeypatch):
    monkeypatch.setattr(chunks, "calibrate", lambda run, **kw: (2**18, {2**18: 0.001}))
    key = ChunkKey("selector", "z", "float32")
    chunks.budget(key, _runner([]))
    chunks._write_cache("attention s float32 | another cpu | caches L2 1M | torch 0.0 | threads 4", {"bytes": 4096})
    assert chunks.drop_machine() == 1
    assert list(chunks.read_cache()) == ["attention s float32 | another cpu | caches L2 1M | torch 0.0 | threads 4"]
    assert chunks.known_budgets() == {}


def test_calibrate_command_shows_the_plan_of_both_ops():
    from typer.testing import CliRunner

    from tosa_bench.cli import app

    result = CliRunner().invoke(app, ["calibrate", "--model", "test_deep"])
    assert result.exit_code == 0, result.output
    assert "attention" in result.output and "selector" in result.output and "calibrated" in result.output
    again = CliRunner().invoke(app, ["calibrate", "--model", "test_deep", "--refresh"], env={"COLUMNS": "200"})
    from tosa_bench.kernels import selector_cpu

    ops = 3 if selector_cpu.kernel() is not None else 2  # attention, selector (and the kernel's vector width)
    tome = build_model("test_deep", "tome", r=8).eval()
    with torch.inference_mode():
        tome(torch.randn(1, 3, tome.cfg.img_size, tome.cfg.img_size))
    biased = sum(text.startswith("biased-attention ") for text in chunks.used_by(tome))  # one per token count after a merge
    assert biased >= 5 and "biased-attention" in again.output and ("explicit" in again.output or "sdpa" in again.output)
    assert again.exit_code == 0 and f"forgot {ops + biased} calibration(s)" in again.output and "calibrated" in again.output
    if ops == 3:
        assert "selector-kernel" in again.output and "-byte vectors" in again.output


def test_a_kernel_that_is_off_says_why_and_leaves_the_pytorch_path(monkeypatch):
    """With the kernel turned off (or not built) it is no calibration candidate
    (``build_tag`` None), and calling it anyway names the reason, not a bare error."""
    from tosa_bench.kernels import selector_cpu
    from tosa_bench.methods.tosa import TokenSelector

    sel = TokenSelector(2, 4, 3)
    logits = torch.randn(1, 2, 5, 5)
    for attr in ("_module", "_reason", "_tried"):  # kernel() rewrites these: put them back afterwards
        monkeypatch.setattr(selector_cpu, attr, getattr(selector_cpu, attr))
    monkeypatch.setenv(selector_cpu.DISABLE_ENV, "1")
    monkeypatch.setattr(selector_cpu, "_tried", False)
    monkeypatch.setattr(selector_cpu, "_module", None)
    assert selector_cpu.kernel() is None and selector_cpu.build_tag() is None
    assert selector_cpu.unavailable_reason() == "turned off by TOSA_BENCH_NO_SELECTOR_KERNEL"
    with pytest.raises(RuntimeError, match="^turned off by TOSA_BENCH_NO_SELECTOR_KERNEL$"):
        selector_cpu.received(logits, sel.conv1, sel.conv2, False, 32)
    monkeypatch.setattr(selector_cpu, "_reason", None)  # tried, no module, no reason recorded
    with pytest.raises(RuntimeError, match="^the selector kernel is not available$"):
        selector_cpu.received(logits, sel.conv1, sel.conv2, False, 32)
    with torch.no_grad():
        assert sel.cpu_budget(logits) != FUSED


def test_a_cls_rule_selector_is_timed_and_keyed_on_its_single_row(monkeypatch):
    """Under the "cls" rule the selector reads (B, H, 1, N) maps: its calibration times
    maps of that shape (not the "mean" rule's N x N) and its key names the one row and the
    N keys (65 on test_deep), so the two rules never share a budget."""
    runs = _spy_timed_runs(monkeypatch)
    m = build_model("test_deep", "tosa", keep=0.5, importance="cls").eval()
    with torch.inference_mode():
        m(torch.randn(2, 3, 32, 32))
    selectors = [k for k in chunks.used_by(m) if k.startswith("selector ")]
    assert selectors and all(k.startswith("selector heads 2 hidden 4 kernel 3 rows 1 keys 65 | ") for k in selectors), selectors
    timed_shapes = {tuple(maps.shape) for _, maps in runs}
    assert timed_shapes == {(chunks.CALIBRATION_IMAGES, 2, 1, 65)}, timed_shapes


def _spy_timed_runs(monkeypatch) -> list:
    """(budget, maps) of every TokenSelector.received call that a calibration times (the
    calls with an explicit budget), in order."""
    from tosa_bench.methods.tosa import TokenSelector

    runs = []
    real_received = TokenSelector.received

    def received(self, logits, keep_logits=False, budget_bytes=chunks.CALIBRATED):
        if budget_bytes != chunks.CALIBRATED:
            runs.append((budget_bytes, logits.clone()))
        return real_received(self, logits, keep_logits, budget_bytes)

    monkeypatch.setattr(TokenSelector, "received", received)
    return runs


def _calibrating_spy(monkeypatch, best):
    """chunks.calibrate replaced by a spy that runs the op once at every budget it is
    offered (and one piece), remembers the offer, and reports ``best`` as the fastest;
    what each run gets is in ``runs`` (:func:`_spy_timed_runs`)."""
    seen = {"offered": [], "runs": _spy_timed_runs(monkeypatch)}
    real = chunks.calibrate

    def calibrate(run, candidates=(), whole=True, **kw):
        if not whole:  # the selector kernel's vector width (not a budget): timed for real
            return real(run, candidates=candidates, whole=False, **kw)
        seen["offered"].append(tuple(candidates))
        options = list(candidates) + [WHOLE]
        for b in options:
            run(b)
        return best, {b: (0.001 if b == best else 0.002 + 1e-6 * i) for i, b in enumerate(options)}

    monkeypatch.setattr(chunks, "calibrate", calibrate)
    return seen


@pytest.mark.parametrize("rows", [7, 1])
@pytest.mark.parametrize("kernel_built", [True, False])
def test_a_selector_times_every_budget_on_seeded_maps_of_its_shape_and_keys_it(monkeypatch, rows, kernel_built):
    """TokenSelector.cpu_budget offers the calibration the byte budgets, plus the fused
    kernel exactly where it is built; each timed run gets that budget and the same maps:
    CALIBRATION_IMAGES seed-0 normal maps of the logits' heads, rows, keys and dtype. The
    key names the shape, the kernel build (or "pytorch ops only") and the dtype, and the
    budget found is what it returns."""
    from tosa_bench.kernels import selector_cpu
    from tosa_bench.methods.tosa import TokenSelector

    tag = selector_cpu.build_tag()
    if kernel_built and tag is None:
        pytest.skip(f"the selector kernel is not built here: {selector_cpu.unavailable_reason()}")
    if not kernel_built:
        monkeypatch.setattr(selector_cpu, "build_tag", lambda: None)
    seen = _calibrating_spy(monkeypatch, best=2**18)
    sel = TokenSelector(2, 4, 3)
    with torch.no_grad():
        assert sel.cpu_budget(torch.randn(3, 2, rows, 7)) == 2**18
    offered = chunks.CANDIDATE_BYTES + ((FUSED,) if kernel_built else ())
    assert seen["offered"] == [offered]
    assert [b for b, _ in seen["runs"]] == list(offered) + [WHOLE]
    maps = torch.randn(chunks.CALIBRATION_IMAGES, 2, rows, 7, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(m, maps) for _, m in seen["runs"])
    keys = [k for k in sel.chunk_budgets if not k.startswith("selector-kernel ")]
    assert len(keys) == 1 and keys[0].startswith(f"selector heads 2 hidden 4 kernel 3 rows {rows} keys 7 | {tag if kernel_built else 'pytorch ops only'} float32 | ")


def test_maps_the_kernel_cannot_take_are_timed_without_it(monkeypatch):
    """float64 maps on the CPU: the kernel (float32 and 16-bit floats only) is no candidate
    and the key says "pytorch ops only", even where the kernel is built; off the CPU no
    budget at all."""
    from tosa_bench.methods.tosa import TokenSelector

    seen = _calibrating_spy(monkeypatch, best=2**17)
    sel = TokenSelector(2, 4, 3).double()
    with torch.no_grad():
        assert sel.cpu_budget(torch.randn(1, 2, 5, 5, dtype=torch.float64)) == 2**17
        assert sel.cpu_budget(torch.randn(1, 2, 5, 5, device="meta")) is None
    assert seen["offered"] == [chunks.CANDIDATE_BYTES]
    assert all(m.dtype == torch.float64 for _, m in seen["runs"])
    assert [k.split(" | ")[1] for k in sel.chunk_budgets] == ["pytorch ops only float64"]


@pytest.mark.parametrize("found,grad,expected", [
    (Budget(FUSED, "set", 2**20), False, FUSED),  # inference takes the kernel
    (Budget(FUSED, "set", 2**20), True, 2**20),  # autograd needs the PyTorch path: the fastest other budget
    (Budget(2**19, "set", None), True, 2**19),  # a byte budget holds with or without autograd
    (Budget(WHOLE, "set", None), False, WHOLE),
])
def test_the_budget_a_selector_uses_under_and_without_autograd(monkeypatch, found, grad, expected):
    from tosa_bench.methods.tosa import TokenSelector

    monkeypatch.setattr(chunks, "budget", lambda key, runner, candidates=(), whole=True: found)
    sel = TokenSelector(2, 4, 3)
    with torch.set_grad_enabled(grad):
        assert sel.cpu_budget(torch.randn(1, 2, 5, 5)) == expected
