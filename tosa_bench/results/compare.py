"""Compare two sets of results point by point, noise-aware: the core of ``tosa-bench
compare`` and of the regression gate (``tosa-bench check``, :mod:`.check`).

Points are matched by their configuration (:func:`point_config`): model, variant, options,
batch size, dtype, image size, compile, device *type* and the weights' file names, never
absolute paths or the machine, so runs from two machines or two checkouts line up.

Metrics (:data:`METRICS`) are of three kinds:

- ``exact``: deterministic numbers (parameters, GMACs, tokens per block, accuracy on a
  fixed subset) must be equal (floats within ``rel_tol``); any difference is ``changed``.
- ``ratio``: time and memory as ratios to dense measured in the same run, which cancel
  the machine's speed and most of its drift: ``speedup`` (the paired speed-up, with its
  95% interval), ``peak_mem_ratio`` (peak memory / dense's peak) and ``energy_ratio``
  (J/image / the dense twin's, measured in alternating windows inside the point, with its
  95% interval; compared only where both sides have it). A change is
  ``regressed`` or ``improved`` only when it is beyond the metric's relative tolerance AND
  outside the noise: the two 95% intervals do not overlap (a metric without an interval,
  such as memory, has only the tolerance). Beyond the tolerance but inside the noise is
  ``noisy``; otherwise ``same``.
- ``info``: absolute throughput and latency, which depend on the machine: shown, never
  judged.

Values are plain floats; ``change`` is new / old - 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

#: the relative tolerance of a ratio metric when the suite does not set one
DEFAULT_TOLERANCE = 0.10
#: below this dense peak (MiB) a memory ratio is not formed: the CPU reading moves in
#: whole pages and allocator chunks (tenths of a MiB), so a ratio of two readings of a
#: few hundred KiB would be noise (the tiny test models of the ci suite are there)
MIN_PEAK_MIB = 4.0


@dataclass(frozen=True)
class Metric:
    """A compared quantity: ``name`` (shown), ``field`` (record key), ``kind`` (exact,
    ratio, info), ``higher_is_better`` (ratio/info), the record keys of its 95% interval,
    ``rel_tol`` (exact floats), ``unit`` (for tables)."""

    name: str
    field: str
    kind: str
    higher_is_better: bool | None = None
    ci: tuple[str, str] | None = None
    rel_tol: float = 0.0
    unit: str = ""


METRICS: tuple[Metric, ...] = (
    Metric("params", "params", "exact", unit="parameters"),
    Metric("gmacs", "gmacs", "exact", rel_tol=1e-12, unit="GMACs/image"),
    Metric("tokens_per_block", "tokens_per_block", "exact", unit="tokens"),
    Metric("top1", "top1", "exact", rel_tol=1e-9, unit="%"),
    Metric("top5", "top5", "exact", rel_tol=1e-9, unit="%"),
    Metric("delta1", "delta1", "exact", rel_tol=1e-9),
    Metric("absrel", "absrel", "exact", rel_tol=1e-9),
    Metric("speedup", "speedup_paired", "ratio", True, ("speedup_paired_ci_low", "speedup_paired_ci_high"), unit="x dense"),
    Metric("peak_mem_ratio", "peak_mem_ratio", "ratio", False, unit="x dense"),
    Metric("energy_ratio", "energy_ratio", "ratio", False, ("energy_ratio_ci_low", "energy_ratio_ci_high"), unit="x dense"),
    Metric("throughput", "throughput_img_s", "info", True, unit="images/s"),
    Metric("latency_ms", "latency_ms_p50", "info", False, unit="ms"),
)
METRIC_NAMES = tuple(m.name for m in METRICS)
VERDICTS = ("same", "improved", "regressed", "changed", "noisy", "info", "not compared")
GROUP_FIELDS = ("model", "batch_size", "dtype", "device", "img_size", "compile")


def _name(path: Any) -> str | None:
    return Path(str(path)).name if path else None


def compile_mode_of(record: Mapping[str, Any]) -> str | None:
    """The record's torch.compile mode, None for eager (True in older records: "default")."""
    from tosa_bench.measure.spec import EAGER, compile_label

    label = compile_label(dict(record))
    return None if label == EAGER else label


def point_config(record: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a point across runs and machines (see the module docstring)."""
    device = str(record.get("device") or "")
    return {
        "model": record.get("model"),
        "variant": record.get("variant"),
        "options": record.get("options") or {},
        "batch_size": record.get("batch_size"),
        "dtype": record.get("dtype"),
        "img_size": record.get("img_size"),
        # the torch.compile mode; eager stays false, as in baselines written before modes
        "compile": compile_mode_of(record) or False,
        "device_type": device.split(":")[0],
        "checkpoint": _name(record.get("checkpoint")),
        "selector": _name(record.get("selector")),
    }


def point_label(record: Mapping[str, Any]) -> str:
    """A short human label: ``test_tiny tosa keep=0.5 b2 fp32 cpu``."""
    opts = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in (record.get("options") or {}).items())
    mode = compile_mode_of(record.get("config") or record)
    parts = [str(record.get("model")), str(record.get("variant")), opts, f"b{record.get('batch_size')}",
             str(record.get("dtype")), str(record.get("device_type") or str(record.get("device") or "").split(":")[0]),
             f"compiled {mode}" if mode else ""]
    return " ".join(p for p in parts if p)


def with_ratios(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the ``ok`` records with ``peak_mem_ratio`` = peak memory / the peak of the
    dense record of the same model, batch, dtype, device and image size in the same run
    (None where there is none, or where dense's peak is below :data:`MIN_PEAK_MIB`).
    Dense's own speed-up is 1 by definition unless it was paired against a dense twin
    (A/A)."""
    from tosa_bench.methods import registry

    ok = [dict(r) for r in records if r.get("status") == "ok"]
    dense = {tuple(r.get(k) for k in GROUP_FIELDS): r for r in ok if registry.is_dense(str(r.get("variant")))}
    for r in ok:
        base = dense.get(tuple(r.get(k) for k in GROUP_FIELDS))
        mem, base_mem = r.get("peak_mem_mb"), base.get("peak_mem_mb") if base else None
        resolved = mem is not None and base_mem is not None and base_mem >= MIN_PEAK_MIB
        r["peak_mem_ratio"] = mem / base_mem if resolved else None
    return ok


def summarize(record: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable part of one record: its configuration and every metric field (and
    interval) it has. A baseline file stores exactly this per point."""
    out: dict[str, Any] = {"config": point_config(record), "label": point_label(record)}
    for m in METRICS:
        fields = (m.field, *(m.ci or ()))
        for f in fields:
            if record.get(f) is not None:
                out[f] = record[f]
    return out


@dataclass
class Row:
    """One metric of one point: ``old``/``new`` values (None: absent), ``change`` (new /
    old - 1, None where not a number), ``verdict``, ``why`` (one line)."""

    point: str
    metric: str
    old: Any
    new: Any
    change: float | None
    verdict: str
    why: str = ""
    unit: str = ""


@dataclass
class Comparison:
    """Every row, plus the points found on one side only."""

    rows: list[Row] = field(default_factory=list)
    only_old: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def by_verdict(self, *verdicts: str) -> list[Row]:
        return [r for r in self.rows if r.verdict in verdicts]

    @property
    def regressed(self) -> bool:
        return bool(self.by_verdict("regressed", "changed"))

    def to_json(self) -> dict[str, Any]:
        counts = {v: len(self.by_verdict(v)) for v in VERDICTS if self.by_verdict(v)}
        return {"counts": counts, "regressed": self.regressed, "only_old": self.only_old, "only_new": self.only_new,
                "notes": self.notes, "rows": [asdict(r) for r in self.rows]}


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _judge_exact(m: Metric, old: Any, new: Any) -> tuple[str, str]:
    a, b = _number(old), _number(new)
    if a is not None and b is not None:
        same = math.isclose(a, b, rel_tol=m.rel_tol, abs_tol=0.0) if m.rel_tol else a == b
    else:
        same = old == new
    return ("same", "") if same else ("changed", "a deterministic metric differs")


def _judge_ratio(m: Metric, old: Mapping[str, Any], new: Mapping[str, Any], tol: float) -> tuple[str, str]:
    a, b = _number(old.get(m.field)), _number(new.get(m.field))
    if a is None or b is None or a == 0:
        return "same", ""
    change = b / a - 1
    better = change > 0 if m.higher_is_better else change < 0
    if abs(change) <= tol:
        return "same", f"within the {tol:.0%} tolerance"
    if m.ci is not None:
        ia, ib = _interval(m, old, a), _interval(m, new, b)
        if not (ib[1] < ia[0] or ib[0] > ia[1]):
            return "noisy", f"beyond the {tol:.0%} tolerance but inside the noise (the 95% intervals overlap)"
    return ("improved" if better else "regressed"), f"beyond the {tol:.0%} tolerance" + (" and outside the noise" if m.ci else "")


def _interval(m: Metric, record: Mapping[str, Any], value: float) -> tuple[float, float]:
    """The 95% interval of a metric, or the bare value where the record has none."""
    lo, hi = (_number(record.get(k)) for k in m.ci or ())
    return (lo, hi) if lo is not None and hi is not None else (value, value)


def compare_records(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]],
                    tolerances: Mapping[str, float] | None = None, metrics: Sequence[str] | None = None,
                    skip_kinds: Mapping[str, str] | None = None) -> Comparison:
    """Compare two lists of :func:`summarize`-d records by configuration.

    ``tolerances``: metric name -> relative tolerance (ratio metrics; default 10%).
    ``metrics``: names to compare (default all). ``skip_kinds``: kind -> reason; metrics
    of that kind get the verdict ``not compared`` with the reason (e.g. time and memory
    against a baseline from another machine).
    """
    tolerances = dict(tolerances or {})
    skip_kinds = dict(skip_kinds or {})
    wanted = [m for m in METRICS if metrics is None or m.name in metrics]
    a = {_key(r): r for r in old}
    b = {_key(r): r for r in new}
    out = Comparison(only_old=[_label(a[k]) for k in a if k not in b], only_new=[_label(b[k]) for k in b if k not in a])
    for key in (k for k in b if k in a):
        ra, rb = a[key], b[key]
        label = _label(rb)
        for m in wanted:
            va, vb = ra.get(m.field), rb.get(m.field)
            if va is None and vb is None:
                continue
            change = None
            na, nb = _number(va), _number(vb)
            if na is not None and nb is not None and na != 0:
                change = nb / na - 1
            if m.kind in skip_kinds:
                verdict, why = "not compared", skip_kinds[m.kind]
            elif va is None or vb is None:
                verdict, why = ("changed" if m.kind == "exact" else "info"), ("measured on one side only")
            elif m.kind == "exact":
                verdict, why = _judge_exact(m, va, vb)
            elif m.kind == "ratio":
                verdict, why = _judge_ratio(m, ra, rb, tolerances.get(m.name, DEFAULT_TOLERANCE))
            else:
                verdict, why = "info", "depends on the machine: not judged"
            out.rows.append(Row(label, m.name, _plain(va, m, ra), _plain(vb, m, rb), change, verdict, why, m.unit))
    return out


def _key(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary["config"], sort_keys=True, separators=(",", ":"))


def _label(r: Mapping[str, Any]) -> str:
    return r.get("label") or point_label(r)


def _plain(v: Any, m: Metric, record: Mapping[str, Any]) -> Any:
    """A value for display and JSON: a ratio with its interval as [value, low, high]."""
    if m.ci and _number(v) is not None and all(_number(record.get(k)) is not None for k in m.ci):
        return [v, record[m.ci[0]], record[m.ci[1]]]
    return v


def compare_runs(old_dir: str | Path, new_dir: str | Path, tolerances: Mapping[str, float] | None = None,
                 metrics: Sequence[str] | None = None) -> Comparison:
    """Compare two run directories (their latest ok record per configuration)."""
    from tosa_bench.results.load import load_run

    old, new = load_run(old_dir), load_run(new_dir)
    cmp = compare_records([summarize(r) for r in with_ratios(old.records)], [summarize(r) for r in with_ratios(new.records)],
                          tolerances, metrics)
    failed = [point_label(r) for r in new.records if r.get("status") != "ok"]
    if failed:
        cmp.notes.append(f"{len(failed)} point(s) of {new_dir} are not ok and were not compared: {', '.join(failed[:3])}")
    return cmp


# ------------------------------------------------------------------------- rendering
def format_value(v: Any, metric: str) -> str:
    """Display text of a value: ``1.21 (1.17-1.25)`` for an interval, lists compacted."""
    if v is None:
        return "-"
    if isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v) and metric in ("speedup", "energy_ratio"):
        return f"{v[0]:.3f} ({v[1]:.3f}-{v[2]:.3f})"
    if isinstance(v, list):
        text = json.dumps(v, separators=(",", ":"))
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.6g}"
    return str(v)


def format_change(change: float | None) -> str:
    return "" if change is None else f"{change:+.1%}"


#: verdicts shown by default: what a reader has to look at
NOTEWORTHY = ("regressed", "changed", "improved", "noisy", "not compared")


def to_markdown(cmp: Comparison, title: str, show: Sequence[str] | None = None) -> str:
    """A Markdown report: a summary line, then a table of the rows whose verdict is in
    ``show`` (default :data:`NOTEWORTHY`; every verdict with ``VERDICTS``)."""
    show = tuple(show) if show is not None else NOTEWORTHY
    rows = [r for r in cmp.rows if r.verdict in show]
    counts = ", ".join(f"{n} {v}" for v, n in cmp.to_json()["counts"].items()) or "nothing compared"
    lines = [f"### {title}", "", f"{len({r.point for r in cmp.rows})} points matched; metrics: {counts}."]
    for note in cmp.notes:
        lines.append(f"Note: {note}")
    if cmp.only_old:
        lines.append(f"Only in the old results: {', '.join(cmp.only_old)}.")
    if cmp.only_new:
        lines.append(f"Only in the new results: {', '.join(cmp.only_new)}.")
    if rows:
        lines += ["", "| point | metric | old | new | change | verdict |", "|:---|:---|---:|---:|---:|:---|"]
        for r in rows:
            cells = [r.point, r.metric + (f" ({r.unit})" if r.unit else ""), format_value(r.old, r.metric), format_value(r.new, r.metric),
                     format_change(r.change), f"**{r.verdict}**" if r.verdict in ("regressed", "changed") else r.verdict]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def rich_table(cmp: Comparison, title: str, show: Sequence[str] | None = None):
    """The same rows as a rich Table (for the terminal)."""
    from rich.table import Table
    from rich.text import Text

    show = tuple(show) if show is not None else NOTEWORTHY
    t = Table(title=title)
    for col, right in (("point", False), ("metric", False), ("old", True), ("new", True), ("change", True), ("verdict", False)):
        t.add_column(col, justify="right" if right else "left", overflow="fold")
    styles = {"regressed": "bold red", "changed": "bold red", "improved": "green", "noisy": "yellow"}
    for r in cmp.rows:
        if r.verdict in show:
            t.add_row(Text(r.point), Text(r.metric), Text(format_value(r.old, r.metric)), Text(format_value(r.new, r.metric)),
                      Text(format_change(r.change)), Text(r.verdict, style=styles.get(r.verdict, "")))
    return t
