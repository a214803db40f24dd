"""Paper-style figures of one or more runs, drawn from the results store alone.

Every figure here is made from what :func:`tosa_bench.results.load.load_run` reads (the
records and env.json of a run directory) and from the method registry (labels, colours,
markers, what separates two curves of a method). Nothing is re-measured.

Figures (file stem -> what it shows):

- ``tradeoff-<y>-vs-<x>``: accuracy (ImageNet top-1/top-5 in %, or NYU delta1/AbsRel/RMSE)
  against cost (GMACs per image, throughput in images/s, batch-1 latency in ms, peak
  memory in MiB, energy in J per image: drawn by default where the run has it); one
  line and marker per method (and per curve of a method, e.g. a ToSA placement), each point labelled with its keep (ToMe: r), dense as a star, and the
  Pareto front of all points as a grey dashed line.
- ``speedup-vs-keep``: the paired speed-up over dense with its 95% interval (error bars;
  hollow markers where the interval is wider than the run's noise threshold) and the
  ideal speed-up (dense GMACs / GMACs) as a dotted line of the same colour, so the gap
  between measured and ideal is visible.
- ``speedup-energy-vs-keep``: the speed-up (as above) and, beside it, the energy per image
  relative to dense's with its 95% interval (runs measured with an energy counter only).
- ``tokens-per-block-keep<K>``: the tokens each block's attention processed, per method.
- ``placements-keep<K>``: the selector placements of one method at one keep side by side
  (speed-up with interval, GMACs / dense, top-1 where measured).
- ``peak-memory-vs-keep``: peak memory of one forward (MiB) per method; dense as a line.
- ``object-share-vs-keep``: on a generated ``shapes`` set, the share of the object's patch
  tokens each method let run or kept, with its chance as a dotted line.

Runs that are seeds of one configuration (``aggregate``): each point is the mean over the
runs, error bars ± the sample standard deviation (:mod:`tosa_bench.results.aggregate`),
and the caption says so.
- ``training-curves``: loss and top-k recall per epoch from a training run's
  ``metrics.jsonl`` (:func:`plot_training`).

Publication defaults: vector PDF (fonts embedded as TrueType, so text stays text) plus
PNG at 300 dpi; a single-column width (3.4 in) with 7-8 pt text; the Okabe & Ito (2008)
colour-blind-safe palette, each method's colour and marker taken from its registry entry
(the same in every figure); axis labels with units; the legend outside the axes. The
measurement conditions (device, dtype, batch, torch version, threads, per run) are the
caption line under each figure and are written into the file's metadata (PDF Subject,
PNG/SVG Description).

A figure the run cannot support (no accuracy, no timing, one placement) is not drawn;
:class:`FigureReport` names it with the reason.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import pandas as pd

from tosa_bench import __version__
from tosa_bench.errors import OptionError, RunStateError
from tosa_bench.methods import registry
from tosa_bench.results.load import RunData, load_run
from tosa_bench.results.tables import MODEL_NAMES, frame

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("pdf", "png", "svg")
DEFAULT_FORMATS = ("pdf", "png")
#: single-column width of a two-column paper (inches), and a double-column one
WIDTH, WIDE = 3.4, 6.9
#: Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour
#: vision deficiency. Methods without a colour of their own take one of these by name.
PALETTE = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
FALLBACK_MARKERS = ("P", "X", "v", "<", ">", "h", "p", "8")
#: one line style per overlaid run (colour and marker belong to the method)
RUN_STYLES = ("-", "--", ":", "-.")
RC = {
    "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "savefig.dpi": 300, "lines.linewidth": 1.2,
    "lines.markersize": 4.5, "axes.grid": True, "grid.color": "0.9", "grid.linewidth": 0.5,
}

#: --x choices: name -> (frame column, axis label with unit, lower is better)
X_AXES: dict[str, tuple[str, str, bool]] = {
    "gmacs": ("gmacs", "GMACs per image", True),
    "throughput": ("throughput", "throughput (images/s)", False),
    "latency": ("latency_ms", "latency, batch 1 (ms)", True),
    "peak_mem": ("peak_mem_mib", "peak memory of one forward (MiB)", True),
    "energy": ("energy_j_img", "energy per image (J)", True),
}
#: --y choices: name -> (frame column, axis label with unit, higher is better)
Y_AXES: dict[str, tuple[str, str, bool]] = {
    "top1": ("top1", "top-1 accuracy (%)", True),
    "top5": ("top5", "top-5 accuracy (%)", True),
    "delta1": ("delta1", "depth δ1 (share of pixels)", True),
    "absrel": ("absrel", "depth AbsRel", False),
    "rmse": ("rmse", "depth RMSE (m)", False),
}
DEFAULT_X = ("gmacs", "throughput")
#: more legend entries than this go into a column right of the axes (figure widened)
MAX_LEGEND_ABOVE = 6
#: inches per legend entry in a column beside the axes: a figure grows to hold them all
LEGEND_ROW_IN = 0.2


# ------------------------------------------------------------------------- pure helpers
def pareto_front(xs: Sequence[float], ys: Sequence[float], *, x_lower_better: bool = True,
                 y_higher_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes, ordered by x.

    Point j dominates point i when it is at least as good on both axes and strictly better
    on one; equal points do not dominate each other, so duplicates are all on the front.
    Points with a NaN or infinite coordinate take no part."""
    a = [x if x_lower_better else -x for x in xs]  # both axes turned into "smaller is better"
    b = [-y if y_higher_better else y for y in ys]
    ok = [i for i in range(len(a)) if math.isfinite(a[i]) and math.isfinite(b[i])]
    front = [i for i in ok if not any(a[j] <= a[i] and b[j] <= b[i] and (a[j] < a[i] or b[j] < b[i]) for j in ok)]
    return sorted(front, key=lambda i: (xs[i], ys[i]))


@dataclass(frozen=True)
class Style:
    """How one method looks in every figure."""

    label: str
    colour: str
    marker: str


def method_style(variant: str) -> Style:
    """The registry's label, colour and marker of ``variant``; a method that declares no
    colour (or one this process does not know) gets a palette colour and marker chosen
    from its name by a fixed hash (crc32), so it looks the same in every figure and run."""
    try:
        method = registry.get(variant)
    except OptionError:
        method = None
    h = zlib.crc32(str(variant).encode())
    colour = (method.colour if method is not None else None) or PALETTE[1 + h % (len(PALETTE) - 1)]
    marker = (method.marker if method is not None else None) or FALLBACK_MARKERS[h % len(FALLBACK_MARKERS)]
    return Style(method.display if method is not None else str(variant), colour, marker)


def _method(variant: str) -> registry.Method | None:
    try:
        return registry.get(variant)
    except OptionError:
        return None


# ------------------------------------------------------------------------- data
@dataclass
class PlotData:
    """The rows of the runs to plot (``frame`` plus ``run``, ``curve``, ``point_label``,
    ``tokens_attn`` columns) and each run's caption line."""

    df: pd.DataFrame
    conditions: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[str]:
        return list(self.conditions)

    def caption(self) -> str:
        lines = [f"{run}: {c}" if len(self.conditions) > 1 else c for run, c in self.conditions.items()]
        return "; ".join(lines)


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Short, distinct labels for runs: the directory name, with its parent where two
    runs share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def conditions(run: RunData, df: pd.DataFrame) -> str:
    """The measurement conditions of one run in words: device (name), dtype, batch,
    torch version, eager or compiled, CPU threads."""
    env = run.env or {}
    devices = ", ".join(dict.fromkeys(df["device"].astype(str)))
    name = env.get("device_name")
    threads = {r.get("threads") for r in run.records if r.get("threads")}
    parts = [f"{devices}" + (f" ({name})" if name else ""),
             ", ".join(dict.fromkeys(df["dtype"].astype(str))),
             "batch " + ", ".join(dict.fromkeys(df["batch_size"].astype(str))),
             f"torch {env.get('torch', '?')}",
             ", ".join(m if m == "eager" else f"torch.compile {m}" for m in dict.fromkeys(df["compile"].astype(str)))]
    if threads and devices == "cpu":
        parts.append(f"{', '.join(map(str, sorted(threads)))} threads")
    models = ", ".join(MODEL_NAMES.get(m, m) for m in dict.fromkeys(df["model"].astype(str)))
    return f"{models}; " + ", ".join(parts)


def plot_data(run_dirs: Sequence[str | Path] | Sequence[RunData], aggregate: bool = False) -> PlotData:
    """Read ``run_dirs`` (RunStateError for one that is not a run or has no records);
    ``aggregate``: they are seeds of one configuration, drawn as one run of means with
    ±sd error bars (:mod:`tosa_bench.results.aggregate`)."""
    if not run_dirs:
        raise OptionError("plot: give at least one run directory")
    runs = [p if isinstance(p, RunData) else load_run(p) for p in run_dirs]
    if aggregate:
        from tosa_bench.results.aggregate import aggregate_runs

        runs = [aggregate_runs(runs)]
    labels = run_labels([r.path for r in runs])
    parts, conds, notes = [], {}, []
    for label, run in zip(labels, runs):
        df = frame(run.records)
        if df.empty:
            raise RunStateError(f"{run.path}: no records to plot")
        by_hash = {r.get("config_hash"): r for r in run.records}
        df["run"] = label
        extra = [_row_extras(by_hash.get(h) or {}, keep) for h, keep in zip(df["config_hash"], df["keep"])]
        for col in ("curve", "point_label", "tokens_attn"):
            df[col] = [e[col] for e in extra]
        if df["compile"].nunique() > 1:  # eager and compiled in one run: their curves differ by line style
            df["curve"] = [", ".join(filter(None, (c, m if m == "eager" else f"compiled {m}"))) for c, m in zip(df["curve"], df["compile"])]
        if df["batch_size"].nunique() > 1:  # several batch sizes: one curve each, never one line across them
            df["curve"] = [", ".join(filter(None, (c, f"batch {b}"))) for c, b in zip(df["curve"], df["batch_size"])]
        conds[label] = conditions(run, df)
        if run.torn_tail or run.bad_lines:
            notes.append(f"{run.path}: damaged lines of records.jsonl were skipped")
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    df["keep"] = pd.to_numeric(df["keep"], errors="coerce")
    return PlotData(df, conds, notes)


def _row_extras(record: dict[str, Any], keep: Any) -> dict[str, Any]:
    method = _method(record.get("variant"))
    options = record.get("resolved_options") or record.get("options") or {}
    k = float(keep) if keep is not None and not pd.isna(keep) else None
    tokens = record.get("tokens_per_block")
    return {
        "curve": method.curve_label(options, record) if method is not None else "",
        "point_label": method.point_label(options, k) if method is not None else (f"{k:g}" if k is not None else ""),
        "tokens_attn": [int(t[0]) for t in tokens] if tokens else None,
    }


# ------------------------------------------------------------------------- drawing helpers
def _new_figure(width: float = WIDTH, height: float = 2.5, ncols: int = 1) -> tuple["Figure", list["Axes"]]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0].tolist()
    for ax in axes:  # few ticks: labels like 0.00225 must not run into each other
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5 if width / ncols <= WIDTH else 8))
    return fig, axes


def _series(df: pd.DataFrame) -> Iterable[tuple[tuple[str, str, str], pd.DataFrame]]:
    """(run, variant, curve) groups of the ok, non-dense rows, in registry order."""
    rows = df[(df["status"] == "ok") & ~df["_dense"]]
    order = {v: i for i, v in enumerate(registry.names())}
    keys = sorted({(r, v, c) for r, v, c in rows[["run", "variant", "curve"]].itertuples(index=False)},
                  key=lambda k: (order.get(k[1], len(order)), k[0], k[2]))
    for key in keys:
        yield key, rows[(rows["run"] == key[0]) & (rows["variant"] == key[1]) & (rows["curve"] == key[2])]


def _run_style(data: PlotData, run: str) -> str:
    """Dense's line style in run ``run`` (one style per overlaid run)."""
    return RUN_STYLES[data.runs.index(run) % len(RUN_STYLES)]


def _line_style(data: PlotData, run: str, variant: str, curve: str) -> str:
    """The line style of one curve: a method's colour and marker are fixed, so its
    curves (placements, overlaid runs) differ by line style, in a fixed order (runs as
    given, then curve names sorted)."""
    rows = data.df[data.df["variant"] == variant]
    pairs = sorted({(data.runs.index(r), c) for r, c in rows[["run", "curve"]].itertuples(index=False)})
    return RUN_STYLES[pairs.index((data.runs.index(run), curve)) % len(RUN_STYLES)]


def _series_label(data: PlotData, run: str, variant: str, curve: str, curves_of: dict[str, set[str]]) -> str:
    label = method_style(variant).label
    if len(curves_of.get(variant, ())) > 1 and curve:
        label += f" ({curve})"
    return label + (f" [{run}]" if len(data.runs) > 1 else "")


def _curves_of(df: pd.DataFrame) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for v, c in df[["variant", "curve"]].itertuples(index=False):
        out.setdefault(v, set()).add(c)
    return out


def _legend(fig: "Figure", axes: Sequence["Axes"], ncol: int | None = None) -> None:
    """One legend for the figure, above the axes (never over the data)."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    if not handles:
        return
    if len(labels) > MAX_LEGEND_ABOVE:  # many series (overlaid runs, placements): a column beside the axes
        fig.set_figwidth(max(fig.get_figwidth(), WIDE))
        fig.set_figheight(max(fig.get_figheight(), LEGEND_ROW_IN * len(labels)))  # every entry above the caption
        fig.legend(handles, labels, loc="outside right upper", ncol=1, frameon=False, handlelength=1.8)
        return
    fig.legend(handles, labels, loc="outside upper center", ncol=ncol or min(3, len(labels)), frameon=False,
               handlelength=1.8, columnspacing=1.0)


def _caption(fig: "Figure", text: str) -> None:
    width = fig.get_figwidth()
    wrapped = textwrap.fill(text, width=int(width * 24))  # ~24 characters per inch at 6 pt
    fig.text(0.0, 0.0, wrapped, ha="left", va="top", fontsize=6, color="0.3", transform=fig.transFigure)


# ------------------------------------------------------------------------- figures
@dataclass
class Drawn:
    """A finished figure before it is written: the figure, a one-line title for the
    file's metadata, and extra caption text (how to read it)."""

    figure: "Figure"
    title: str
    caption: str = ""


class Skip(Exception):
    """This figure cannot be drawn from these runs (the message says why)."""


def _finite(df: pd.DataFrame, col: str) -> pd.DataFrame:
    values = pd.to_numeric(df[col], errors="coerce")
    return df[values.notna() & values.map(lambda v: math.isfinite(v) if pd.notna(v) else False)]


def tradeoff(data: PlotData, x: str, y: str) -> Drawn:
    """Accuracy ``y`` against cost ``x`` (module docstring)."""
    xcol, xlabel, x_lower = X_AXES[x]
    ycol, ylabel, y_higher = Y_AXES[y]
    ok = data.df[data.df["status"] == "ok"]
    measured = _finite(_finite(ok, ycol), xcol)
    if measured.empty:
        if _finite(ok, ycol).empty:
            raise Skip(f"no {y} in the run (sweep with --imagenet / --nyu)" if y in Y_AXES else f"no {y}")
        raise Skip(f"no {x} in the run" + (" (measured with --no-timing)" if x in ("throughput", "latency") else "")
                   + (" (no readable energy counter, or energy = false)" if x == "energy" else ""))
    random_weights = measured["weights"] == "random"
    if random_weights.all():
        raise Skip(f"{y} was measured with random weights (no --checkpoint): not a result")
    pts = measured[~random_weights]
    fig, (ax,) = _new_figure()
    curves_of = _curves_of(pts)
    for (run, variant, curve), rows in _series(pts):
        st = method_style(variant)
        rows = rows.sort_values(["keep", xcol])  # a curve follows the keep, point by point
        ax.plot(rows[xcol], rows[ycol], color=st.colour, marker=st.marker, ls=_line_style(data, run, variant, curve),
                label=_series_label(data, run, variant, curve, curves_of))
        _error_bars(ax, rows[xcol], rows[ycol], _spread(rows, ycol), st.colour, variant)
        for xv, yv, lab in zip(rows[xcol], rows[ycol], rows["point_label"]):
            if lab:
                ax.annotate(lab, (xv, yv), xytext=(3, 3), textcoords="offset points", fontsize=6, color=st.colour)
    dense = pts[pts["_dense"]]
    for run, rows in dense.groupby("run", sort=False):
        st = method_style(registry.DENSE)
        ax.plot(rows[xcol], rows[ycol], ls="none", marker=st.marker, markersize=9, color=st.colour,
                label=st.label + (f" [{run}]" if len(data.runs) > 1 else ""), zorder=5)
        _error_bars(ax, rows[xcol], rows[ycol], _spread(rows, ycol), st.colour, registry.DENSE)
    idx = pareto_front(pts[xcol].astype(float).tolist(), pts[ycol].astype(float).tolist(),
                       x_lower_better=x_lower, y_higher_better=y_higher)
    front = pts.iloc[idx]
    ax.plot(front[xcol], front[ycol], ls="--", color="0.55", lw=0.9, zorder=0, label="Pareto front")
    ax.set_xlabel(xlabel + (" (batch " + ", ".join(dict.fromkeys(pts["batch_size"].astype(str))) + ")" if x == "throughput" else ""))
    ax.set_ylabel(ylabel)
    _legend(fig, [ax])
    note = " Points with random weights left out." if random_weights.any() else ""
    count_col = "n_images" if y in ("top1", "top5") else "depth_n_images"
    counts = sorted({int(v) for v in pd.to_numeric(pts.get(count_col, pd.Series(dtype=float)), errors="coerce").dropna()})
    scored = f" {y} on {', '.join(map(str, counts))} images." if counts else ""
    return Drawn(fig, f"{ylabel} against {xlabel}", "Labels: keep (ToMe: r)." + scored + note + _spread_note(pts, ycol))


def _ratio_lines(ax: "Axes", data: PlotData, rows: pd.DataFrame, col: str, low_col: str, high_col: str,
                 noisy_col: str | None = None) -> None:
    """Per series of ``rows``: the ratio ``col`` against keep, its 95% interval
    (``low_col``/``high_col``; ± sd for means over runs) as error bars, hollow markers
    where ``noisy_col`` is True."""
    curves_of = _curves_of(rows)
    for (run, variant, curve), part in _series(rows):
        st = method_style(variant)
        part = part.sort_values("keep")
        y = part[col].astype(float)
        sd = pd.Series(_spread(part, col), index=part.index) if _spread(part, col) is not None else 0.0
        low = pd.to_numeric(part[low_col], errors="coerce").fillna(y - sd)
        high = pd.to_numeric(part[high_col], errors="coerce").fillna(y + sd)
        noisy = part[noisy_col].map(lambda v: v is True).to_numpy() if noisy_col else (y != y).to_numpy()
        label = _series_label(data, run, variant, curve, curves_of)
        ax.errorbar(part["keep"], y, yerr=[(y - low).clip(lower=0), (high - y).clip(lower=0)], color=st.colour,
                    ls=_line_style(data, run, variant, curve), marker="none", capsize=2, lw=1.0, label="_" + label)
        ax.plot(part["keep"][~noisy], y[~noisy], ls="none", marker=st.marker, color=st.colour, label="_" + label)
        ax.plot([], [], ls=_line_style(data, run, variant, curve), marker=st.marker, color=st.colour, label=label)
        if noisy.any():
            ax.plot(part["keep"][noisy], y[noisy], ls="none", marker=st.marker, mfc="white", color=st.colour, label="_noisy " + label)


def _speedup_axes(ax: "Axes", data: PlotData, rows: pd.DataFrame) -> None:
    """The speed-up panel: paired speed-ups with intervals, the ideal dotted, dense at 1."""
    _ratio_lines(ax, data, rows, "speedup", "speedup_low", "speedup_high", "speedup_noisy")
    curves_of = _curves_of(rows)
    for (run, variant, curve), part in _series(rows):
        part = part.sort_values("keep")
        ideal = 1.0 / part["gmacs_ratio"].astype(float)
        # a dash marker as well, so that an ideal at a single keep is visible too
        ax.plot(part["keep"], ideal, ls=":", marker="_", markersize=10, color=method_style(variant).colour, lw=1.0,
                label="_ideal " + _series_label(data, run, variant, curve, curves_of))
    ax.axhline(1.0, color="0.3", lw=0.8, ls="-", zorder=0, label="dense (1.0)")
    ax.plot([], [], ls=":", marker="_", markersize=10, color="0.3", label="ideal (dense GMACs / GMACs)")
    ax.set_xlabel("keep (share of patch tokens kept)")
    ax.set_ylabel("speed-up over dense (×)")


def _speedup_rows(data: PlotData) -> pd.DataFrame:
    rows = _finite(_finite(data.df[(data.df["status"] == "ok") & ~data.df["_dense"]], "speedup"), "keep")
    if rows.empty:
        raise Skip("no speed-up in the run (measured with --no-timing, or no variant beside dense)")
    return rows


def _speedup_words(rows: pd.DataFrame) -> str:
    hollow = bool(rows["speedup_noisy"].map(lambda v: v is True).any())
    bars = ("mean of the runs' paired medians, ± sample sd over runs as bars" if _spread_note(rows, "speedup")
            else "median of paired rounds against dense, 95% interval as bars")
    return "Speed-up: " + bars + ("; hollow markers: interval wider than the noise threshold." if hollow else ".")


def speedup_vs_keep(data: PlotData) -> Drawn:
    """Measured paired speed-up with its interval, and the ideal (module docstring)."""
    rows = _speedup_rows(data)
    fig, (ax,) = _new_figure()
    _speedup_axes(ax, data, rows)
    _legend(fig, [ax], ncol=2)
    return Drawn(fig, "measured and ideal speed-up against keep", _speedup_words(rows))


def speedup_energy_vs_keep(data: PlotData) -> Drawn:
    """Speed-up (left) and energy per image relative to dense (right) against keep, side
    by side: each with its 95% interval, both measured against the same dense twin."""
    rows = _speedup_rows(data)
    energy = _finite(rows, "energy_ratio")
    if energy.empty:
        raise Skip("no energy ratio in the run (no readable energy counter: NVML on a GPU, RAPL on a CPU; or energy = false)")
    fig, (left, right) = _new_figure(WIDE, 2.5, ncols=2)
    _speedup_axes(left, data, rows)
    _ratio_lines(right, data, energy, "energy_ratio", "energy_low", "energy_high")
    right.axhline(1.0, color="0.3", lw=0.8, ls="-", zorder=0, label="dense (1.0)")
    right.set_xlabel("keep (share of patch tokens kept)")
    right.set_ylabel("energy per image / dense's (×)")
    _legend(fig, [left, right], ncol=3)
    counters = "; ".join(dict.fromkeys(energy["energy_method"].dropna().astype(str)))
    return Drawn(fig, "speed-up and energy ratio against keep", _speedup_words(rows)
                 + f" Energy: J/image / the dense twin's, median of ABBA window pairs, 95% interval as bars ({counters}).")


def object_share_vs_keep(data: PlotData) -> Drawn:
    """The share of the object's patch tokens each method let run or kept (mean over its
    choosing blocks), against keep, with its chance (the share of all patch tokens it
    chose) as a dotted line of the same colour."""
    rows = _finite(_finite(data.df[(data.df["status"] == "ok") & ~data.df["_dense"]], "object_share"), "keep")
    if rows.empty:
        raise Skip("no object-token share in the run (it needs a generated shapes set as --imagenet, and a method that chooses tokens)")
    fig, (ax,) = _new_figure()
    curves_of = _curves_of(rows)
    for (run, variant, curve), part in _series(rows):
        st = method_style(variant)
        part = part.sort_values("keep")
        ax.plot(part["keep"], part["object_share"], color=st.colour, marker=st.marker, ls=_line_style(data, run, variant, curve),
                label=_series_label(data, run, variant, curve, curves_of))
        _error_bars(ax, part["keep"], part["object_share"], _spread(part, "object_share"), st.colour, variant)
        ax.plot(part["keep"], part["object_chance"], ls=":", marker="_", markersize=8, color=st.colour, lw=1.0, label="_chance " + curve)
    ax.plot([], [], ls=":", marker="_", markersize=8, color="0.3", label="chance (share of all patches chosen)")
    ax.set_xlabel("keep (share of patch tokens kept)")
    ax.set_ylabel("object tokens run or kept (%)")
    ax.set_ylim(0, 102)
    _legend(fig, [ax], ncol=2)
    return Drawn(fig, "object-token share against keep",
                 "Object tokens: patches the generated object covers (>= 10% of their pixels); share that ran the block "
                 "(ToSA, random) or was kept (EViT), mean over the blocks that choose tokens." + _spread_note(rows, "object_share"))


def _error_bars(ax: "Axes", x: Any, y: Any, sd: Any, colour: str, name: str) -> None:
    """± ``sd`` bars at the points (x, y), labelled ``_spread <name>``; nothing for None."""
    if sd is not None:
        ax.errorbar(x, y, yerr=sd, ls="none", marker="none", color=colour, capsize=2, lw=0.9, label=f"_spread {name}")


def _spread(rows: pd.DataFrame, col: str) -> Any:
    """The ±sd error of ``col`` for rows that are means over runs (seeds), else None."""
    if f"{col}_sd" not in rows or f"{col}_n" not in rows:
        return None
    n = pd.to_numeric(rows[f"{col}_n"], errors="coerce")
    sd = pd.to_numeric(rows[f"{col}_sd"], errors="coerce").where(n > 1)
    return None if sd.isna().all() else sd.fillna(0.0).to_numpy()


def _spread_note(rows: pd.DataFrame, col: str) -> str:
    """The caption's words for error bars from several runs ("" where there are none)."""
    if _spread(rows, col) is None:
        return ""
    n = sorted({int(v) for v in pd.to_numeric(rows[f"{col}_n"], errors="coerce").dropna()})
    return f" Means over {'/'.join(map(str, n))} runs (seeds); error bars: ± sample standard deviation."


def pick_keep(df: pd.DataFrame, keep: float | None) -> float:
    """``keep`` if the run has rows at it, else the run's keep closest to 0.5 (OptionError
    when a given keep is not in the run)."""
    keeps = sorted(set(df["keep"].dropna().astype(float)))
    if not keeps:
        raise Skip("no keep in the run (dense only)")
    if keep is None:
        return min(keeps, key=lambda k: (abs(k - 0.5), -k))
    if not any(math.isclose(keep, k) for k in keeps):
        raise OptionError(f"--keep {keep:g}: the run has keeps {', '.join(f'{k:g}' for k in keeps)}")
    return keep


def tokens_per_block(data: PlotData, keep: float) -> Drawn:
    """Tokens in each block's attention for every method at ``keep``, dense for reference."""
    ok = data.df[(data.df["status"] == "ok") & data.df["tokens_attn"].notna()]
    at = ok[~ok["_dense"] & ok["keep"].map(lambda k: pd.notna(k) and math.isclose(float(k), keep))]
    if at.empty:
        raise Skip(f"no token counts at keep {keep:g}")
    fig, (ax,) = _new_figure(WIDE, 2.3)
    curves_of = _curves_of(at)
    bars = [(run, variant, curve, row["tokens_attn"]) for (run, variant, curve), part in _series(at)
            for _, row in part.drop_duplicates("config_hash").iterrows()]
    width = 0.8 / len(bars)  # grouped bars: one group per block, one bar per series
    for i, (run, variant, curve, tokens) in enumerate(bars):
        st = method_style(variant)
        hatch = None if data.runs.index(run) == 0 else "///"
        ax.bar([b - 0.4 + (i + 0.5) * width for b in range(len(tokens))], tokens, width=width, color=st.colour,
               hatch=hatch, edgecolor="white", linewidth=0.3, label=_series_label(data, run, variant, curve, curves_of))
    for run, rows in ok[ok["_dense"]].groupby("run", sort=False):
        tokens = rows.iloc[0]["tokens_attn"]
        ax.axhline(tokens[0], color="#000000", lw=0.8, ls=_run_style(data, run),
                   label="Dense (every block)" + (f" [{run}]" if len(data.runs) > 1 else ""))
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("block (0-based)")
    ax.set_ylabel("tokens in the block's attention")
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(fig, [ax], ncol=6)
    return Drawn(fig, f"tokens per block at keep {keep:g}", "Tokens per image, CLS included.")


def placements(data: PlotData, keep: float) -> Drawn:
    """The curves (placements) of each method that has several, at ``keep``."""
    ok = data.df[(data.df["status"] == "ok") & ~data.df["_dense"]]
    at = ok[ok["keep"].map(lambda k: pd.notna(k) and math.isclose(float(k), keep))]
    several = [v for v, cs in _curves_of(at).items() if len(cs) > 1]
    if not several:
        raise Skip(f"one placement per method at keep {keep:g} (sweep with several --placement values)")
    rows = at[at["variant"].isin(several)]
    panels = [("speedup", "speed-up over dense (×)"), ("gmacs_ratio", "GMACs / dense")]
    trained = rows[rows["weights"] != "random"]
    for acc in ("top1", "delta1"):  # the first accuracy measured with real weights
        if not _finite(trained, acc).empty:
            panels.append((acc, Y_AXES[acc][1]))
            break
    labels = [f"{method_style(v).label}: {c}" + (f" [{r}]" if len(data.runs) > 1 else "")
              for r, v, c in rows[["run", "variant", "curve"]].itertuples(index=False)]
    fig, axes = _new_figure(WIDE, 0.6 + 0.28 * len(rows), ncols=len(panels))
    pos = list(range(len(rows)))
    colours = [method_style(v).colour for v in rows["variant"]]
    for ax, (col, title) in zip(axes, panels):
        values = pd.to_numeric(rows[col], errors="coerce")
        if col in Y_AXES:  # accuracy of random weights is not a result: no bar
            values = values.where(rows["weights"] != "random")
        err = None
        if col == "speedup":
            low = pd.to_numeric(rows["speedup_low"], errors="coerce").fillna(values)
            high = pd.to_numeric(rows["speedup_high"], errors="coerce").fillna(values)
            err = [(values - low).clip(lower=0), (high - values).clip(lower=0)]
            ax.axvline(1.0, color="0.3", lw=0.8)
        ax.barh(pos, values.fillna(0), xerr=err, color=colours, height=0.6, capsize=2)
        ax.set_xlabel(title)
        ax.set_yticks(pos, labels if ax is axes[0] else [""] * len(pos))
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
    return Drawn(fig, f"selector placements at keep {keep:g}", "Speed-up: paired median, 95% interval as bars.")


def memory_vs_keep(data: PlotData) -> Drawn:
    """Peak memory of one forward per method against keep; dense as a horizontal line."""
    ok = _finite(data.df[data.df["status"] == "ok"], "peak_mem_mib")
    rows = _finite(ok[~ok["_dense"]], "keep")
    if rows.empty:
        raise Skip("no peak memory in the run (measured with --no-memory)")
    fig, (ax,) = _new_figure()
    curves_of = _curves_of(rows)
    for (run, variant, curve), part in _series(rows):
        st = method_style(variant)
        part = part.sort_values("keep")
        ax.plot(part["keep"], part["peak_mem_mib"], color=st.colour, marker=st.marker, ls=_line_style(data, run, variant, curve),
                label=_series_label(data, run, variant, curve, curves_of))
    dense_rows = ok[ok["_dense"]]
    several = dense_rows.groupby(["run", "curve"]).ngroups > len(data.runs)  # batches or modes: one dense line each
    for i, ((run, curve), dense) in enumerate(dense_rows.groupby(["run", "curve"], sort=False)):
        ax.axhline(float(dense["peak_mem_mib"].iloc[0]), color="#000000", lw=0.8,
                   ls=RUN_STYLES[i % len(RUN_STYLES)] if several else _run_style(data, run),
                   label="Dense" + (f" ({curve})" if several and curve else "") + (f" [{run}]" if len(data.runs) > 1 else ""))
    ax.set_xlabel("keep (share of patch tokens kept)")
    ax.set_ylabel("peak memory of one forward (MiB)")
    ax.set_ylim(bottom=0)
    _legend(fig, [ax])
    devices = set(rows["device"].astype(str))
    how = "GPU: max_memory_allocated" if devices != {"cpu"} else "CPU: rise of the resident high-water mark"
    return Drawn(fig, "peak memory against keep", f"Peak memory over one forward ({how}).")


# ------------------------------------------------------------------------- writing
@dataclass
class FigureReport:
    """What a plot call wrote (paths) and what it skipped (figure stem, reason)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_choices(text: str | Sequence[str] | None, allowed: Iterable[str], option: str) -> tuple[str, ...] | None:
    """"gmacs,throughput" -> ("gmacs", "throughput") (comma-separated and/or repeated,
    duplicates dropped); None for None; OptionError naming ``option`` and what is allowed."""
    if text is None:
        return None
    allowed = tuple(allowed)
    items = [t.strip().lower() for part in ([text] if isinstance(text, str) else text) for t in part.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise OptionError(f"{option}: expected some of {', '.join(allowed)} (comma-separated), got {','.join(bad) or 'nothing'}")
    return tuple(dict.fromkeys(items))


def parse_formats(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--format``: "pdf,png" -> ("pdf", "png"); the defaults for None."""
    return parse_choices(text, FORMATS, "--format") or DEFAULT_FORMATS


def metadata(fmt: str, title: str, caption: str) -> dict[str, str]:
    """Metadata keys each backend accepts: the caption (measurement conditions) goes into
    the PDF's Subject and the PNG/SVG Description."""
    creator = f"tosa-bench {__version__}"
    if fmt == "pdf":
        return {"Title": title, "Subject": caption, "Creator": creator}
    if fmt == "svg":
        return {"Title": title, "Description": caption, "Creator": creator}
    return {"Title": title, "Description": caption, "Software": creator}


def save(drawn: Drawn, out_dir: Path, stem: str, formats: Sequence[str], caption: str) -> list[Path]:
    """Write ``drawn`` as ``out_dir/stem.<fmt>`` for each format, each through a temporary
    file renamed into place (a killed run leaves no half-written figure)."""
    from matplotlib import rc_context

    text = ". ".join(t.strip().rstrip(".") for t in (caption, drawn.caption) if t.strip()) + "."
    _caption(drawn.figure, text)
    with rc_context(RC):
        return [write_figure(drawn.figure, out_dir / f"{stem}.{fmt}", metadata(fmt, drawn.title, text),
                             bbox_inches="tight", pad_inches=0.03) for fmt in formats]


def write_figure(fig: "Figure", path: Path, meta: dict[str, str], **savefig: Any) -> Path:
    """Save ``fig`` to ``path`` (format from the suffix) through a temporary file renamed
    into place, so a killed run leaves no half-written figure."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=path.suffix.lstrip("."), metadata=meta, **savefig)
    os.replace(tmp, path)
    return path


def _draw(builder: Callable[[], Drawn]) -> Drawn:
    from matplotlib import rc_context

    with rc_context(RC):  # fonts etc. apply when artists are made, so draw inside it too
        return builder()


def plot_runs(run_dirs: Sequence[str | Path] | Sequence[RunData], out_dir: str | Path, *, x: Sequence[str] | None = None,
              y: Sequence[str] | None = None, keep: float | None = None, formats: Sequence[str] = DEFAULT_FORMATS,
              aggregate: bool = False) -> FigureReport:
    """Draw every figure the runs support into ``out_dir`` (created); see module docstring.

    ``x``/``y`` choose the trade-off axes (default: GMACs and throughput against every
    accuracy metric the runs have); ``keep`` the keep of the per-keep figures (default:
    the one closest to 0.5); ``aggregate``: the runs are seeds of one configuration
    (means with ±sd error bars, :func:`plot_data`)."""
    data = plot_data(run_dirs, aggregate)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = FigureReport(notes=list(data.notes))
    caption = data.caption()
    xs = tuple(x) if x else DEFAULT_X + (("energy",) if data.df["energy_j_img"].notna().any() else ())
    ys = tuple(y) if y else tuple(name for name in ("top1", "delta1", "absrel") if data.df[Y_AXES[name][0]].notna().any()) or ("top1",)
    jobs: list[tuple[str, Callable[[], Drawn]]] = []
    for yy in ys:
        for xx in xs:
            jobs.append((f"tradeoff-{yy}-vs-{xx}", lambda xx=xx, yy=yy: tradeoff(data, xx, yy)))
    jobs.append(("speedup-vs-keep", lambda: speedup_vs_keep(data)))
    if data.df["energy_ratio"].notna().any():  # only runs with an energy counter have it
        jobs.append(("speedup-energy-vs-keep", lambda: speedup_energy_vs_keep(data)))
    try:
        k = pick_keep(data.df, keep)
        jobs.append((f"tokens-per-block-keep{k:g}", lambda: tokens_per_block(data, k)))
        jobs.append((f"placements-keep{k:g}", lambda: placements(data, k)))
    except Skip as why:
        report.skipped += [("tokens-per-block", str(why)), ("placements", str(why))]
    jobs.append(("peak-memory-vs-keep", lambda: memory_vs_keep(data)))
    if data.df["object_share"].notna().any():  # only runs on generated, annotated data have it
        jobs.append(("object-share-vs-keep", lambda: object_share_vs_keep(data)))
    for stem, builder in jobs:
        try:
            drawn = _draw(builder)
        except Skip as why:
            report.skipped.append((stem, str(why)))
            continue
        report.written += save(drawn, out, stem, formats, caption)
    return report


# ------------------------------------------------------------------------- training curves
METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a training run (``metrics.jsonl``: one JSON object per
    line with ``epoch`` and numbers, e.g. ``loss``, ``val_loss``, ``recall@0.5`` (share
    of the teacher's top-k tokens in the selector's top-k, 0-1) and ``chance@0.5`` (k/N)).
    An incomplete last line (a killed run) is skipped; other bad lines are an error."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    if not p.is_file():
        raise RunStateError(f"{p}: no training metrics file ({METRICS_FILE})")
    lines = p.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                continue  # torn last line of a killed run
            raise RunStateError(f"{p}: line {n} is not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), (int, float)):
            raise RunStateError(f"{p}: line {n} has no numeric 'epoch'")
        rows.append(row)
    if not rows:
        raise RunStateError(f"{p}: no epochs recorded yet")
    return rows


def training_curves(rows: Sequence[dict[str, Any]], title: str = "") -> Drawn:
    """Loss per epoch (train and validation where present) and, where recorded, the top-k
    recall per keep with its chance level (dashed, same colour)."""
    df = pd.DataFrame(rows).sort_values("epoch")
    losses = [c for c in df.columns if c == "loss" or c.endswith("_loss")]
    recalls = sorted(c for c in df.columns if c.startswith("recall"))
    if not losses and not recalls:
        raise Skip("no loss or recall columns in the metrics")
    fig, axes = _new_figure(WIDE if recalls and losses else WIDTH, 2.4, ncols=(1 if not (losses and recalls) else 2))
    ax_loss = axes[0] if losses else None
    ax_rec = axes[-1] if recalls else None
    for i, col in enumerate(losses):
        ax_loss.plot(df["epoch"], df[col], marker="o", color=PALETTE[(5 + i) % len(PALETTE)], label=col.replace("_", " "))
    if ax_loss is not None:
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
    for i, col in enumerate(recalls):
        colour = PALETTE[(6 + i) % len(PALETTE)]
        suffix = col[len("recall"):]
        ax_rec.plot(df["epoch"], df[col] * 100, marker="o", color=colour, label=f"top-k recall{suffix.replace('@', ' @ keep ')}")
        chance = "chance" + suffix
        if chance in df.columns:
            ax_rec.plot(df["epoch"], df[chance] * 100, ls="--", color=colour, lw=0.9, label=f"chance{suffix.replace('@', ' @ keep ')}")
    if ax_rec is not None:
        ax_rec.set_xlabel("epoch")
        ax_rec.set_ylabel("top-k recall (%)")
        ax_rec.set_ylim(0, 100)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(fig, axes, ncol=min(4, len(losses) + 2 * len(recalls)))
    return Drawn(fig, title or "training curves", "Recall: share of the teacher's top-k tokens in the selector's top-k.")


def plot_training(run_dir: str | Path, out_dir: str | Path | None = None, formats: Sequence[str] = DEFAULT_FORMATS) -> FigureReport:
    """Draw ``training-curves`` of a training run directory (its ``metrics.jsonl``)."""
    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    report = FigureReport()
    try:
        drawn = _draw(lambda: training_curves(rows, f"training curves of {Path(run_dir).name}"))
    except Skip as why:
        report.skipped.append(("training-curves", str(why)))
        return report
    cond = _training_conditions(Path(run_dir))
    report.written += save(drawn, out, "training-curves", formats, cond)
    return report


def _training_conditions(run_dir: Path) -> str:
    env_path = run_dir / "env.json"
    try:
        env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        env = {}
    device = env.get("device") or "device not recorded"
    return f"{device}" + (f" ({env['device_name']})" if env.get("device_name") else "") + (f", torch {env['torch']}" if env.get("torch") else "")


def is_training_run(path: str | Path) -> bool:
    """A directory with a training metrics file and no sweep records."""
    p = Path(path)
    return (p / METRICS_FILE).is_file() and not (p / "records.jsonl").is_file()
