"""Where ToSA's time goes on a CUDA device, and what its selector costs in other layouts.

Two parts, both at DeiT-S shapes (6 heads, 197 tokens) in fp16 autocast:

1. ``profile``: CUDA kernel time per op (torch.profiler, 3 forwards after 3 warm-ups) of
   dense, ToSA (keep 0.5, alternate; ``mean`` and ``cls`` rules) and ToMe (r = 8) at
   ``--batch-size``.
2. ``kernels``: one selector's ``received`` (predicted attention each key receives) in
   each formulation (both Triton forms, the PyTorch ops, other layouts), ToMe's attention
   with its per-key bias on each backend the card takes, and the attention of a block
   whose logits a selector reads (explicit or fused), timed with CUDA events, median of 20
   after 5 warm-ups, each checked against the float64 reference
   (tosa_bench.kernels.reference) on a few images.

    python benchmarks/selector_gpu.py --batch-size 256            # both parts
    python benchmarks/selector_gpu.py --part kernels

Prints tables; nothing is written. What it found is in docs/gpu-selector.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable

import torch
import torch.nn.functional as F

from tosa_bench import build_model
from tosa_bench.kernels import reference, selector_triton
from tosa_bench.methods.tosa import TokenSelector


def _median_ms(fn: Callable[[], object], warmup: int = 5, iters: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def profile_models(batch: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(batch, 3, 224, 224, device="cuda")
    for variant, options in (("dense", {}), ("tosa", {"keep": 0.5}), ("tosa", {"keep": 0.5, "importance": "cls"}), ("tome", {"r": 8})):
        torch.manual_seed(0)
        model = build_model("deit_small_patch16_224", variant, **options).cuda().eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            step_ms = _median_ms(lambda: model(x), warmup=3, iters=10)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    model(x)
                torch.cuda.synchronize()
        print(f"\n### {variant} {options}: {step_ms:.2f} ms per forward (median of 10), batch {batch}, fp16 autocast")
        avg = prof.key_averages()
        key = "self_device_time_total" if hasattr(avg[0], "self_device_time_total") else "self_cuda_time_total"
        print(avg.table(sort_by=key, row_limit=14, max_name_column_width=60))


def formulations(batch: int, alternatives: bool = True) -> None:
    H, N = 6, 197
    torch.manual_seed(0)
    sel = TokenSelector(H).cuda()
    with torch.no_grad():  # trained-like weights: not the identity start, so no formulation can lean on it
        for p in sel.parameters():
            p.add_(0.05 * torch.randn_like(p))
    maps = (3 * torch.randn(batch, H, N, N, device="cuda")).half()
    w1, b1, w2, b2 = sel.conv1.weight, sel.conv1.bias, sel.conv2.weight, sel.conv2.bias

    def pytorch_ops() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            return sel.received(maps, budget_bytes=None)[0]

    def dispatched() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            return sel.received(maps)[0]

    def channels_first() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            h = F.relu(F.conv2d(maps, w1.unsqueeze(2), b1, padding=(0, 1)))
            z = F.conv2d(h, w2.unsqueeze(2), b2, padding=(0, 1))
        return z.float().softmax(dim=-1).sum(dim=(1, 2))

    def rows_conv1d() -> torch.Tensor:
        rows = maps.permute(0, 2, 1, 3).reshape(batch * N, H, N)
        with torch.autocast("cuda", dtype=torch.float16):
            z = F.conv1d(F.relu(F.conv1d(rows, w1, b1, padding=1)), w2, b2, padding=1)
        return z.float().softmax(dim=-1).view(batch, N, H, N).sum(dim=(1, 2))

    def channels_last_half_softmax() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            z = sel(maps)
        return z.contiguous().float().softmax(dim=-1).sum(dim=(1, 2))

    candidates = {"PyTorch ops: channels-last conv2d, autocast softmax": pytorch_ops}
    for form in selector_triton.FORMS:  # each Triton form on its own, whichever the timing would pick
        candidates[f"Triton kernel, {form} form"] = (lambda f: lambda: selector_triton.received(maps, sel.conv1, sel.conv2, f))(form)
    if alternatives:
        candidates.update({"channels-first conv2d": channels_first, "conv1d over rows": rows_conv1d,
                           "channels-last conv2d, contiguous softmax": channels_last_half_softmax})
        try:
            candidates["torch.compile(channels-first)"] = torch.compile(channels_first, dynamic=False)
        except Exception as e:  # noqa: BLE001  (reported, not hidden)
            print(f"torch.compile unavailable: {e}", file=sys.stderr)
    with torch.no_grad():
        dispatched()
    candidates[f"received() as dispatched: {sel.last_path}"] = dispatched

    with torch.no_grad():
        ref = reference.selector_received(maps[:4].cpu(), *(t.detach().cpu() for t in (w1, b1, w2, b2)))
    print(f"\n### one selector's received(), batch {batch}, maps {H}x{N}x{N} fp16; CUDA events, median of 20")
    print("| formulation | ms | max rel. error vs float64 (4 images) |\n|---|---:|---:|")
    with torch.inference_mode():
        for name, fn in candidates.items():
            try:
                got = fn()[:4].double().cpu()
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                print(f"| {name} | {_median_ms(fn):.3f} | {err:.1e} |", flush=True)
            except Exception as e:  # noqa: BLE001  (one failing formulation must not hide the others)
                print(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''} | |", flush=True)


def attention_forms(batch: int) -> None:
    """The attention of a block whose logits a selector reads: explicit softmax in one
    piece against the fused form (flash attention plus one product for the logits), with
    dense's plain fused attention for scale."""
    from tosa_bench.models.chunks import FUSED
    from tosa_bench.models.vit import Attention

    att = Attention(384, 6).cuda()
    q, k, v = (torch.randn(batch, 6, 197, 64, device="cuda").half() for _ in range(3))
    forms = {"explicit softmax, one piece": lambda: att._explicit(q, k, v, None, budget_bytes=None),
             "fused: flash attention + logits product": lambda: att._explicit(q, k, v, None, budget_bytes=FUSED),
             "dense's attention (flash, no logits)": lambda: F.scaled_dot_product_attention(q, k, v)}
    print(f"\n### attention with its logits, batch {batch}, 6 heads x 197 tokens, fp16 autocast; CUDA events, median of 20")
    print("| form | ms |\n|---|---:|")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        for name, fn in forms.items():
            print(f"| {name} | {_median_ms(fn):.3f} |", flush=True)


def biased_attention_backends(batch: int, tokens: int = 173) -> None:
    """ToMe's attention with its log-size bias per key (DeiT-S after three merges of r = 8:
    173 tokens) on every backend the card takes, against float64 on a few images, with
    dense's flash attention without a bias for scale."""
    from tosa_bench.kernels import biased_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, 6, tokens, 64, device="cuda", generator=g).half() for _ in range(3))
    bias = torch.randint(1, 8, (batch, 1, 1, tokens), device="cuda", generator=g).float().log().half()
    ok, why = biased_attention.usable(q.device, q, k, v, bias, 0.125)
    ref = reference.biased_attention(q[:4].cpu(), k[:4].cpu(), v[:4].cpu(), bias[:4].cpu(), 0.125)
    print(f"\n### attention with a bias per key, batch {batch}, 6 heads x {tokens} tokens, fp16; CUDA events, median of 20")
    print("| backend | ms | max rel. error vs float64 (4 images) |\n|---|---:|---:|")
    with torch.inference_mode():
        for backend in ok:
            fn = (lambda b: lambda: biased_attention.attend(b, q, k, v, bias, 0.125))(backend)
            err = ((fn()[:4].double().cpu() - ref).abs().max() / ref.abs().max()).item()
            print(f"| {backend}: {biased_attention.DESCRIPTION[backend]} | {_median_ms(fn):.3f} | {err:.1e} |", flush=True)
        print(f"| dense's attention (flash, no bias), for scale | {_median_ms(lambda: F.scaled_dot_product_attention(q, k, v)):.3f} | |")
    for backend, reason in why.items():
        print(f"| {backend} | not available: {reason} | |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--part", choices=["all", "profile", "kernels"], default="all")
    p.add_argument("--no-alternatives", action="store_true", help="time only the PyTorch ops and the dispatched path")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("error: needs a CUDA device", file=sys.stderr)
        return 2
    if a.part in ("all", "kernels"):
        formulations(a.batch_size, alternatives=not a.no_alternatives)
        biased_attention_backends(a.batch_size)
        attention_forms(a.batch_size)
    if a.part in ("all", "profile"):
        profile_models(a.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
