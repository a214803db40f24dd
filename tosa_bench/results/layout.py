"""How a run's records are laid out as one pandas DataFrame: :func:`frame`.

One row per record and grid keep (a point standing for two keeps gets a row for each),
with the method's label and setting from the method registry
(:mod:`tosa_bench.methods.registry`; a variant it does not know, from an older run or a
plugin not loaded, keeps its name as label and "-" as setting), and ratio columns to dense
of the same model, image size, batch size, dtype, device and compile mode (a compiled
point is timed against a dense twin compiled the same way): ``speedup`` = the point's
``speedup_paired`` (dense and variant timed in alternating rounds inside the point), or
throughput / dense throughput for records without it; ``gmacs_ratio`` = GMACs / dense
GMACs; ``energy_j_img`` = J per image and ``energy_ratio`` (with ``energy_low``/``_high``,
its 95% interval) = J/image / the dense twin's, as measured inside the point. Rows are sorted by group (in order of first appearance), keep from high to low,
then the registry's method order.

Why a module of its own: the tables (:mod:`.tables`), the figures (:mod:`.figures`) and
:func:`tosa_bench.results.load.load_frame` all read this layout. Kept apart from the
table formatting, the reading side (:mod:`.load`) needs nothing from :mod:`.tables`, whose
``render`` takes :mod:`.load`'s ``RunData``. The names stay importable from :mod:`.tables`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from tosa_bench.errors import OptionError
from tosa_bench.measure.spec import compile_label
from tosa_bench.methods import registry

if TYPE_CHECKING:  # pragma: no cover
    from tosa_bench.methods.registry import Method

#: row order of a variant the registry does not know: after every registered method
UNKNOWN_ORDER = 1_000
GROUP = ["model", "img_size", "batch_size", "dtype", "device", "compile"]
#: table column -> the record field it shows, for the seed spread of aggregated runs
#: (:mod:`tosa_bench.results.aggregate` writes ``<field>_sd`` and ``<field>_n``)
SPREAD_SOURCES = {"top1": "top1", "top5": "top5", "delta1": "delta1", "absrel": "absrel", "rmse": "rmse",
                  "speedup": "speedup_paired", "throughput": "throughput_img_s", "latency_ms": "latency_ms_p50",
                  "peak_mem_mib": "peak_mem_mb", "energy_j_img": "energy_j_per_img", "object_share": "object_share_mean", "object_chance": "object_chance_mean"}


def _method(variant: Any) -> Method | None:
    """The registered method of ``variant``; None for one this process does not know (an
    older run, a plugin not loaded): its rows still render, labelled by the name."""
    try:
        return registry.get(variant)
    except OptionError:
        return None


def _label(variant: Any) -> str:
    method = _method(variant)
    return method.display if method is not None else str(variant)


def _sort_order(variant: Any) -> int:
    method = _method(variant)
    return method.order if method is not None else UNKNOWN_ORDER


def _setting(r: dict[str, Any]) -> str:
    """The method's own description of the record's setting, plus "GMACs-matched" for a
    point chosen by ``--match gmacs``; "-" for a variant the registry does not know."""
    method = _method(r.get("variant"))
    if method is None:
        return "-"
    label = method.setting_label(r.get("resolved_options") or r.get("options") or {}, r)
    if r.get("match"):
        label = "GMACs-matched" if label in ("", "-") else f"{label}, GMACs-matched"
    return label


def frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per record and grid keep, with ratio columns (module docstring)."""
    rows = []
    for order, r in enumerate(records):
        keeps = r.get("grid_keeps") or [None]
        for keep in keeps:
            params = r.get("params")
            rows.append({
                "model": r.get("model"), "img_size": r.get("img_size"), "batch_size": r.get("batch_size"),
                "dtype": r.get("dtype"), "device": r.get("device"), "compile": compile_label(r),
                "keep": keep, "variant": r.get("variant"), "method": _label(r.get("variant")),
                "setting": _setting(r),
                "params_m": params / 1e6 if params is not None else None,
                "gmacs": r.get("gmacs"), "gflops": r.get("gflops"), "gmacs_analytic": r.get("gmacs_analytic"),
                "throughput": r.get("throughput_img_s"), "throughput_low": r.get("throughput_img_s_low"),
                "_paired": r.get("speedup_paired"),
                "speedup_low": r.get("speedup_paired_ci_low"), "speedup_high": r.get("speedup_paired_ci_high"),
                "speedup_noisy": r.get("speedup_paired_noisy"),
                "_noise_threshold": (r.get("settings") or {}).get("noise_threshold"),
                "throughput_high": r.get("throughput_img_s_high"), "timed_steps": r.get("timed_steps"),
                "latency_ms": r.get("latency_ms_p50"), "peak_mem_mib": r.get("peak_mem_mb"),
                "compile_s": r.get("compile_s"),
                "energy_j_img": r.get("energy_j_per_img"), "energy_ratio": r.get("energy_ratio"),
                "energy_low": r.get("energy_ratio_ci_low"), "energy_high": r.get("energy_ratio_ci_high"),
                "energy_method": r.get("energy_method") if r.get("energy_j_per_img") is not None else None,
                "energy_reason": r.get("energy_reason") if r.get("energy_j_per_img") is None else None,
                "top1": r.get("top1"), "top5": r.get("top5"), "n_images": r.get("n_images"),
                "delta1": r.get("delta1"), "absrel": r.get("absrel"), "rmse": r.get("rmse"),
                "weights": r.get("weights"), "accuracy_reason": r.get("accuracy_reason"),
                "n_unreadable": r.get("n_unreadable"), "n_empty_classes": r.get("n_empty_classes"),
                "object_share": _percent(r.get("object_share_mean")), "object_chance": _percent(r.get("object_chance_mean")),
                **{f"{col}_{stat}": _percent(r.get(f"{src}_{stat}")) if col.startswith("object") and stat == "sd"
                   else r.get(f"{src}_{stat}") for col, src in SPREAD_SOURCES.items() for stat in ("sd", "n")},
                "status": r.get("status"), "error": r.get("error"), "config_hash": r.get("config_hash"),
                "_order": order,
            })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["img_size"] = df["img_size"].astype(object).where(df["img_size"].notna(), "default")
    df["_dense"] = df["variant"].map(registry.is_dense).astype(bool)
    ok_dense = df[df["_dense"] & (df["status"] == "ok")]
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
    df["_variant_sort"] = df["variant"].map(_sort_order)
    df = df.sort_values(["_group", "_keep_sort", "_variant_sort", "_order"], kind="stable")
    return df.drop(columns=["_dense_tp", "_dense_gmacs", "_keep_sort", "_variant_sort", "_order", "_paired"]).reset_index(drop=True)


def _percent(share: Any) -> Any:
    """A 0-1 share as percent (None stays None)."""
    return share * 100.0 if isinstance(share, (int, float)) and not isinstance(share, bool) else share
