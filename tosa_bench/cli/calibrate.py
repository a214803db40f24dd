"""``tosa-bench calibrate``: time a model's calibrated CPU ops on this machine and show the plan kept."""

from __future__ import annotations

from typing import Annotated

import typer

from tosa_bench.cli.common import DType, app, guarded, out


@app.command("calibrate")
@guarded
def calibrate_command(
    model: Annotated[str, typer.Option(help="Model config, e.g. deit_small_patch16_224 (see `tosa-bench models`).")] = "deit_small_patch16_224",
    dtype: Annotated[DType, typer.Option(help="fp32, or bf16 autocast.")] = DType.fp32,
    refresh: Annotated[bool, typer.Option("--refresh", help="Forget this machine's calibrations and time every op again.")] = False,
) -> None:
    """Time the CPU ops that work on full attention maps (the explicit attention of a map
    block, ToSA's selector: PyTorch in chunks of several sizes, in one piece, or fused)
    and ToMe's attention with its bias (one backend per token count) for MODEL on this
    machine, and show the fastest, which every run uses.

    Runs calibrate themselves on first use; this shows the result, or redoes it after the
    machine changed (--refresh). Kept in the cache file named below.

    Example: tosa-bench calibrate --model deit_small_patch16_224 --refresh"""
    import torch

    from rich.table import Table

    from tosa_bench.build import build_model
    from tosa_bench.kernels import selector_cpu
    from tosa_bench.models import chunks
    from tosa_bench.precision import autocast, resolve_autocast

    resolve_autocast(dtype.value, "cpu")
    from tosa_bench.methods import registry

    # the method with selectors (ToSA) has both chunked ops: a map block's explicit attention
    # and its selectors; ToMe (r = 8) has the biased attention, one backend per token count
    nets = [build_model(model, registry.selector_takers()[0], keep=0.5).eval(), build_model(model, "tome", r=8).eval()]
    if refresh:
        dropped = chunks.drop_machine()
        out.print(f"forgot {dropped} calibration(s) of this machine")
    size = nets[0].cfg.img_size
    used: dict[str, dict] = {}
    for net in nets:
        with torch.inference_mode(), autocast(dtype.value, torch.device("cpu")):
            net(torch.randn(2, 3, size, size))
        used.update(chunks.used_by(net))
    cache = chunks.read_cache()
    t = Table(title=f"{model}, {dtype.value}: calibrated CPU ops on this machine", caption=f"machine: {chunks.machine_signature()}; kept in {chunks.cache_path()}")
    t.add_column("op", overflow="fold")  # "selector-kernel" whole, on a narrow terminal too
    for col in ("shape", "kept", "source", f"median ms per call ({chunks.CALIBRATION_IMAGES} images), fastest first"):
        t.add_column(col)
    for text, b in used.items():
        op, shape = text.split(" | ")[0].split(" ", 1)
        medians = cache.get(text, {}).get("median_ms", {})
        ranked = sorted(medians.items(), key=lambda kv: kv[1])
        timed = ", ".join(f"{chunks.describe_budget(int(k), op)} {v:.2f}" for k, v in ranked[:3]) + (f" (+{len(ranked) - 3} slower)" if len(ranked) > 3 else "")
        t.add_row(op, shape, chunks.describe_budget(b["bytes"], op), b["source"], timed or "-")
    out.print(t)
    if selector_cpu.kernel() is None:
        out.print(f"fused selector kernel: not available ({selector_cpu.unavailable_reason()})")
