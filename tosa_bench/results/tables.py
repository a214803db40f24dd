"""Comparison tables of a sweep, from its store alone (``tosa-bench report RUN_DIR``).

One row per measured point and grid keep (a point standing for two keeps appears under
both), grouped by model / image size / batch / dtype / device, dense first, then keeps
from high to low, methods in the method registry's order (dense, ToSA, ToMe, EViT, random
control). Method labels and setting descriptions come from the registry
(:mod:`tosa_bench.methods.registry`); a variant it does not know (an older run, a plugin
not loaded) still renders, labelled by its name, with setting "-".

Ratios are to dense of the same model, image size, batch size, dtype and device:
``speedup`` = the point's ``speedup_paired`` (dense and variant timed in alternating
rounds inside the point, robust on shared machines where absolute times drift), or
throughput / dense throughput for records without it; ``gmacs_ratio`` = GMACs / dense GMACs.
The rows and ratio columns are laid out by :mod:`tosa_bench.results.layout` (shared with
:func:`tosa_bench.results.load_frame` and the figures); this module formats them.

Units: params in millions (M), GMACs per image (1e9 multiply-accumulates; GFLOPs = 2 x
GMACs), throughput in images/s (median timed step), latency in ms (batch 1, median),
peak memory in MiB, energy in joules per image (J/img; column shown only where measured),
top-1/top-5 in percent, delta1 as a share of pixels (0-1), AbsRel
unitless, RMSE in metres.

Formats: ``table`` (rich, for the terminal), ``md`` (Markdown, pandas + tabulate),
``latex`` (booktabs via pandas' Styler, paper style: methods as rows, best value per model
and keep in bold) and ``csv`` (every column).
Columns whose value is the same for every row (model, batch, dtype, device) move into the
caption, which always states device, dtype and batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from tosa_bench.errors import OptionError, RunStateError
from tosa_bench.measure.spec import EAGER
# the rows and ratio columns; these names were defined here before and stay importable from here
from tosa_bench.results.layout import (  # noqa: F401
    GROUP,
    SPREAD_SOURCES,
    UNKNOWN_ORDER,
    _label,
    _method,
    _percent,
    _setting,
    _sort_order,
    frame,
)

if TYPE_CHECKING:  # pragma: no cover
    from tosa_bench.results.load import RunData

FORMATS = ("table", "md", "latex", "csv")
MODEL_NAMES = {
    "deit_tiny_patch16_224": "DeiT-T",
    "deit_small_patch16_224": "DeiT-S",
    "deit_base_patch16_224": "DeiT-B",
    "vit_base_patch16_224": "ViT-B",
    "vit_large_patch16_224": "ViT-L",
}

# column -> (header with unit, higher is better?, format kind); None: not a metric
COLUMNS: dict[str, tuple[str, bool | None, str]] = {
    "model": ("model", None, "text"),
    "img_size": ("img (px)", None, "int"),
    "batch_size": ("batch", None, "int"),
    "dtype": ("dtype", None, "text"),
    "device": ("device", None, "text"),
    "compile": ("compile", None, "text"),
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
    "energy_j_img": ("energy (J/img)", False, "energy"),
    "compile_s": ("compile (s)", False, "num"),
    "top1": ("top-1 (%)", True, "acc"),
    "top5": ("top-5 (%)", True, "acc"),
    "delta1": ("δ1", True, "depth"),
    "absrel": ("AbsRel", False, "depth"),
    "rmse": ("RMSE (m)", False, "depth"),
    "object_share": ("object tokens (%)", True, "pct"),
    "object_chance": ("chance (%)", None, "pct"),
    "status": ("status", None, "text"),
}


# ------------------------------------------------------------------------- record check
#: record fields the tables read, and the JSON types each may have (None always allowed)
NUMBER_FIELDS = ("params", "gmacs", "gflops", "gmacs_analytic", "throughput_img_s", "throughput_img_s_low",
                 "throughput_img_s_high", "speedup_paired", "speedup_paired_ci_low", "speedup_paired_ci_high",
                 "latency_ms_p50", "peak_mem_mb", "energy_j_per_img", "energy_img_per_j", "energy_dense_j_per_img",
                 "energy_ratio", "energy_ratio_ci_low", "energy_ratio_ci_high", "energy_window_s", "energy_windows", "compile_s", "top1", "top5", "delta1", "absrel", "rmse", "timed_steps",
                 "n_images", "n_unreadable", "n_empty_classes", "batch_size", "img_size")
TEXT_FIELDS = ("model", "variant", "dtype", "device", "status", "config_hash", "error", "weights", "accuracy_reason",
               "energy_method", "energy_reason")
TABLE_FIELDS = ("options", "resolved_options", "settings")


def check_records(records: Sequence[dict[str, Any]], where: str) -> None:
    """RunStateError naming the record, field, value and expected type for the first
    field of a wrong type (a hand-edited or foreign records.jsonl), instead of a crash
    deep in pandas."""
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise RunStateError(f"{where}: record {n} is a {type(r).__name__}, expected a JSON object")
        which = f"record {n} ({r.get('config_hash')})" if isinstance(r.get("config_hash"), str) else f"record {n}"
        for name, ok, what in ((NUMBER_FIELDS, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
                               (TEXT_FIELDS, lambda v: isinstance(v, str), "a string"),
                               (TABLE_FIELDS, lambda v: isinstance(v, dict), "a table (JSON object)")):
            for key in name:
                v = r.get(key)
                if v is not None and not ok(v):
                    raise RunStateError(f"{where}: {which}: field {key!r} is {v!r}, expected {what} or null; fix or delete that line")
        keeps = r.get("grid_keeps")
        if keeps is not None and not (isinstance(keeps, list) and all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in keeps)):
            raise RunStateError(f"{where}: {which}: field 'grid_keeps' is {keeps!r}, expected a list of numbers or null; fix or delete that line")
        noisy = r.get("speedup_paired_noisy")
        if noisy is not None and not isinstance(noisy, bool):
            raise RunStateError(f"{where}: {which}: field 'speedup_paired_noisy' is {noisy!r}, expected true, false or null")


# ------------------------------------------------------------------------- formatting
def _model_name(model: Any) -> str:
    """The short paper name of a timm model ("DeiT-S"), else the name itself."""
    return MODEL_NAMES.get(model, model)


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
    if kind == "pct":
        return f"{v:.1f}"
    if kind == "energy":
        return f"{v:.3g}"
    if kind == "depth":
        return f"{v:.3f}"
    return str(v)


def _constant(df: pd.DataFrame, col: str) -> bool:
    return df[col].astype(str).nunique() <= 1


def display_columns(df: pd.DataFrame) -> list[str]:
    """The columns shown in table/md/latex: group columns only where they vary; top-1
    always (so 'not measured' is visible); depth columns where any depth was measured."""
    cols = [c for c in ("model", "img_size", "batch_size", "dtype", "device", "compile") if not _constant(df, c)]
    cols += ["keep"] if df["keep"].dropna().nunique() > 1 else []
    cols += ["method", "setting", "params_m", "gmacs", "gmacs_ratio", "throughput", "speedup", "latency_ms", "peak_mem_mib"]
    cols += ["energy_j_img"] if df["energy_j_img"].notna().any() else []
    cols += ["compile_s"] if "compile_s" in df and df["compile_s"].notna().any() else []
    cols += ["top1"]
    if df["delta1"].notna().any():
        cols += ["delta1", "absrel", "rmse"]
    if df["object_share"].notna().any():
        cols += ["object_share", "object_chance"]
    if (df["status"] != "ok").any():
        cols.append("status")
    return cols


def _cell(row: pd.Series, col: str) -> str:
    if col == "model":
        return _model_name(row["model"])
    if col == "keep" and row["_dense"]:
        return "-"
    if row["status"] != "ok" and COLUMNS[col][1] is not None:
        return ""
    if col in ("top1", "delta1") and pd.isna(row[col]):
        return "n/m"
    if col in ACCURACY_COLUMNS and row.get("weights") == "random" and not pd.isna(row[col]):
        return "rand"  # random weights: a number, but not a result (caption says so)
    if col == "top1" and (_count(row.get("n_unreadable")) or _count(row.get("n_empty_classes"))):
        return _fmt(row[col], COLUMNS[col][2]) + "*"  # images skipped or classes empty: caption counts them
    text = _speedup_cell(row) if col == "speedup" else _fmt(row[col], COLUMNS[col][2])
    return text + _spread_suffix(row, col) if text else text


def _spread_suffix(row: pd.Series, col: str) -> str:
    """`` ± sd (n)`` for a value that is a mean over several runs (seeds), else ""."""
    n = row.get(f"{col}_n")
    if col not in SPREAD_SOURCES or n is None or pd.isna(n) or int(n) < 2:
        return ""
    kind = "ratio" if col == "speedup" else COLUMNS[col][2]
    return f" ± {_fmt(row[f'{col}_sd'], kind)} ({int(n)})"


#: accuracy columns: shown as "rand" for a point measured with random weights
ACCURACY_COLUMNS = ("top1", "top5", "delta1", "absrel", "rmse")


def _count(v: Any) -> int:
    """An optional count from a record (None, NaN or missing -> 0)."""
    try:
        return 0 if v is None or pd.isna(v) else int(v)
    except (TypeError, ValueError):
        return 0


def _speedup_cell(row: pd.Series) -> str:
    """``1.21 (1.17-1.25)``: the paired speed-up with its 95% interval; ``noisy`` after it
    when that interval is wider than the run's noise threshold (the number is then not
    precise); the bare ratio for records timed without an interval."""
    text = _fmt(row["speedup"], "ratio")
    if not text or pd.isna(row.get("speedup_low")) or pd.isna(row.get("speedup_high")):
        return text
    text += f" ({row['speedup_low']:.2f}-{row['speedup_high']:.2f})"
    return text + " noisy" if row.get("speedup_noisy") is True else text


def _values(df: pd.DataFrame, col: str) -> list[str]:
    return [str(x) for x in dict.fromkeys(df[col].astype(str))]


def caption(df: pd.DataFrame, env: dict[str, Any] | None) -> list[str]:
    """Caption lines: device (with its name), dtype, batch, units and what was not measured."""
    names = sorted({e.get("device_name") for e in _envs(env) if e.get("device_name")})
    device = ", ".join(_values(df, "device")) + (f" ({'; '.join(names)})" if names else "")
    lines = [f"Device: {device}; dtype: {', '.join(_values(df, 'dtype'))}; batch: {', '.join(_values(df, 'batch_size'))}; "
             f"model: {', '.join(_model_name(m) for m in _values(df, 'model'))}; image: {', '.join(_values(df, 'img_size'))} px; "
             f"{_compile_text(df)}."]
    steps = df["timed_steps"].dropna()
    lines.append("Throughput: images/s at the median timed step"
                 + (f" ({_span(steps)} timed steps per point)" if len(steps) else "")
                 + "; latency: batch 1, median, ms; GMACs per image (GFLOPs = 2 x GMACs); "
                 "speed-up and GMACs ratio vs dense of the same model/batch/dtype/device/compile mode"
                 + (" (speed-up timed in alternating rounds with a dense twin: median of the rounds, 95% interval in"
                    f" brackets, 'noisy' where it is wider than +-{_threshold(df):.0%})." if "_paired_any" in df.attrs else "."))
    ns = pd.to_numeric(df[[c for c in df.columns if c.endswith("_n")]].stack(), errors="coerce").dropna() if len(df) else []
    if len(ns) and ns.max() > 1:
        lines.append(f"Means over runs of one configuration (seeds): mean ± sample standard deviation (n runs); "
                     f"a speed-up is then the mean of the runs' paired medians, without their intervals.")
    counters = [m for m in dict.fromkeys(df["energy_method"].dropna()) if m]
    if counters:
        lines.append("Energy: joules per image (J/img), median over windows of timed batches, each window the energy a "
                     "counter read (" + "; ".join(counters) + ") / the images in it.")
    elif "energy_reason" in df and df["energy_reason"].notna().any():  # said once, so an absent column is explained
        lines.append("Energy not measured: " + " | ".join(dict.fromkeys(df["energy_reason"].dropna())) + ".")
    if df["object_share"].notna().any():
        lines.append("Object tokens: share of the generated object's patch tokens that ran the block (ToSA, random) or "
                     "were kept (EViT), mean over the blocks that choose tokens; chance: share of all patch tokens chosen there.")
    reasons = [r for r in dict.fromkeys(df["accuracy_reason"].dropna()) if r]
    if reasons:
        lines.append("Accuracy n/m = not measured or flagged: " + " | ".join(reasons) + ".")
    if (df["weights"] == "random").any() and df[list(ACCURACY_COLUMNS)].notna().any().any():
        lines.append("Accuracy rand = measured with random weights (no --checkpoint): not a result; the number is in the CSV.")
    unreadable = sum(_count(v) for v in df.drop_duplicates("config_hash")["n_unreadable"])
    empty = max([_count(v) for v in df["n_empty_classes"]] or [0])
    if unreadable or empty:
        lines.append("* top-1 over the readable images only: "
                     + "; ".join(t for t in (f"{unreadable} unreadable image(s) skipped" if unreadable else "",
                                             f"{empty} class folder(s) without images" if empty else "") if t)
                     + " (n_unreadable, n_empty_classes in records.jsonl).")
    bad = df[df["status"] != "ok"]
    for _, r in bad.drop_duplicates("config_hash").iterrows():
        lines.append(f"{r['method']} {r['setting']}: {r['status']} ({r['error']})")
    return lines


def _compile_text(df: pd.DataFrame) -> str:
    """How the models ran: "eager", or the torch.compile modes (a compiled point's dense
    twin is compiled the same way; compile time is not in any timing)."""
    modes = _values(df, "compile") if "compile" in df else [EAGER]
    if modes == [EAGER]:
        return "eager (not compiled)"
    compiled = [m for m in modes if m != EAGER]
    return (("eager and " if EAGER in modes else "") + "torch.compile mode " + ", ".join(compiled)
            + " (dense twin compiled the same way; compile: seconds to compile and warm the point's model, never timed)")


def _threshold(df: pd.DataFrame) -> float:
    values = pd.to_numeric(df["_noise_threshold"], errors="coerce").dropna()
    return float(values.max()) if len(values) else 0.05


def _span(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _envs(env: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not env:
        return []
    return [env, *env.get("merged_envs", [])]


# ------------------------------------------------------------------------- renderers
def _right_aligned(col: str) -> bool:
    """Numbers (metrics, sizes, keeps) are right-aligned, text left-aligned."""
    return COLUMNS[col][1] is not None or COLUMNS[col][2] in ("int", "keep")


def to_markdown(df: pd.DataFrame, env: dict[str, Any] | None = None) -> str:
    """A Markdown pipe table (pandas + tabulate) with unit headers, then the caption lines.

    Cells are the display strings of :func:`_cell`; tabulate's number parsing is off so
    that "0.50" stays "0.50" (display precision is ours, not tabulate's)."""
    cols = display_columns(df)
    body = pd.DataFrame([[_cell(row, c).replace("|", "\\|") for c in cols] for _, row in df.iterrows()],
                        columns=[COLUMNS[c][0] for c in cols])
    table = body.to_markdown(index=False, tablefmt="pipe", disable_numparse=True,
                             colalign=["right" if _right_aligned(c) else "left" for c in cols])
    return table + "\n\n" + "\n".join(f"_{c}_" if i == 0 else c for i, c in enumerate(caption(df, env))) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """Every column, headers carrying units."""
    units = {"params_m": "params_M", "gmacs": "GMACs", "gflops": "GFLOPs", "gmacs_analytic": "GMACs_analytic",
             "throughput": "throughput_im_s", "throughput_low": "throughput_low_im_s", "throughput_high": "throughput_high_im_s",
             "latency_ms": "latency_ms", "peak_mem_mib": "peak_mem_MiB",
             "energy_j_img": "energy_J_per_img", "compile_s": "compile_s", "top1": "top1_pct", "top5": "top5_pct",
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
        style = "red" if row["status"] != "ok" else ("bold" if row["_dense"] else None)
        t.add_row(*[_cell(row, c) for c in cols], style=style)
    return t


LATEX_HEADERS = {"params_m": "Params (M)", "gmacs": "GMACs", "throughput": "Throughput (im/s)",
                 "top1": r"Top-1 (\%)", "delta1": r"$\delta_1$ $\uparrow$"}
_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _tex(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in s).replace("δ1", r"$\delta_1$")


def to_latex(df: pd.DataFrame, env: dict[str, Any] | None = None, label: str = "tab:tosa-bench") -> str:
    """Paper-style booktabs table(s), one per device/dtype/batch/compile mode: methods as rows; params,
    GMACs, throughput, then top-1 (or delta1 where depth was measured) as columns; the best
    value of each column per model and keep in bold (dense, the reference, excluded)."""
    setup_cols = ["device", "dtype", "batch_size", "compile"]
    setups = list(dict.fromkeys(map(tuple, df[setup_cols].astype(str).values.tolist())))
    out = []
    for n, setup in enumerate(setups):
        part = df[df[setup_cols].astype(str).apply(tuple, axis=1) == setup]
        out.append(_latex_table(part, env, label + (f"-{n + 1}" if len(setups) > 1 else "")))
    return "\n\n".join(out) + "\n"


_BOLD = "textbf:--rwrap;"  # Styler's LaTeX command for a cell: \textbf{<cell>}


def _latex_table(part: pd.DataFrame, env: dict[str, Any] | None, label: str) -> str:
    """One table environment of :func:`to_latex`, rendered by pandas' Styler (booktabs
    rules, caption, label, bold cells); where there are several models, each model's rows
    get a sub-header row (Styler has no full-width rows, so those lines are inserted
    into its output: one output line per data row)."""
    acc = "delta1" if part["delta1"].notna().any() else "top1"
    metrics = ["params_m", "gmacs", "throughput", acc]
    heads = ["Method", "Keep", "Setting"] + [LATEX_HEADERS[c] for c in metrics]
    models = list(dict.fromkeys(part["model"]))
    part = pd.concat([part[part["model"] == m] for m in models])  # one block per model
    bold = _best(part, metrics)
    cells, marks = [], []
    for idx, row in part.iterrows():
        name = f"{_model_name(row['model'])} ({row['variant']})" if row["_dense"] else row["method"]
        cells.append([_tex(name), "--" if row["_dense"] else _fmt(row["keep"], "keep"), _tex(row["setting"])]
                     + [_latex_number(row, c) for c in metrics])
        marks.append(["", "", ""] + [_BOLD if (idx, c) in bold else "" for c in metrics])
    body = pd.DataFrame(cells, columns=heads)
    styles = pd.DataFrame(marks, columns=heads)
    styler = body.style.hide(axis="index").apply(lambda _: styles, axis=None)
    styler.set_table_styles([{"selector": "small", "props": ":;"}], overwrite=False)  # -> \small
    tex = styler.to_latex(hrules=True, column_format="lll" + "r" * len(metrics), position="t",
                          position_float="centering", caption=_tex(" ".join(caption(part, env))), label=label)
    if len(models) < 2:
        return tex.rstrip("\n")
    lines = tex.rstrip("\n").split("\n")
    first = lines.index(r"\midrule") + 1  # the first data row
    starts = [int(i) for i in (part["model"] != part["model"].shift()).to_numpy().nonzero()[0]]
    for k, model in reversed(list(zip(starts, models))):
        head = r"\multicolumn{" + str(len(heads)) + r"}{l}{\textit{" + _tex(_model_name(model)) + r"}} \\"
        lines[first + k:first + k] = [r"\midrule", head] if k else [head]
    return "\n".join(lines)


def _latex_number(row: pd.Series, col: str) -> str:
    text = _cell(row, col)
    return "--" if text in ("", "n/m") else text


def _best(df: pd.DataFrame, metrics: Sequence[str]) -> set[tuple[Any, str]]:
    """(row index, column) pairs holding the best value per (model, keep) block among the
    non-dense ok rows (ties all bold; blocks of one row get none)."""
    out: set[tuple[Any, str]] = set()
    rows = df[~df["_dense"] & (df["status"] == "ok")]
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


# ------------------------------------------------------------------------- fitted terminal table
#: short headers, used when the full ones make the table wider than the terminal
SHORT = {"img_size": "img", "batch_size": "batch", "params_m": "M params", "gmacs_ratio": "GMACs/d",
         "throughput": "im/s", "speedup": "speed-up", "latency_ms": "lat ms", "peak_mem_mib": "mem MiB", "energy_j_img": "J/img", "compile_s": "comp s",
         "top1": "top-1 %", "top5": "top-5 %", "rmse": "RMSE m"}
#: columns that say which point a row is: repeated on every page of a split table
KEY_COLUMNS = ("model", "img_size", "batch_size", "dtype", "device", "compile", "keep", "method", "setting")
SETTING_MIN = 12  # the setting column (text) wraps down to this width


def _table_width(widths: Sequence[int]) -> int:
    """Characters a rich Table with these column widths takes: one space of padding on
    each side of every cell and one rule between (and around) the columns."""
    return sum(widths) + 3 * len(widths) + 1


class FittedTable:
    """The sweep table laid out for the width it is printed at (a rich renderable: the
    console tells it its width). Never cuts a number; in order of preference:

    1. every column with full headers, else with short headers (``SHORT``);
    2. the metric columns split over several tables, each repeating the columns that
       say which point a row is (method, setting, keep...), so every number is shown;
    3. one block per point (``method setting`` then ``metric value`` pairs), for widths
       where not even one metric fits beside the point's name.

    Metric columns with no value in any row (empty or n/m) are left out, and named
    under the table; the caption follows, wrapped at the width.
    """

    def __init__(self, df: pd.DataFrame, env: dict[str, Any] | None, title: str) -> None:
        self.df, self.env, self.title = df, env, title

    def __rich_console__(self, console, options):
        from rich.text import Text

        width = max(20, options.max_width)
        cols = display_columns(self.df)
        cells = {c: [_cell(row, c) for _, row in self.df.iterrows()] for c in cols}
        empty = [c for c in cols if COLUMNS[c][1] is not None and all(x in ("", "n/m") for x in cells[c])]
        cols = [c for c in cols if c not in empty]
        keys = [c for c in cols if c in KEY_COLUMNS]
        metrics = [c for c in cols if c not in KEY_COLUMNS]
        notes = [f"Not measured in any row: {', '.join(COLUMNS[c][0] for c in empty)}."] if empty else []
        full = {c: COLUMNS[c][0] for c in cols}
        headers = {c: SHORT.get(c, COLUMNS[c][0]) for c in cols}
        pages = _pages(keys, metrics, cells, full, width)
        if pages is not None and len(pages) == 1:
            headers = full  # everything fits as it is
        else:
            pages = _pages(keys, metrics, cells, headers, width)
        if pages is None:
            yield Text(self.title, style="bold")
            yield from _stacked(self.df, keys, metrics, cells, width)
        else:
            for n, page in enumerate(pages):
                title = self.title + (f" ({n + 1}/{len(pages)})" if len(pages) > 1 else "")
                yield self._table(page, cells, headers, title)
        for line in notes + caption(self.df, self.env):
            yield Text(line)

    def _table(self, cols: list[str], cells: dict[str, list[str]], headers: dict[str, str], title: str):
        from rich.table import Table

        t = Table(title=title)
        for c in cols:
            numeric = COLUMNS[c][1] is not None or COLUMNS[c][2] in ("int", "keep")
            wide = max([len(headers[c])] + [len(x) for x in cells[c]])
            if c == "setting":
                t.add_column(headers[c], overflow="fold", min_width=_natural(c, cells, headers))  # wraps between words only
            else:
                t.add_column(headers[c], justify="right" if numeric else "left", no_wrap=True, min_width=wide)
        last = None
        for i, (_, row) in enumerate(self.df.iterrows()):
            group = (row["_group"], row["keep"])
            if last is not None and group != last:
                t.add_section()
            last = group
            style = "red" if row["status"] != "ok" else ("bold" if row["_dense"] else None)
            t.add_row(*[cells[c][i] for c in cols], style=style)
        return t


def _natural(c: str, cells: dict[str, list[str]], headers: dict[str, str]) -> int:
    """The width column ``c`` needs (the setting column: only its wrap minimum)."""
    wide = max([len(headers[c])] + [len(x) for x in cells[c]])
    return min(wide, max(SETTING_MIN, max([len(w) for x in cells[c] for w in x.split()] or [0]))) if c == "setting" else wide


def _pages(keys: list[str], metrics: list[str], cells: dict[str, list[str]], headers: dict[str, str], width: int) -> list[list[str]] | None:
    """Metric columns packed in order onto as few tables as fit ``width``, each table the
    key columns first; None when the keys and one metric do not fit."""
    base = [_natural(c, cells, headers) for c in keys]
    pages: list[list[str]] = []
    current: list[int] = []
    current_cols: list[str] = []
    for c in metrics:
        w = _natural(c, cells, headers)
        if _table_width(base + current + [w]) > width:
            if not current_cols:
                return None
            pages.append(keys + current_cols)
            current, current_cols = [], []
            if _table_width(base + [w]) > width:
                return None
        current.append(w)
        current_cols.append(c)
    pages.append(keys + current_cols)
    return pages


def _stacked(df: pd.DataFrame, keys: list[str], metrics: list[str], cells: dict[str, list[str]], width: int):
    """One block per point: its key cells on one line, then ``header value`` pairs packed
    into lines of at most ``width`` characters (a pair is never split)."""
    from rich.text import Text

    for i, (_, row) in enumerate(df.iterrows()):
        yield Text(" ".join(x for x in (cells[c][i] for c in keys) if x), style="bold" if row["_dense"] else None)
        line = ""
        for c in metrics:
            value = cells[c][i]
            if not value:
                continue
            pair = f"{SHORT.get(c, COLUMNS[c][0])} {value}"
            if line and len(line) + 3 + len(pair) > width:
                yield Text(line)
                line = ""
            line = f"{line} | {pair}" if line else f"  {pair}"
        if line:
            yield Text(line)


def render(run: RunData, fmt: str) -> Any:
    """The report of ``run`` in ``fmt`` (for ``table`` a rich renderable that fits the
    width it is printed at, :class:`FittedTable`; else text)."""
    if fmt not in FORMATS:
        raise OptionError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    check_records(run.records, f"{run.path}/records.jsonl")
    df = frame(run.records)
    if df.empty:
        raise RunStateError(f"{run.path}: no records to report")
    if fmt == "md":
        return to_markdown(df, run.env)
    if fmt == "csv":
        return to_csv(df)
    if fmt == "latex":
        return to_latex(df, run.env, label=f"tab:{run.path.name}")
    return FittedTable(df, run.env, title=f"tosa-bench sweep {run.path.name}")
