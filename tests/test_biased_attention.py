"""Attention with ToMe's per-key bias (tosa_bench/kernels/biased_attention.py): every
backend against the float64 reference, the timed choice among them, and the record naming
the one that ran. The CUDA backends are checked by tests/test_gpu_paths.py."""

from __future__ import annotations

import pytest
import torch

from tosa_bench import build_model
from tosa_bench.kernels import biased_attention, reference
from tosa_bench.methods.base import kernel_paths
from tosa_bench.models import chunks
from tosa_bench.models.chunks import CandidateUnavailable, ChunkKey
from tosa_bench.models.vit import Attention


def _inputs(batch=2, heads=3, n=37, d=16, full_bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, d, generator=g) for _ in range(3))
    shape = (batch, heads, n, n) if full_bias else (batch, 1, 1, n)
    bias = torch.randint(1, 9, shape, generator=g).float().log()  # log(size) of merged tokens, 0 .. log 8
    return q, k, v, bias


@pytest.mark.parametrize("backend", biased_attention.candidates(torch.device("cpu")))
@pytest.mark.parametrize("full_bias", [False, True], ids=["per-key bias", "full bias"])
def test_every_cpu_backend_equals_the_float64_reference(backend, full_bias):
    q, k, v, bias = _inputs(full_bias=full_bias)
    got = biased_attention.attend(backend, q, k, v, bias, q.shape[-1] ** -0.5)
    expect = reference.biased_attention(q, k, v, bias, q.shape[-1] ** -0.5)
    assert got.shape == expect.shape and got.dtype == torch.float32
    # float32 softmax-weighted sums of 37 unit-scale values against float64: rounding only
    assert torch.allclose(got.double(), expect, rtol=1e-5, atol=2e-6)


def test_the_bias_changes_the_output():
    """A bias that the backend dropped would still match a reference that dropped it too:
    the reference itself must see it."""
    q, k, v, bias = _inputs()
    scale = q.shape[-1] ** -0.5
    assert not torch.allclose(reference.biased_attention(q, k, v, bias, scale), reference.biased_attention(q, k, v, None, scale), atol=1e-3)


def test_cpu_candidates_and_refusals():
    assert biased_attention.candidates(torch.device("cpu")) == ("sdpa", "explicit")
    assert biased_attention.candidates(torch.device("cuda")) == biased_attention.BACKENDS
    q, k, v, bias = _inputs()
    ok, why = biased_attention.usable(torch.device("cpu"), q, k, v, bias, 0.25)
    assert ok == ("sdpa", "explicit") and why == {}
    reason = biased_attention.unavailable_reason("sdpa-efficient", q, k, v, bias, 0.25)  # a CUDA kernel, on CPU tensors
    assert reason is not None and reason.startswith("sdpa-efficient: ")
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        biased_attention.attend("flash", q, k, v, bias, 0.25)


def test_a_candidate_that_cannot_run_is_left_out_and_index_zero_is_a_form():
    """Backends are calibrated by index, whole=False: index 0 ("sdpa") is a candidate, not
    the one-piece budget, and a backend that refuses the inputs is dropped before timing."""
    now = [0.0]
    cost = {0: 0.3, 1: 0.5, 2: 0.1}

    def run(i):
        if i == 2:
            raise CandidateUnavailable("refused")
        now[0] += cost[i]

    best, medians = chunks.calibrate(run, candidates=(0, 1, 2), rounds=3, clock=lambda: now[0], whole=False)
    assert best == 0 and set(medians) == {0, 1}
    with pytest.raises(RuntimeError, match="no candidate could run"):
        chunks.calibrate(lambda i: (_ for _ in ()).throw(CandidateUnavailable("x")), candidates=(0,), whole=False)


def test_the_backend_is_timed_per_shape_and_the_fastest_kept(monkeypatch):
    """The Attention module offers every CPU backend to the calibration, keyed by shape and
    dtype, and runs the one it returns; on the meta device (like a trace) nothing is timed."""
    seen = []

    def fake(key, runner, candidates=(), whole=True, clock=None):
        seen.append((key, candidates, whole))
        run = runner()
        for i in candidates:
            run(i)  # every candidate runs on the calibration inputs
        return chunks.Budget(biased_attention.BACKENDS.index("explicit"), "calibrated")

    monkeypatch.setattr(chunks, "budget", fake)
    attn = Attention(24, 3).eval()
    x = torch.randn(2, 9, 24)
    bias = torch.rand(2, 1, 1, 9).log1p()
    with torch.no_grad():
        out = attn(x, bias=bias)
    key, candidates, whole = seen[0]
    assert key.op == "biased-attention" and key.shape.startswith("heads 3 tokens 9 head_dim 8 bias 1x1x9") and key.device == "cpu"
    assert candidates == (0, 1) and whole is False
    assert attn.last_path == "biased attention: explicit (explicit softmax)"
    q, k, v = attn.qkv(x).reshape(2, 9, 3, 3, 8).permute(2, 0, 3, 1, 4).unbind(0)
    expect = attn.proj(reference.biased_attention(q, k, v, bias, attn.scale).float().transpose(1, 2).reshape(2, 9, 24))
    assert torch.allclose(out.out, expect, rtol=1e-5, atol=1e-6)
    assert attn.bias_backend(torch.empty(2, 3, 9, 8, device="meta"), bias.to("meta")) == biased_attention.DEFAULT and len(seen) == 1


@pytest.mark.parametrize("backend", ["sdpa", "explicit"])
def test_tome_outputs_are_the_same_on_either_backend_and_the_record_names_it(backend):
    """ToMe's model with the backend pinned: the same logits (to float rounding) as with
    the other backend, and kernel_paths says which ran (the map of proportional attention
    only exists after the first merge)."""
    torch.manual_seed(0)
    model = build_model("test_deep", "tome", r=4).eval()
    images = torch.randn(2, 3, *(model.cfg.img_size,) * 2)
    outs = {}
    for b in ("sdpa", "explicit"):
        for blk in model.blocks:
            blk.attn.__dict__.pop("last_path", None)
        for n in range(2, model.cfg.num_tokens + 1):
            key = ChunkKey("biased-attention", f"heads {model.cfg.num_heads} tokens {n} head_dim {model.cfg.head_dim} bias 1x1x{n} | sdpa, explicit",
                           "float32")
            chunks.set_budget(key, biased_attention.BACKENDS.index(b))
        with torch.no_grad():
            outs[b] = model(images)
        if b == backend:
            paths = kernel_paths(model)
    chunks.forget_budgets()
    assert paths == [f"biased attention: {backend} ({biased_attention.DESCRIPTION[backend]})"]
    assert torch.allclose(outs["sdpa"], outs["explicit"], rtol=1e-4, atol=1e-5)


def test_without_proportional_attention_no_biased_path_is_recorded():
    model = build_model("test_deep", "tome", r=4, prop_attn=False).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, *(model.cfg.img_size,) * 2))
    assert kernel_paths(model) == []


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the pinned backends are CUDA kernels")


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_every_cuda_backend_that_runs_equals_the_float64_reference(dtype, tol):
    """DeiT-S's shapes after a few merges (6 heads, 173 tokens, not a multiple of 8): each
    backend the card takes against float64, and at least the explicit and PyTorch-dispatch
    ones take it; the reasons of the others are stated."""
    q, k, v, bias = (t.cuda() for t in _inputs(batch=4, heads=6, n=173, d=64))
    q, k, v, b = (t.to(dtype) for t in (q, k, v, bias))
    ok, why = biased_attention.usable(q.device, q, k, v, b, 0.125)
    assert {"sdpa", "explicit"} <= set(ok), why
    expect = reference.biased_attention(q, k, v, b, 0.125)
    for backend in ok:
        got = biased_attention.attend(backend, q, k, v, b, 0.125)
        err = ((got.double() - expect).abs().max() / expect.abs().max()).item()
        assert err <= tol, (backend, err)


@needs_cuda
def test_on_cuda_the_backend_is_timed_at_the_batch_and_named():
    chunks.forget_budgets()
    attn = Attention(384, 6).cuda().eval()
    x = torch.randn(16, 173, 384, device="cuda")
    bias = torch.randint(1, 9, (16, 1, 1, 173), device="cuda").float().log()
    with torch.no_grad():
        attn(x, bias=bias)
    (text, budget), = ((t, b) for t, b in attn.chunk_budgets.items() if t.startswith("biased-attention "))
    assert " batch 16 " in text and torch.cuda.get_device_name() in text and budget.source in ("calibrated", "cache")
    assert attn.last_path.startswith(f"biased attention: {biased_attention.BACKENDS[budget.bytes]} (")


def test_a_settled_backend_is_remembered_per_shape_until_budgets_change(monkeypatch):
    """Every block of every forward asks for its backend: the calibration is looked up once
    per shape, again for a new shape, and again after budgets were pinned or forgotten."""
    asked = []

    def fake(key, runner, candidates=(), whole=True, clock=None):
        asked.append(key.shape.split(" bias")[0])
        return chunks.Budget(biased_attention.BACKENDS.index("sdpa"), "calibrated")

    monkeypatch.setattr(chunks, "budget", fake)
    attn = Attention(24, 3).eval()
    bias = torch.zeros(2, 1, 1, 9)
    with torch.no_grad():
        for _ in range(3):
            attn(torch.randn(2, 9, 24), bias=bias)
        attn(torch.randn(2, 7, 24), bias=bias[..., :7])
        chunks.forget_budgets()
        attn(torch.randn(2, 9, 24), bias=bias)
    assert asked == ["heads 3 tokens 9 head_dim 8", "heads 3 tokens 7 head_dim 8", "heads 3 tokens 9 head_dim 8"]
