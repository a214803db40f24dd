"""ToSA's fused CPU selector kernel (tosa_bench/kernels/selector_cpu.cpp) against the
PyTorch path it replaces: the same attention received and predicted logits, to float
rounding, for shapes that exercise every padding and blocking edge, any thread count, and
a whole model's selections."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tosa_bench.build import build_model
from tosa_bench.kernels import reference as kernel_reference
from tosa_bench.kernels import selector_cpu
from tosa_bench.methods.tosa import TokenSelector
from tosa_bench.models import chunks
from tosa_bench.models.chunks import FUSED, WHOLE

pytestmark = pytest.mark.skipif(selector_cpu.kernel() is None, reason=f"{selector_cpu.unavailable_reason()} (a build error fails tests/test_selector_cpu_build.py where a toolchain is present)")


def reference(logits, sel):
    """The selector row by row with nn.Conv1d, in float64 (tosa_bench.kernels.reference):
    independent of both paths."""
    w = [t.detach() for t in (sel.conv1.weight, sel.conv1.bias, sel.conv2.weight, sel.conv2.bias)]
    z = kernel_reference.selector_logits(logits, *w)
    return z.softmax(-1).sum(dim=(1, 2)), z


@pytest.fixture(params=selector_cpu.vector_widths() or (32,), ids=lambda w: f"{w}-byte vectors")
def width(request, monkeypatch):
    """Each vector width the kernel is built for, pinned (the model-level tests below run
    whichever width is calibrated on this machine)."""
    monkeypatch.setattr(TokenSelector, "kernel_vector_bytes", lambda self, logits: request.param)
    return request.param


def trained_like(heads, hidden, kernel, seed):
    torch.manual_seed(seed)
    sel = TokenSelector(heads, hidden, kernel)
    with torch.no_grad():
        for conv in (sel.conv1, sel.conv2):
            conv.weight.normal_(std=0.3)
            conv.bias.normal_(std=0.3)
    return sel


@pytest.mark.parametrize("heads,hidden,kernel,batch,rows,keys", [
    (6, 12, 3, 3, 197, 197),  # DeiT-S, N not a multiple of the vector width
    (3, 6, 3, 2, 65, 65),  # DeiT-Ti's heads: fewer outputs than a register block
    (2, 7, 5, 2, 17, 17),  # hidden not a multiple of the block, wider kernel
    (4, 8, 1, 1, 16, 16),  # kernel 1, N exactly two 32-byte vectors
    (2, 4, 3, 2, 32, 32),  # N exactly two 64-byte vectors
    (6, 12, 3, 4, 1, 197),  # the "cls" rule: one query row per image
    (12, 24, 3, 1, 33, 33),  # DeiT-B's heads: several register blocks
])
def test_kernel_equals_reference(width, heads, hidden, kernel, batch, rows, keys):
    sel = trained_like(heads, hidden, kernel, seed=batch + keys)
    logits = torch.randn(batch, heads, rows, keys, generator=torch.Generator().manual_seed(1)) * 4
    expect, z_expect = reference(logits, sel)
    with torch.inference_mode():
        got, z = sel.received(logits, keep_logits=True, budget_bytes=FUSED)
        got_only, none = sel.received(logits, budget_bytes=FUSED)
        eager, z_eager = sel.received(logits, keep_logits=True, budget_bytes=WHOLE)
    assert none is None and z.shape == z_expect.shape == (batch, heads, rows, keys)
    # float32 sums of up to H x R terms of size <= 1 against float64: rounding only
    tol = 1e-6 * heads * rows
    assert torch.allclose(got.double(), expect, rtol=1e-5, atol=tol) and torch.allclose(got_only, got, rtol=1e-6, atol=tol)
    assert torch.allclose(z.double(), z_expect, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got, eager, rtol=1e-5, atol=tol) and torch.allclose(z, z_eager, rtol=1e-5, atol=1e-5)


def test_kernel_softmax_is_exact_to_float_rounding_over_a_wide_range(width):
    """The kernel's own exp (a polynomial and the exponent bits, selector_cpu.cpp) entry
    by entry: one head, one row, a selector that passes its input through (kernel 1,
    identity start), so every received value is one softmax probability. Logits spread over
    +-400 reach every exponent down to where exp underflows (below e^-87 the kernel gives 0).
    A float32 logit x below the row's maximum carries an inherent relative error of about
    |x| x 6e-8 into exp(x); the bound allows twice that plus the polynomial's 1.2e-7."""
    sel = TokenSelector(1, 2, 1)
    keys = 397
    logits = torch.linspace(-400.0, 0.0, keys)[torch.randperm(keys, generator=torch.Generator().manual_seed(3))]
    logits = torch.cat([logits, torch.randn(3 * keys, generator=torch.Generator().manual_seed(4)) * 2]).reshape(4, 1, 1, keys)
    with torch.inference_mode():
        got, _ = sel.received(logits, budget_bytes=FUSED)
    x = logits.double().squeeze(1).squeeze(1)
    x = x - x.max(dim=-1, keepdim=True).values
    expect = x.exp() / x.exp().sum(dim=-1, keepdim=True)
    live = x > -87.0
    bound = expect * (2 * 6e-8 * (x.abs() + 1) + 1.2e-7) + 1e-38
    assert ((got.double() - expect).abs() <= bound)[live].all()
    assert (got[~live] == 0).all() and (~live).sum() > 100  # part of the row underflowed: those are 0


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernel_is_the_same_with_any_thread_count(width, threads):
    """Rows are split between threads, each with its own partial sums: the result may not
    depend on how many there are (3 threads on a 2-core CPU: uneven splits)."""
    sel = trained_like(6, 12, 3, seed=0)
    logits = torch.randn(5, 6, 41, 41, generator=torch.Generator().manual_seed(2)) * 3
    before = torch.get_num_threads()
    with torch.inference_mode():
        torch.set_num_threads(1)
        one, _ = sel.received(logits, budget_bytes=FUSED)
        torch.set_num_threads(threads)
        try:
            many, _ = sel.received(logits, budget_bytes=FUSED)
        finally:
            torch.set_num_threads(before)
    assert torch.allclose(many, one, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_maps_are_read_into_float32(width, dtype):
    """Under 16-bit autocast the maps arrive in bfloat16 or float16: the kernel widens each
    row as it reads it and computes in float32, so it matches float32 PyTorch ops on the
    same (rounded) maps."""
    sel = trained_like(6, 12, 3, seed=5)
    maps = (torch.randn(2, 6, 33, 33) * 3).to(dtype)
    with torch.inference_mode():
        got, z = sel.received(maps, keep_logits=True, budget_bytes=FUSED)
        expect, z_expect = sel.received(maps.float(), keep_logits=True, budget_bytes=WHOLE)
    assert z.dtype == dtype and torch.allclose(got, expect, rtol=1e-5, atol=1e-4)
    assert torch.allclose(z.float(), z_expect, rtol=1e-2, atol=1e-2)  # z is handed on in the maps' dtype


def test_a_built_kernel_names_its_build():
    """Calibrations that timed the kernel are keyed by its build tag: the hash of its
    source, flags and machine, so a changed kernel is timed afresh."""
    tag = selector_cpu.build_tag()
    assert tag == selector_cpu._build_name() and tag.startswith("tosa_bench_selector_") and len(tag) == len("tosa_bench_selector_") + 12


def test_kernel_refuses_what_it_cannot_take():
    assert not selector_cpu.usable(torch.zeros(1, 2, 3, 3, dtype=torch.float64))
    assert not selector_cpu.usable(torch.zeros(1, 2, 3, 3, device="meta"))
    with torch.enable_grad():
        assert not selector_cpu.usable(torch.zeros(1, 2, 3, 3))
    with torch.no_grad():
        assert selector_cpu.usable(torch.zeros(1, 2, 3, 3))
    with pytest.raises(RuntimeError, match="float32"):
        selector_cpu.kernel().selector_received(torch.zeros(1, 2, 3, 3, dtype=torch.float64), *[torch.zeros(4, 2, 3), torch.zeros(4), torch.zeros(2, 4, 3), torch.zeros(2)], False, 32)
    sel = TokenSelector(2, 4, 3)
    with torch.no_grad(), pytest.raises(RuntimeError, match="vector_bytes must be 32 or 64, got 16"):
        selector_cpu.received(torch.zeros(1, 2, 3, 3), sel.conv1, sel.conv2, False, 16)


def test_the_vector_width_is_timed_on_this_machine(monkeypatch):
    """Which width runs is calibrated per machine and shape among the widths the build
    offers (no one-piece option: that is not a width), kept in the cache with its timings,
    listed in the selector's budgets (a record's cpu_chunks) and named in its path."""
    calls, real = [], chunks.budget

    def spy(key, runner, candidates=(), whole=True):
        calls.append((key, candidates, whole))
        return real(key, runner, candidates, whole)

    monkeypatch.setattr(chunks, "budget", spy)
    sel = trained_like(3, 6, 3, seed=7)
    logits = torch.randn(2, 3, 5, 23)  # a shape no other test calibrates
    with torch.inference_mode():
        width = sel.kernel_vector_bytes(logits)
        sel.received(logits, budget_bytes=FUSED)
    asked = [c for c in calls if c[0].op == "selector-kernel"]
    key, candidates, whole = asked[0]
    assert len(asked) == 2 and asked[1] == asked[0]  # asked at each call, one key
    assert candidates == selector_cpu.vector_widths() == (32, 64) and whole is False and width in candidates
    assert key.shape == f"heads 3 hidden 6 kernel 3 rows 5 keys 23 | {selector_cpu.build_tag()}" and key.dtype == "float32"
    assert set(chunks.read_cache()[key.text()]["median_ms"]) == {"32", "64"}
    assert chunks.used_by(sel)[key.text()]["bytes"] == width
    assert sel.last_path == f"fused CPU kernel ({width}-byte vectors)"
    assert chunks.describe_budget(width, "selector-kernel") == f"{width}-byte vectors"


@pytest.mark.parametrize("importance", ["mean", "cls"])
def test_a_model_with_the_kernel_selects_what_pytorch_selects(pin_budget, importance):
    """A whole ToSA forward with the kernel (consecutive ToSA blocks, so predicted logits
    are kept and fed on) against one-piece PyTorch: same tokens, same outputs."""
    torch.manual_seed(0)
    m = build_model("test_deep", "tosa", keep=0.5, placement=[2, 3, 5], importance=importance).eval()
    with torch.no_grad():
        for p in m.reducer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    runs = []
    for b in (WHOLE, FUSED):
        pin_budget(b)
        with torch.inference_mode():
            out = m(x)
        runs.append((out, {i: s.index.clone() for i, s in m.reducer.last_selection.items()}))
    (ref, ref_sel), (got, got_sel) = runs
    assert all(torch.equal(got_sel[i], ref_sel[i]) for i in ref_sel)
    assert torch.allclose(got, ref, atol=1e-5)


def test_training_falls_back_to_pytorch(pin_budget):
    """Autograd needs the PyTorch path: with gradients on, a kernel budget gives way to its
    fallback and gradients reach the selector."""
    pin_budget(FUSED, WHOLE)
    sel = trained_like(3, 6, 3, seed=4)
    logits = torch.randn(2, 3, 9, 9)
    assert sel.cpu_budget(logits) == WHOLE
    with torch.no_grad():
        assert sel.cpu_budget(logits) == FUSED
    received, z = sel.received(logits, keep_logits=True)
    F.log_softmax(z, -1).sum().backward()
    assert sel.conv1.weight.grad is not None and sel.conv1.weight.grad.abs().sum() > 0
