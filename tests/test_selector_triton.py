"""ToSA's Triton selector kernel (tosa_bench/kernels/selector_triton.py) on the CPU.

The kernel's arithmetic runs here through Triton's interpreter (``TRITON_INTERPRET=1``,
numpy underneath) in a child process, since the variable must be set before Triton is
imported; each case is compared with the float64 reference of tosa_bench.kernels.reference,
written independently of both the kernel and the PyTorch path (``conv1d`` over rows, softmax, sums). The shapes cover
two programs per image with a partial last one, the "cls" rule's single row, a hidden
width and key count that are not powers of two, kernels 1 and 5, and maps that are a
strided view, with 1 to 5 query rows packed per tile. Every case runs through both
formulations (:data:`selector_triton.FORMS`: v1 "packed", v2 "stacked"), each compared with
the reference on its own; the stacked form packs 5 rows in the kernel-1 case, 2 in the one
1-head case (the only kernel-3 case where its tiling packs rows) and 1 elsewhere. float16 only: float32 maps go to
the PyTorch ops, and bf16 is checked on a GPU only (tests/test_gpu_paths.py): the interpreter
computes a bf16 ``tl.dot`` wrongly (a 16 x 16 product off by ~1e10 with Triton 3.8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tosa_bench.kernels import selector_triton
from tosa_bench.methods.tosa import TokenSelector

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
import torch
from tosa_bench.kernels import reference, selector_triton
from tosa_bench.methods.tosa import TokenSelector

out = []
for case in json.loads(sys.argv[1]):
    torch.manual_seed(case["seed"])
    sel = TokenSelector(case["H"], case["C"], case["K"])
    with torch.no_grad():  # away from the identity start: trained-like weights
        for prm in sel.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    B, H, R, N = case["B"], case["H"], case["R"], case["N"]
    maps = 3 * torch.randn(B, R, H, N)
    maps = maps.permute(0, 2, 1, 3) if case["strided"] else maps.permute(0, 2, 1, 3).contiguous()
    maps = maps.half()
    ref = reference.selector_received(maps, *(p.detach() for p in (sel.conv1.weight, sel.conv1.bias, sel.conv2.weight, sel.conv2.bias)))
    for form in selector_triton.FORMS:
        with torch.no_grad():
            got = selector_triton.received(maps, sel.conv1, sel.conv2, form=form)
        out.append({"form": form, "shape": list(got.shape), "dtype": str(got.dtype),
                    "error": ((got.double() - ref).abs().max() / ref.abs().max()).item()})
print(json.dumps(out))
"""

CASES = [
    # DeiT-S's 6 heads: two rows per tile; 20 rows = programs of 16 and 4 rows
    {"B": 2, "H": 6, "C": 12, "K": 3, "R": 20, "N": 33, "seed": 0, "strided": False},
    # the "cls" rule: one query row, so the second packed row of the tile is empty
    {"B": 2, "H": 6, "C": 12, "K": 3, "R": 1, "N": 33, "seed": 1, "strided": False},
    # 4 heads: four rows per tile; hidden 10 (40 lanes, padded to 64), kernel 5, 17 keys (padded to 32)
    {"B": 1, "H": 4, "C": 10, "K": 5, "R": 7, "N": 17, "seed": 2, "strided": False},
    # 3 heads: five rows per tile (15 rows per program), kernel 1, exactly 16 keys
    {"B": 2, "H": 3, "C": 6, "K": 1, "R": 17, "N": 16, "seed": 3, "strided": False},
    # 5 heads: three rows per tile and one unused lane; a strided view of the maps
    {"B": 2, "H": 5, "C": 10, "K": 3, "R": 4, "N": 33, "seed": 4, "strided": True},
    # DeiT-B's 12 heads: one row per tile, hidden 24 (padded to 32)
    {"B": 1, "H": 12, "C": 24, "K": 3, "R": 3, "N": 20, "seed": 5, "strided": False},
    # one head: the stacked form packs 2 rows of 5 shifts into 16 lanes with kernel 3; 5 rows leave the last tile half empty
    {"B": 1, "H": 1, "C": 2, "K": 3, "R": 5, "N": 19, "seed": 6, "strided": False},
]
#: fp16 operands and hidden activations against float64: the rounding of a few fp16 steps
TOLERANCE = 3e-3


@pytest.fixture(scope="module")
def interpreted() -> list[dict]:
    pytest.importorskip("triton", reason="triton is not installed: the kernel cannot be interpreted here")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("form", selector_triton.FORMS)
@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"H{c['H']}C{c['C']}K{c['K']}R{c['R']}N{c['N']}" for c in CASES])
def test_kernel_matches_a_float64_reference(interpreted, i, form) -> None:
    case, got = CASES[i], interpreted[len(selector_triton.FORMS) * i + selector_triton.FORMS.index(form)]
    assert got["form"] == form
    assert got["shape"] == [case["B"], case["N"]] and got["dtype"] == "torch.float32"
    assert got["error"] <= TOLERANCE, got


def test_the_forms_are_the_packed_default_and_the_stacked() -> None:
    import inspect

    assert selector_triton.FORMS == ("packed", "stacked")
    assert inspect.signature(selector_triton.received).parameters["form"].default == "packed"


def test_an_unknown_form_is_refused_by_name() -> None:
    sel = TokenSelector(6)
    with pytest.raises(ValueError, match=r"unknown selector kernel form 'tiled': expected one of 'packed', 'stacked'"):
        selector_triton.received(torch.randn(1, 6, 1, 9).half(), sel.conv1, sel.conv2, form="tiled")


def test_reasons_it_will_not_run(monkeypatch) -> None:
    if selector_triton.unavailable_reason() is not None:
        pytest.skip(f"the kernel is unavailable here: {selector_triton.unavailable_reason()}")
    maps = torch.randn(1, 2, 3, 5).half()
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert selector_triton.unavailable_reason(maps) == "maps on cpu, not a CUDA device"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # past the device check, to reach the others
    assert selector_triton.usable(maps)
    for dtype in (torch.float32, torch.float64):
        assert selector_triton.unavailable_reason(maps.to(dtype)) == f"maps of dtype {str(dtype)[6:]} (the kernel takes float16 and bfloat16)"
    wide = torch.randn(1, 1, 1, 513).half()
    assert selector_triton.unavailable_reason(wide) == "513 keys (the kernel takes up to 512)"
    assert selector_triton.usable(torch.randn(1, 1, 1, 512).half())
    with torch.enable_grad():
        assert selector_triton.unavailable_reason(maps.requires_grad_()) == "a gradient is wanted (the kernel has no backward)"
    monkeypatch.setenv(selector_triton.DISABLE_ENV, "1")
    assert selector_triton.unavailable_reason(maps.detach()) == f"turned off by {selector_triton.DISABLE_ENV}"
    assert selector_triton.version_or_reason() == (None, f"turned off by {selector_triton.DISABLE_ENV}")


def test_version_names_triton_when_it_can_run(monkeypatch) -> None:
    monkeypatch.delenv(selector_triton.DISABLE_ENV, raising=False)
    version, reason = selector_triton.version_or_reason()
    if reason is None:
        import triton

        assert version == f"triton {triton.__version__}"
    else:
        assert version is None and reason.startswith("triton is not importable")


def test_the_cpu_path_never_takes_the_triton_kernel() -> None:
    sel = TokenSelector(3)
    with torch.no_grad():
        sel.received(torch.randn(2, 3, 9, 9))
    assert sel.last_path in {"fused CPU kernel (32-byte vectors)", "fused CPU kernel (64-byte vectors)", "PyTorch ops in one piece", "PyTorch ops in chunks"}


@pytest.mark.parametrize("heads,hidden,rows,keys,expected", [
    # DeiT-S, "mean" rule: 2 rows of 6 heads per 16-lane tile, 8 tiles (16 rows) per program, 13 programs per image
    (6, 12, 197, 197, (16, 2, 32, 256, 8, 13)),
    # DeiT-S, "cls" rule: its one row takes one pass of one program, not 8 passes over empty rows
    (6, 12, 1, 197, (16, 2, 32, 256, 1, 1)),
    # DeiT-B: 12 heads, one row per tile, 16 rows per program
    (12, 24, 197, 197, (16, 1, 32, 256, 16, 13)),
    # 3 heads: 5 rows per tile, 3 tiles (15 rows) per program; 17 rows need 2 programs
    (3, 6, 17, 16, (16, 5, 32, 16, 3, 2)),
    # 17 heads: 32 lanes, one row; 257 keys pad to 512
    (17, 34, 4, 257, (32, 1, 64, 512, 4, 1)),
])
def test_tiling(heads, hidden, rows, keys, expected) -> None:
    t = selector_triton.tiling(heads, hidden, rows, keys)
    assert tuple(t) == expected
    assert t.packed * t.iters * t.programs >= rows > t.packed * t.iters * (t.programs - 1)  # every row, no spare program


@pytest.mark.parametrize("heads,hidden,kernel,rows,keys,expected", [
    # DeiT-S: one row per tile (5 shifts x 6 heads = 30 -> 32 input lanes, 3 x 12 = 36 -> 64 hidden),
    # 16 rows per program, 8 warps for the 64 x 256 float32 hidden tile
    (6, 12, 3, 197, 197, (16, 1, 32, 64, 256, 16, 13, 8)),
    # the "cls" rule: one pass of one program
    (6, 12, 3, 1, 197, (16, 1, 32, 64, 256, 1, 1, 8)),
    # DeiT-B: 60 -> 64 input lanes, 72 -> 128 hidden; 128 x 256 takes 16 warps
    (12, 24, 3, 197, 197, (16, 1, 64, 128, 256, 16, 13, 16)),
    # DeiT-S at 257 keys: 64 x 512 also takes 16 warps
    (6, 12, 3, 40, 257, (16, 1, 32, 64, 512, 16, 3, 16)),
    # kernel 1, 3 heads: five rows fill 15 of 16 input lanes and 30 of 32 hidden, fewest multiply-adds per row
    (3, 6, 1, 17, 16, (16, 5, 16, 32, 16, 3, 2, 4)),
    # kernel 3, 3 heads: one row (15 -> 16, 18 -> 32); two would pad to 32 x 64, more per row
    (3, 6, 3, 17, 16, (16, 1, 16, 32, 16, 16, 2, 4)),
    # kernel 5, 4 heads: one row (36 -> 64, 50 -> 64); small tiles stay at 4 warps
    (4, 10, 5, 7, 17, (16, 1, 64, 64, 32, 7, 1, 4)),
    # one head: 2 rows (10 -> 16 input, 12 -> 16 hidden) cost what one does, so 2 per tile
    (1, 2, 3, 5, 19, (16, 2, 16, 16, 32, 3, 1, 4)),
])
def test_stacked_tiling(heads, hidden, kernel, rows, keys, expected) -> None:
    t = selector_triton.stacked_tiling(heads, hidden, kernel, rows, keys)
    assert tuple(t) == expected
    assert t.stacked >= (2 * kernel - 1) * t.packed * heads and t.hidden >= kernel * t.packed * hidden and t.lanes >= t.packed * heads
    assert t.packed * t.iters * t.programs >= rows > t.packed * t.iters * (t.programs - 1)


def test_stacked_tiling_packs_no_second_row_past_the_hidden_budget(monkeypatch) -> None:
    # kernel 1, 3 heads packs 5 rows (hidden 32 x 16 keys); with room for 16 x 16 it packs the rows that fit
    monkeypatch.setattr(selector_triton, "STACKED_HIDDEN_BUDGET", 16 * 16)
    assert selector_triton.stacked_tiling(3, 6, 1, 17, 16).packed == 2
    monkeypatch.setattr(selector_triton, "STACKED_HIDDEN_BUDGET", 1)
    assert selector_triton.stacked_tiling(3, 6, 1, 17, 16).packed == 1  # one row always


def test_stacked_weights_place_each_tap() -> None:
    """The block-structured weights read as the convolutions they stand for: hidden row
    (s, q, c) takes conv1's tap t from input row (s + t, q, head), and output lane (q, head)
    takes conv2's tap s from hidden row (s, q, c); every other entry, and the padding, is zero."""
    torch.manual_seed(0)
    H, C, K = 1, 2, 3
    sel = TokenSelector(H, C, K)
    with torch.no_grad():
        for prm in sel.parameters():
            prm.copy_(torch.randn_like(prm))
    t = selector_triton.stacked_tiling(H, C, K, 5, 19)
    assert t.packed == 2
    w1, b1, w2, b2 = selector_triton._stacked_weights(sel.conv1, sel.conv2, t, torch.float32)
    assert w1.shape == (t.hidden, t.stacked) and w2.shape == (t.lanes, t.hidden)
    want1, want2 = torch.zeros_like(w1), torch.zeros_like(w2)
    L, CH = t.packed * H, t.packed * C
    for q in range(t.packed):
        for c in range(C):
            for h in range(H):
                for s in range(K):
                    want2[q * H + h, s * CH + q * C + c] = sel.conv2.weight[h, c, s]
                    for tap in range(K):
                        want1[s * CH + q * C + c, (s + tap) * L + q * H + h] = sel.conv1.weight[c, h, tap]
    assert torch.equal(w1, want1) and torch.equal(w2, want2)
    assert torch.equal(b1[: K * CH], sel.conv1.bias.detach().repeat(K * t.packed)) and not b1[K * CH :].any()
    assert torch.equal(b2[:L], sel.conv2.bias.detach().repeat(t.packed)) and not b2[L:].any()


@pytest.mark.parametrize("form", selector_triton.FORMS)
def test_a_kernel_that_does_not_fit_fails_once_with_its_reason(monkeypatch, form) -> None:
    """On a GPU with less shared memory than the kernel needs, Triton raises at launch: the
    selector must then run the PyTorch ops with the reason recorded, and not try again."""
    triton = pytest.importorskip("triton", reason="triton is not installed")
    from triton.runtime.errors import OutOfResources

    launches = []

    class TooBig:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(grid)
                raise OutOfResources(251904, 232448, "shared memory")
            return launch

    class Fits:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(("other form", grid))
            return launch

    other = next(f for f in selector_triton.FORMS if f != form)
    monkeypatch.setattr(selector_triton, "_triton", lambda: ((triton, {form: TooBig(), other: Fits()}), None))
    monkeypatch.setattr(selector_triton, "_failed", {})
    sel = TokenSelector(6)
    maps = torch.randn(2, 6, 5, 9).half()
    reason = "the kernel could not run here: OutOfResources: out of resource: shared memory, Required: 251904, Hardware limit: 232448."
    for _ in range(2):
        with pytest.raises(selector_triton.KernelFailed) as failed:
            selector_triton.received(maps, sel.conv1, sel.conv2, form=form)
        assert str(failed.value).startswith(reason)
    assert launches == [(2, 1)]  # the second call did not launch again
    # another layout is tried on its own
    with pytest.raises(selector_triton.KernelFailed):
        selector_triton.received(torch.randn(2, 6, 5, 40).half(), sel.conv1, sel.conv2, form=form)
    assert len(launches) == 2
    # and the other form's failure record is its own: the same maps launch it
    selector_triton.received(maps, sel.conv1, sel.conv2, form=other)
    assert launches[-1] == ("other form", (2, 1))


@pytest.mark.parametrize("form", selector_triton.FORMS)
def test_any_other_launch_error_propagates(monkeypatch, form) -> None:
    triton = pytest.importorskip("triton", reason="triton is not installed")

    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise ValueError("a bug in the launch arguments")
            return launch

    monkeypatch.setattr(selector_triton, "_triton", lambda: ((triton, {f: Broken() for f in selector_triton.FORMS}), None))
    monkeypatch.setattr(selector_triton, "_failed", {})
    sel = TokenSelector(6)
    with pytest.raises(ValueError, match="a bug"):
        selector_triton.received(torch.randn(1, 6, 1, 9).half(), sel.conv1, sel.conv2, form=form)
    assert not selector_triton._failed  # a bug is not remembered as a layout that does not fit


@pytest.mark.parametrize("slow,expect", [("packed", "stacked"), ("stacked", "packed"), ("fails", "packed")])
def test_the_form_is_timed_per_shape_and_a_failing_form_is_left_out(monkeypatch, tmp_path, slow, expect) -> None:
    """TokenSelector.triton_form times each form on maps of the call's shape (here on the
    CPU with the kernel faked: the real one needs CUDA or the interpreter) and keeps the
    fastest; a form whose launch fails is not a candidate; the choice is keyed by batch."""
    import time

    from tosa_bench.models import chunks

    calls = []

    def fake(maps, conv1, conv2, form="packed"):
        calls.append((tuple(maps.shape), form))
        if slow == "fails" and form == "stacked":
            raise selector_triton.KernelFailed("the kernel could not run here: OutOfResources")
        if form == slow:
            time.sleep(0.003)
        return torch.zeros(maps.shape[0], maps.shape[-1])

    monkeypatch.setattr(selector_triton, "received", fake)
    monkeypatch.setenv(chunks.CACHE_ENV, str(tmp_path))  # a calibration of its own per case
    chunks.forget_budgets()
    sel = TokenSelector(2, 4, 3)
    maps = torch.randn(3, 2, 5, 7).half()
    assert sel.triton_form(maps, devices=("cpu",)) == expect
    (text, budget), = ((t, b) for t, b in sel.chunk_budgets.items() if t.startswith("selector-triton "))
    assert "batch 3 heads 2 hidden 4 kernel 3 rows 5 keys 7 | packed, stacked float16" in text and budget.source == "calibrated"
    assert {c[0] for c in calls} == {(3, 2, 5, 7)} and {c[1] for c in calls} == {"packed", "stacked"}
    assert sel.triton_form(maps) == "packed"  # off CUDA nothing is timed
    sel.compiled_kernel = (5, 7, torch.float16, expect)
    assert sel.compiled_path == f"triton kernel ({expect}), a custom op in the compiled graph"
    chunks.forget_budgets()
