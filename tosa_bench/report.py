"""Comparison tables of a sweep, from its store alone (``tosa-bench report RUN_DIR``).

One row per measured point and grid keep (a point standing for two keeps appears under
both), grouped by model / image size / batch / dtype / device, dense first, then keeps
from high to low, methods in the order dense, ToSA, ToMe, EViT, random control.

Ratios are to dense of the same model, image size, batch size, dtype and device:
``speedup`` = the point's ``speedup_paired`` (dense and variant timed in alternating
rounds inside the point, robust on shared machines where absolute times drift), or
throughput / dense throughput for records without it; ``gmacs_ratio`` = GMACs / dense GMACs.

Units: params in millions (M), GMACs per image (1e9 multiply-accumulates; GFLOPs = 2 x
GMACs), throughput in images/s (median timed step), latency in ms (batch 1, median),
peak memory in MiB, top-1/top-5 in percent, delta1 as a share of pixels (0-1), AbsRel
unitless, RMSE in metres.

Formats: ``table`` (rich, for the terminal), ``md`` (Markdown), ``latex`` (booktabs, paper
style: methods as rows, best value per model and keep in bold) and ``csv`` (every column).
Columns whose value is the same for every row (model, batch, dtype, device) move into the
caption, which always states device, dtype and batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

FORMATS = ("table", "md", "latex", "csv")
VARIANT_ORDER = {"dense": 0, "tosa": 1, "tome": 2, "evit": 3, "random": 4}
METHOD_NAMES = {"dense": "Dense", "tosa": "ToSA", "tome": "ToMe", "evit": "EViT", "random": "Random (control)"}
MODEL_NAMES = {
    "deit_tiny_patch16_224": "DeiT-T",
    "deit_small_patch16_224": "DeiT-S",
    "deit_base_patch16_224": "DeiT-B",
    "vit_base_patch16_224": "ViT-B",
    "vit_large_patch16_224": "ViT-L",
}
GROUP = ["model", "img_size", "batch_size", "dtype", "device"]

# column -> (header with unit, higher is better?, format kind); None: not a metric
COLUMNS: dict[str, tuple[str, bool | None, str]] = {
    "model": ("model", None, "text"),
    "img_size": ("img (px)", None, "int"),
    "batch_size": ("batch", None, "int"),
    "dtype": ("dtype", None, "text"),
    "device": ("device", None, "text"),
    "keep": ("keep", None, "keep"),
    "method": ("method", None, "text"),
    "setting": ("setting", None, "text"),
    "params_m": ("params (M)", False, "params"),
    "gmacs": ("GMACs", False, "gmacs"),
    "gmacs_ratio": ("GMACs / dense", False, "ratio"),
    "throughput": ("throughput (im/s)", True, "num"),
    "speedup": ("speed-up (x)", True, "ratio"),
    "latency_ms": ("latency (ms)", False, "num"),
    "peak_mem_mib": ("peak mem (MiB)", False, "num"),
    "top1": ("top-1 (%)", True, "acc"),
    "top5": ("top-5 (%)", True, "acc"),
    "delta1": ("δ1", True, "depth"),
    "absrel": ("AbsRel", False, "depth"),
    "rmse": ("RMSE (m)", False, "depth"),
    "status": ("status", None, "text"),
}


@dataclass
class RunData:
    """What a report needs from a run directory."""

    path: Path
    records: list[dict[str, Any]]
    env: dict[str, Any] | None = None
    torn_tail: bool = False
    bad_lines: list[int] = field(default_factory=list)


def load_run(run_dir: str | Path) -> RunData:
    """The latest record per config hash of ``run_dir`` and its env.json."""
    from tosa_bench.sweep.store import ENV, RunStore, latest_by_hash

    store = RunStore.existing(run_dir)
    loaded = store.load()
    return RunData(store.path, list(latest_by_hash(loaded.records).values()), store.read_json(ENV),
                   loaded.torn_tail, loaded.bad_lines)


# ------------------------------------------------------------------------- frame
def _setting(r: dict[str, Any]) -> str:
    o = r.get("resolved_options") or r.get("options") or {}
    v = r.get("variant")
    if v == "dense":
        return "-"
    parts: list[str] = []
    if v in ("tosa", "random"):
        place = r.get("placement_label") or (",".join(map(str, o["placement"])) if isinstance(o.get("placement"), list) else o.get("placement", "default"))
        parts.append(f"keep {o.get('keep')} @ {place}")
        if v == "random":
            parts.append(f"seed {o.get('seed', 0)}")
        if o.get("importance", "mean") != "mean":
            parts.append(f"importance {o['importance']}")
        if r.get("selector"):
            parts.append("trained selectors")
    elif v == "tome":
        parts.append(f"r={o.get('r')}")
        if o.get("schedule", "constant") != "constant":
            parts.append(str(o["schedule"]))
        if o.get("prop_attn") is False:
            parts.append("no prop-attn")
    elif v == "evit":
        locs = o.get("locations")
        parts.append(f"keep {o.get('keep')}" + (f" @ {','.join(map(str, locs))}" if locs else ""))
        if o.get("fuse") is False:
            parts.append("no fuse")
    if r.get("match"):
        parts.append("GMACs-matched")
    return ", ".join(parts)


def frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per record and grid keep, with ratio columns (module docstring)."""
    rows = []
    for order, r in enumerate(records):
        keeps = r.get("grid_keeps") or [None]
        for keep in keeps:
            params = r.get("params")
            rows.append({
                "model": r.get("model"), "img_size": r.get("img_size"), "batch_size": r.get("batch_size"),
                "dtype": r.get("dtype"), "device": r.get("device"),
                "keep": keep, "variant": r.get("variant"), "method": METHOD_NAMES.get(r.get("variant"), r.get("variant")),
                "setting": _setting(r),
                "params_m": params / 1e6 if params is not None else None,
                "gmacs": r.get("gmacs"), "gflops": r.get("gflops"), "gmacs_analytic": r.get("gmacs_analytic"),
                "throughput": r.get("throughput_img_s"), "throughput_low": r.get("throughput_img_s_low"),
                "_paired": r.get("speedup_paired"),
                "throughput_high": r.get("throughput_img_s_high"), "timed_steps": r.get("timed_steps"),
                "latency_ms": r.get("latency_ms_p50"), "peak_mem_mib": r.get("peak_mem_mb"),
                "top1": r.get("top1"), "top5": r.get("top5"), "n_images": r.get("n_images"),
                "delta1": r.get("delta1"), "absrel": r.get("absrel"), "rmse": r.get("rmse"),
                "weights": r.get("weights"), "accuracy_reason": r.get("accuracy_reason"),
                "status": r.get("status"), "error": r.get("error"), "config_hash": r.get("config_hash"),
                "_order": order,
            })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["img_size"] = df["img_size"].astype(object).where(df["img_size"].notna(), "default")
    ok_dense = df[(df["variant"] == "dense") & (df["status"] == "ok")]
    base = ok_dense.drop_duplicates(GROUP)[GROUP + ["throughput", "gmacs"]].rename(
        columns={"throughput": "_dense_tp", "gmacs": "_dense_gmacs"})
    df = df.merge(base, on=GROUP, how="left")
    # A ratio timed in alternating rounds with the dense twin beats one between separately
    # timed rows; the latter is the fallback (records without pairing).
    paired = pd.to_numeric(df["_paired"], errors="coerce")
    df["speedup"] = paired.where(paired.notna(), df["throughput"] / df["_dense_tp"])
    if paired.notna().any():
        df.attrs["_paired_any"] = True
    df["gmacs_ratio"] = df["gmacs"] / df["_dense_gmacs"]
    group_order = {g: i for i, g in enumerate(dict.fromkeys(map(tuple, df[GROUP].astype(str).values.tolist())))}
    df["_group"] = [group_order[tuple(map(str, t))] for t in df[GROUP].values.tolist()]
    df["_keep_sort"] = -df["keep"].astype(float).fillna(2.0)
    df["_variant_sort"] = df["variant"].map(VARIANT_ORDER).fillna(9)
    df = df.sort_values(["_group", "_keep_sort", "_variant_sort", "_order"], kind="stable")
    return df.drop(columns=["_dense_tp", "_dense_gmacs", "_keep_sort", "_variant_sort", "_order", "_paired"]).reset_index(drop=True)


# ------------------------------------------------------------------------- formatting
def _fmt(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if kind == "int":
        return str(v) if isinstance(v, str) else f"{int(v)}"
    if kind == "keep":
        return f"{float(v):g}"
    if kind == "params":
        return f"{v:.2f}" if v >= 0.1 else f"{v:.4f}"
    if kind == "gmacs":
        return f"{v:.2f}" if v >= 1 else f"{v:.3g}"
    if kind == "ratio":
        return f"{v:.2f}"
    if kind == "num":
        return f"{v:.1f}" if v >= 10 else f"{v:.3g}"
    if kind == "acc":
        return f"{v:.2f}"
    if kind == "depth":
        return f"{v:.3f}"
    return str(v)


def _constant(df: pd.DataFrame, col: str) -> bool:
    return df[col].astype(str).nunique() <= 1


def display_columns(df: pd.DataFrame) -> list[str]:
    """The columns shown in table/md/latex: group columns only where they vary; top-1
    always (so 'not measured' is visible); depth columns where any depth was measured."""
    cols = [c for c in ("model", "img_size", "batch_size", "dtype", "device") if not _constant(df, c)]
    cols += ["keep"] if df["keep"].dropna().nunique() > 1 else []
    cols += ["method", "setting", "params_m", "gmacs", "gmacs_ratio", "throughput", "speedup", "latency_ms", "peak_mem_mib", "top1"]
    if df["delta1"].notna().any():
        cols += ["delta1", "absrel", "rmse"]
    if (df["status"] != "ok").any():
        cols.append("status")
    return cols


def _cell(row: pd.Series, col: str) -> str:
    if col == "model":
        return MODEL_NAMES.get(row["model"], row["model"])
    if col == "keep" and row["variant"] == "dense":
        return "-"
    if row["status"] != "ok" and COLUMNS[col][1] is not None:
        return ""
    if col in ("top1", "delta1") and pd.isna(row[col]):
        return "n/m"
    return _fmt(row[col], COLUMNS[col][2])


def _values(df: pd.DataFrame, col: str) -> list[str]:
    return [str(x) for x in dict.fromkeys(df[col].astype(str))]


def caption(df: pd.DataFrame, env: dict[str, Any] | None) -> list[str]:
    """Caption lines: device (with its name), dtype, batch, units and what was not measured."""
    names = sorted({e.get("device_name") for e in _envs(env) if e.get("device_name")})
    device = ", ".join(_values(df, "device")) + (f" ({'; '.join(names)})" if names else "")
    lines = [f"Device: {device}; dtype: {', '.join(_values(df, 'dtype'))}; batch: {', '.join(_values(df, 'batch_size'))}; "
             f"model: {', '.join(MODEL_NAMES.get(m, m) for m in _values(df, 'model'))}; image: {', '.join(_values(df, 'img_size'))} px."]
    steps = df["timed_steps"].dropna()
    lines.append("Throughput: images/s at the median timed step"
                 + (f" ({_span(steps)} timed steps per point)" if len(steps) else "")
                 + "; latency: batch 1, median, ms; GMACs per image (GFLOPs = 2 x GMACs); "
                 "speed-up and GMACs ratio vs dense of the same model/batch/dtype/device"
                 + (" (speed-up timed in alternating rounds with a dense twin)." if "_paired_any" in df.attrs else "."))
    reasons = [r for r in dict.fromkeys(df["accuracy_reason"].dropna()) if r]
    if reasons:
        lines.append("Accuracy n/m = not measured or flagged: " + " | ".join(reasons) + ".")
    bad = df[df["status"] != "ok"]
    for _, r in bad.drop_duplicates("config_hash").iterrows():
        lines.append(f"{r['method']} {r['setting']}: {r['status']} ({r['error']})")
    return lines


def _span(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _envs(env: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not env:
        return []
    return [env, *env.get("merged_envs", [])]


# ------------------------------------------------------------------------- renderers
def to_markdown(df: pd.DataFrame, env: dict[str, Any] | None = None) -> str:
    """A Markdown pipe table with unit headers, then the caption lines."""
    cols = display_columns(df)
    head = [COLUMNS[c][0] for c in cols]
    align = ["---:" if COLUMNS[c][1] is not None or COLUMNS[c][2] in ("int", "keep") else ":---" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_cell(row, c).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(f"_{c}_" if i == 0 else c for i, c in enumerate(caption(df, env))) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """Every column, headers carrying units."""
    units = {"params_m": "params_M", "gmacs": "GMACs", "gflops": "GFLOPs", "gmacs_analytic": "GMACs_analytic",
             "throughput": "throughput_im_s", "throughput_low": "throughput_low_im_s", "throughput_high": "throughput_high_im_s",
             "latency_ms": "latency_ms", "peak_mem_mib": "peak_mem_MiB", "top1": "top1_pct", "top5": "top5_pct",
             "rmse": "rmse_m", "speedup": "speedup_x", "gmacs_ratio": "gmacs_ratio"}
    cols = [c for c in df.columns if not c.startswith("_")]
    return df[cols].rename(columns=units).to_csv(index=False)


def rich_table(df: pd.DataFrame, env: dict[str, Any] | None = None, title: str = "tosa-bench sweep"):
    """A rich Table for the terminal."""
    from rich.table import Table

    cols = display_columns(df)
    t = Table(title=title, caption="\n".join(caption(df, env)), caption_justify="left")
    for c in cols:
        numeric = COLUMNS[c][1] is not None
        t.add_column(COLUMNS[c][0], justify="right" if numeric else "left", no_wrap=numeric or c in ("method", "keep"),
                     min_width=18 if c == "setting" else None)
    last = None
    for _, row in df.iterrows():
        group = (row["_group"], row["keep"])
        if last is not None and group != last:
            t.add_section()
        last = group
        style = "red" if row["status"] != "ok" else ("bold" if row["variant"] == "dense" else None)
        t.add_row(*[_cell(row, c) for c in cols], style=style)
    return t


LATEX_HEADERS = {"params_m": "Params (M)", "gmacs": "GMACs", "throughput": "Throughput (im/s)",
                 "top1": r"Top-1 (\%)", "delta1": r"$\delta_1$ $\uparrow$"}
_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _tex(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in s).replace("δ1", r"$\delta_1$")


def to_latex(df: pd.DataFrame, env: dict[str, Any] | None = None, label: str = "tab:tosa-bench") -> str:
    """Paper-style booktabs table(s), one per device/dtype/batch: methods as rows; params,
    GMACs, throughput, then top-1 (or delta1 where depth was measured) as columns; the best
    value of each column per model and keep in bold (dense, the reference, excluded)."""
    out = []
    setups = list(dict.fromkeys(map(tuple, df[["device", "dtype", "batch_size"]].astype(str).values.tolist())))
    for n, setup in enumerate(setups):
        part = df[(df[["device", "dtype", "batch_size"]].astype(str).apply(tuple, axis=1)) == setup]
        acc = "delta1" if part["delta1"].notna().any() else "top1"
        metrics = ["params_m", "gmacs", "throughput", acc]
        heads = ["Method", "Keep", "Setting"] + [LATEX_HEADERS[c] for c in metrics]
        bold = _best(part, metrics)
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 r"\caption{" + _tex(" ".join(caption(part, env))) + "}",
                 r"\label{" + label + (f"-{n + 1}" if len(setups) > 1 else "") + "}",
                 r"\begin{tabular}{lll" + "r" * len(metrics) + "}", r"\toprule", " & ".join(heads) + r" \\", r"\midrule"]
        models = list(dict.fromkeys(part["model"]))
        for i, model in enumerate(models):
            if len(models) > 1:
                if i:
                    lines.append(r"\midrule")
                lines.append(r"\multicolumn{" + str(len(heads)) + r"}{l}{\textit{" + _tex(MODEL_NAMES.get(model, model)) + r"}} \\")
            for idx, row in part[part["model"] == model].iterrows():
                name = METHOD_NAMES.get(row["variant"], row["variant"])
                if row["variant"] == "dense":
                    name = f"{MODEL_NAMES.get(model, model)} (dense)"
                cells = [_tex(name), "--" if row["variant"] == "dense" else _fmt(row["keep"], "keep"), _tex(row["setting"])]
                for c in metrics:
                    text = _cell(row, c)
                    text = "--" if text in ("", "n/m") else text
                    cells.append(r"\textbf{" + text + "}" if (idx, c) in bold else text)
                lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _best(df: pd.DataFrame, metrics: Sequence[str]) -> set[tuple[Any, str]]:
    """(row index, column) pairs holding the best value per (model, keep) block among the
    non-dense ok rows (ties all bold; blocks of one row get none)."""
    out: set[tuple[Any, str]] = set()
    rows = df[(df["variant"] != "dense") & (df["status"] == "ok")]
    for _, block in rows.groupby(["model", rows["keep"].astype(str)]):
        if len(block) < 2:
            continue
        for c in metrics:
            # compare what the reader sees: values at display precision
            shown = {i: float(_fmt(v, COLUMNS[c][2])) for i, v in block[c].dropna().items()}
            if len(set(shown.values())) < 2:
                continue  # all equal: nothing stands out
            best = max(shown.values()) if COLUMNS[c][1] else min(shown.values())
            out |= {(i, c) for i, v in shown.items() if v == best}
    return out


def render(run: RunData, fmt: str) -> Any:
    """The report of ``run`` in ``fmt`` (a rich Table for ``table``, else text)."""
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    df = frame(run.records)
    if df.empty:
        raise ValueError(f"{run.path}: no records to report")
    if fmt == "md":
        return to_markdown(df, run.env)
    if fmt == "csv":
        return to_csv(df)
    if fmt == "latex":
        return to_latex(df, run.env, label=f"tab:{run.path.name}")
    return rich_table(df, run.env, title=f"tosa-bench sweep {run.path.name}")
