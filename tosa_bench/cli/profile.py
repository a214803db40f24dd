"""``tosa-bench profile``: one model/variant, measured and explained block by block."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tosa_bench.cli.common import (BATCH_HELP, CHECKPOINT_HELP, COMPILE_HELP, compile_modes, FUSE_HELP, IMPORTANCE_HELP, PLACEMENT_HELP, SEED_HELP, SELECTOR_HELP,
                                   STUDIED_VARIANT, VARIANT_HELP, DType, app, check_output_file, default_batch_size, deprecated_alias, guarded, json_safe,
                                   out, output_file, parse_size, point_options)
from tosa_bench.errors import OptionError


@app.command("profile")
@guarded
def profile_command(
    model: Annotated[str, typer.Option(help="Model config, e.g. deit_small_patch16_224 (see `tosa-bench models`).")] = "deit_small_patch16_224",
    variant: Annotated[str, typer.Option(help=VARIANT_HELP)] = STUDIED_VARIANT,
    keep: Annotated[Optional[float], typer.Option(help="Keep ratio in (0, 1]; what it means per variant: `tosa-bench models` (tome: r = round((1-keep)(N-1)/L)).")] = None,
    placement: Annotated[Optional[str], typer.Option(help=PLACEMENT_HELP)] = None,
    tome_r: Annotated[Optional[int], typer.Option("--tome-r", help="ToMe tokens merged per block (overrides the keep mapping).")] = None,
    evit_loc: Annotated[Optional[str], typer.Option("--evit-loc", help="EViT pruning blocks, 0-based, e.g. 3,6,9.")] = None,
    fuse: Annotated[bool, typer.Option("--fuse/--no-fuse", help=FUSE_HELP)] = True,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    importance: Annotated[Optional[str], typer.Option(help=IMPORTANCE_HELP)] = None,
    img_size: Annotated[Optional[str], typer.Option("--img-size", help="Input side in pixels, N (default: the model's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help=BATCH_HELP)] = None,
    dtype: Annotated[DType, typer.Option(help="fp32, or fp16/bf16 autocast (fp16 needs CUDA).")] = DType.fp32,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    checkpoint: Annotated[Optional[Path], typer.Option(help=CHECKPOINT_HELP)] = None,
    selector: Annotated[Optional[Path], typer.Option(help=SELECTOR_HELP)] = None,
    no_timing: Annotated[bool, typer.Option("--no-timing", help="Count compute and parameters only.")] = False,
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Seconds for the throughput phase, half that for latency (default: 12 on CPU, unlimited on GPU).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up steps (not timed).")] = 10,
    repeats: Annotated[int, typer.Option(min=1, help="Timed steps (median and spread reported).")] = 40,
    compile: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
    compile_mode: Annotated[Optional[str], typer.Option("--compile-mode", help="eager, default, max-autotune or reduce-overhead (one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the JSON record (with the environment record) to this file.")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", hidden=True, help="Deprecated name of --out.")] = None,
) -> None:
    """Profile one model/variant: GMACs/GFLOPs per block and in total, parameters,
    throughput, batch-1 latency and peak memory, with the method behind each number.

    Example: tosa-bench profile --model deit_small_patch16_224 --variant tosa --keep 0.5"""
    import torch

    from tosa_bench.measure.block_time import block_time_shares
    from tosa_bench.measure.env import environment_record
    from tosa_bench.measure.fit import check_fits
    from tosa_bench.measure.point import measure_point
    from tosa_bench.measure.spec import EAGER, Point, Settings, build_point_model, resolve_device
    from tosa_bench.models.configs import get_config
    from tosa_bench.precision import resolve_autocast

    target = deprecated_alias(out_file, save, "--out", "--save")
    if target is not None:
        check_output_file(target, "--out")  # before any work: a measurement is never lost
    if time_budget is not None and not 0 < time_budget < float("inf"):
        raise OptionError(f"--time-budget: expected a number of seconds > 0, got {time_budget}")
    modes = compile_modes(compile, [compile_mode] if compile_mode else None) or (EAGER,)
    if len(modes) != 1:
        raise OptionError(f"--compile-mode: profile measures one point, give one mode, got {compile_mode!r}")
    side = parse_size(img_size, "--img-size", square=True)[0] if img_size is not None else None
    resolved = resolve_device(device)
    resolve_autocast(dtype.value, resolved)  # fp16 on CPU etc. fails here, before any work
    cfg = get_config(model, side)
    batch = batch_size or default_batch_size(resolved)
    check_fits(model, cfg.img_size, cfg.img_size, batch, dtype.value, resolved)
    options = point_options(variant, keep, cfg, placement=placement, tome_r=tome_r, evit_loc=evit_loc, fuse=fuse, seed=seed, importance=importance)
    point = Point(model, variant, options, batch, dtype.value, resolved, side, str(checkpoint) if checkpoint else None, str(selector) if selector else None, modes[0])
    net = build_point_model(point)  # bad model/options/weights fail here, before any measurement
    budget = time_budget if time_budget is not None else (12.0 if resolved == "cpu" else None)
    settings = Settings(timing=not no_timing, warmup=warmup, repeats=repeats, time_budget_s=budget, pair_budget_s=budget)

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=out, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"{model} / {variant}")
        record = measure_point(point, settings, stage=lambda s: bar.update(task, description=f"{model} / {variant}: {s}"), model=net)
        if not no_timing and point.compile:  # hooks cannot see inside a compiled graph
            record["time_share_reason"] = "not measured: per-block time needs module hooks, which a compiled graph does not run"
        elif not no_timing:
            bar.update(task, description=f"{model} / {variant}: per-block time")
            x = torch.randn(batch, 3, cfg.img_size, cfg.img_size, device=resolved)
            shares = block_time_shares(net, x, passes=1 if resolved == "cpu" else 5, dtype=dtype.value)
            record["time_share_per_block"] = shares["per_block"]
            record["time_share_selectors"] = shares["selectors"]
    record["config_hash"] = point.config_hash()
    env = environment_record(device=resolved)
    if target is not None:
        with output_file(target, "--out") as fh:
            fh.write(json.dumps(json_safe({**record, "env": env}), indent=2, default=str) + "\n")
    if as_json:
        print(json.dumps(json_safe({**record, "env": env}), default=str))
        return
    _print_tables(record, env)


def _print_tables(r: dict, env: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{r['model']} / {r['variant']} {r['resolved_options']}", caption="GMACs per image (fvcore + SDPA/softmax/GELU handles); time share of one forward")
    for col in ("block", "attn tokens", "mlp tokens", "selector map", "GMACs", "time share"):
        t.add_column(col, justify="right")
    shares = r.get("time_share_per_block")
    for i, ((na, nm), ns, g) in enumerate(zip(r["tokens_per_block"], r["selector_tokens_per_block"], r["gmacs_per_block"])):
        t.add_row(str(i), str(na), str(nm), f"{ns}x{ns}" if ns else "-", f"{g:.4f}", f"{shares[i]:.1%}" if shares else "not measured")
    t.add_row("total", "", "", "", f"{r['gmacs']:.3f}", f"{sum(shares):.1%} in blocks" if shares else "")
    out.print(t)
    s = Table(show_header=False, title="summary")
    s.add_column("what")
    s.add_column("value")
    s.add_row("parameters", f"{r['params'] / 1e6:.3f} M (method's own: {r['params_method'] / 1e3:.1f} k)")
    s.add_row("compute", f"{r['gmacs']:.3f} GMACs = {r['gflops']:.3f} GFLOPs per image (formula: {r['gmacs_analytic']:.3f} GMACs)")
    uncounted = ", ".join(k.removeprefix("aten::") for k in r["uncounted_ops"]) or "none"
    s.add_row("not counted", uncounted)
    if r.get("gmacs_selectors") and r.get("time_share_selectors") is not None:
        mac_share = (r["gmacs_selectors"] + r["gmacs_method_outside_blocks"]) / r["gmacs"]
        s.add_row("selectors", f"{r['time_share_selectors']:.1%} of the forward's time, {mac_share:.1%} of its MACs "
                               f"(convolutions + softmax of the predictions; one timed forward with hooks)")
    if r.get("throughput_img_s") is not None:
        s.add_row("throughput", f"{r['throughput_img_s']:.1f} images/s (median of {r['timed_steps']} steps; {r['throughput_img_s_low']:.1f}-{r['throughput_img_s_high']:.1f} slowest-fastest)")
    else:
        s.add_row("throughput", r.get("timing_reason", "not measured"))
    if r.get("speedup_paired") is not None:
        noisy = " NOISY (interval wider than the noise threshold: not precise)" if r.get("speedup_paired_noisy") else ""
        s.add_row("vs dense", f"{r['speedup_paired']:.2f}x speed-up, 95% interval {r['speedup_paired_ci_low']:.2f}-{r['speedup_paired_ci_high']:.2f}x{noisy} "
                  f"(dense {r['dense_throughput_img_s_paired']:.1f} images/s, {r['pair_rounds']} ABBA rounds); "
                  f"ideal from GMACs {r['speedup_ideal']:.2f}x, so {r['speedup_efficiency']:.0%} of it")
    if r.get("latency_ms_p50") is not None:
        s.add_row("latency (batch 1)", f"{r['latency_ms_p50']:.2f} ms median, {r['latency_ms_p90']:.2f} ms p90")
    mem = r.get("peak_mem_mb")
    s.add_row("peak memory", f"{mem:.1f} MiB ({r['peak_mem_method']})" if mem is not None else f"not measured: {r.get('peak_mem_method')}")
    if r.get("nvml_process_mib") is not None:
        s.add_row("NVML process", f"{r['nvml_process_mib']:.1f} MiB (context + allocator cache)")
    if r.get("compile") and r.get("compile_s") is not None:
        twin = f" (dense twin {r['compile_s_dense']:.1f} s)" if r.get("compile_s_dense") is not None else ""
        s.add_row("compiled", f"torch.compile mode {r['compile']}: {r['compile_s']:.1f} s to compile and warm{twin}, never timed; "
                              f"{r['compile_graphs']} graph(s), {r['compile_graph_breaks']} graph break(s)"
                              + (f"; CUDA graphs: {r['compile_cuda_graphs']}" if r.get("compile_cuda_graphs") else ""))
        if r.get("time_share_reason"):
            s.add_row("time share", r["time_share_reason"])
    if r.get("energy_j_per_img") is not None:
        ratio = f", {r['energy_ratio']:.2f}x dense's" if r.get("energy_ratio") is not None else ""
        s.add_row("energy", f"{r['energy_j_per_img']:.4g} J/image{ratio} ({r['energy_method']})")
    else:
        s.add_row("energy", f"not measured: {r.get('energy_reason')}")
    s.add_row("setup", f"{r['device']} ({env.get('device_name') or env.get('cpu_model')}), {r['dtype']}, batch {r['batch_size']}, "
                       f"{r['threads']} threads, torch {env.get('torch')}, {'compiled (' + r['compile'] + ')' if r.get('compile') else 'eager'}")
    out.print(s)
