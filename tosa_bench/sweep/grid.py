"""A suite -> the ordered list of points to measure.

Expansion, per model x device x dtype x batch size (every list multiplies):

- dense once (it ignores keep);
- then for each keep, each variant in the suite's order:
  tosa / random at every placement (natural options: keep = share of patch tokens that
  run each selected block); tome at ``r = round((1 - keep)(N - 1)/L)`` or, with explicit
  ``tome_r``, once per r (not tied to a keep); evit at keep, at every location list;
  with ``match = "gmacs"`` tome and evit take the setting closest to ToSA's GMACs instead
  (:mod:`.match`).

Points are identified by ``Point.config_hash``; a configuration reached twice (ToMe at two
keeps that round to the same r) is measured once and carries both keeps in ``keeps``.
Every point is validated as it is made (its reducer is bound to the model's config), so a
bad placement or location fails before anything is measured. ``auto`` devices are resolved
here, so the hash names the device really used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from tosa_bench.measure.point import Point, resolve_device
from tosa_bench.methods.natural import natural_options
from tosa_bench.sweep.match import analytic_gmacs, bound_reducer, match_evit, match_tome, model_config
from tosa_bench.sweep.suite import Suite


@dataclass(frozen=True)
class GridPoint:
    """One point of a sweep: its identity (``point``) plus how it sits in the grid.

    ``keeps``: the grid keep values this point stands for (empty for dense and explicit
    ToMe r). ``placement``: the placement as given ("alternate", "3,5,7"; None = default).
    ``match``: per keep, how a matched setting was chosen (target GMACs, own GMACs).
    """

    point: Point
    keeps: tuple[float, ...] = ()
    placement: str | None = None
    match: tuple[dict[str, Any], ...] = field(default=())

    @property
    def hash(self) -> str:
        return self.point.config_hash()

    def labels(self) -> dict[str, Any]:
        """The grid labels a record carries."""
        return {"grid_keeps": list(self.keeps), "placement_label": self.placement, "match": [dict(m) for m in self.match] or None}


def placement_label(p: str | Sequence[int] | None) -> str | None:
    """'alternate' -> 'alternate'; (3, 5, 7) -> '3,5,7'."""
    if p is None or isinstance(p, str):
        return p
    return ",".join(str(i) for i in p)


def _placement_option(p: str | Sequence[int] | None) -> str | list[int] | None:
    return p if p is None or isinstance(p, str) else [int(i) for i in p]


def _checked(point: Point) -> Point:
    """Validate ``point``'s options against its model (binds the reducer); ValueError names
    the point."""
    try:
        cfg = model_config(point.model, point.img_size)
        if point.img_size is not None and point.img_size % cfg.patch_size:
            raise ValueError(f"img_size {point.img_size} is not a multiple of the patch size {cfg.patch_size}")
        bound_reducer(cfg, point.variant, point.options)
    except (ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"grid point {point.model}/{point.variant} {point.options}: {first}") from None
    return point


def _check_dtype(dtype: str, device: str) -> None:
    from tosa_bench.precision import resolve_autocast

    try:
        resolve_autocast(dtype, device)
    except ValueError as err:
        raise ValueError(f"grid: {err} (device {device})") from None


def weights_for(table: dict[str, str], model: str) -> str | None:
    """The path a weights table gives ``model`` (its own entry, else ``*``)."""
    return table.get(model, table.get("*"))


def expand(suite: Suite) -> list[GridPoint]:
    """Every point of ``suite``, in measuring order, deduplicated by config hash."""
    out: dict[str, GridPoint] = {}

    def add(gp: GridPoint) -> None:
        h = gp.hash
        if h in out:
            old = out[h]
            keeps = tuple(sorted(set(old.keeps) | set(gp.keeps), reverse=True))
            out[h] = replace(old, keeps=keeps, match=old.match + tuple(m for m in gp.match if m not in old.match))
        else:
            out[h] = gp

    devices: list[str] = []
    for d in suite.devices:
        r = resolve_device(d)
        if r not in devices:
            devices.append(r)
    placements = list(suite.placements) or [None]
    locations = list(suite.evit_locations) or [None]
    for model in suite.models:
        cfg = model_config(model, suite.img_size)
        ckpt = weights_for(dict(suite.checkpoint), model)
        sel = weights_for(dict(suite.selector), model)
        for device in devices:
            dev_type = "cuda" if device.startswith("cuda") else "cpu"
            for dtype in suite.dtypes[dev_type]:
                _check_dtype(dtype, device)
                for batch in suite.batch_size[dev_type]:
                    base = dict(model=model, batch_size=batch, dtype=dtype, device=device, img_size=suite.img_size,
                                checkpoint=ckpt, compile=suite.compile)

                    def point(variant: str, options: dict[str, Any]) -> Point:
                        return _checked(Point(variant=variant, options=options, selector=sel if variant == "tosa" else None, **base))

                    if "dense" in suite.variants:
                        add(GridPoint(point("dense", {})))
                    if "tome" in suite.variants and suite.tome_r:
                        for r in suite.tome_r:
                            add(GridPoint(point("tome", natural_options("tome", None, cfg, tome_r=r))))
                    for keep in suite.keeps:
                        target = None
                        if suite.match == "gmacs":
                            tosa_opts = natural_options("tosa", keep, cfg, placement=_placement_option(placements[0]), importance=suite.importance)
                            _checked(Point(variant="tosa", options=tosa_opts, **base))
                            target = analytic_gmacs(model, "tosa", tosa_opts, suite.img_size)
                        for variant in suite.variants:
                            if variant in ("tosa", "random"):
                                for p in placements:
                                    opts = natural_options(variant, keep, cfg, placement=_placement_option(p), seed=suite.seed, importance=suite.importance)
                                    add(GridPoint(point(variant, opts), (keep,), placement_label(p)))
                            elif variant == "tome" and not suite.tome_r:
                                if target is None:
                                    add(GridPoint(point("tome", natural_options("tome", keep, cfg)), (keep,)))
                                else:
                                    opts, g = match_tome(model, target, suite.img_size)
                                    info = {"keep": keep, "target": "tosa", "target_placement": placement_label(placements[0]) or "default",
                                            "target_gmacs": target, "gmacs_analytic": g, "gap": g / target - 1.0}
                                    add(GridPoint(point("tome", opts), (keep,), None, (info,)))
                            elif variant == "evit":
                                for locs in locations:
                                    if target is None:
                                        opts = natural_options("evit", keep, cfg, evit_locations=locs)
                                        add(GridPoint(point("evit", opts), (keep,)))
                                    else:
                                        opts, g = match_evit(model, target, keep, locs, suite.img_size)
                                        info = {"keep": keep, "target": "tosa", "target_placement": placement_label(placements[0]) or "default",
                                                "target_gmacs": target, "gmacs_analytic": g, "gap": g / target - 1.0}
                                        add(GridPoint(point("evit", opts), (keep,), None, (info,)))
    return list(out.values())


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/3' -> (2, 3); ValueError unless 1 <= i <= n."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"shard: expected i/n like 2/3, got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"shard: need 1 <= i <= n, got {text!r}")
    return i, n


def select_shard(points: Sequence[GridPoint], shard: tuple[int, int] | None) -> list[GridPoint]:
    """The points of shard i of n: rank the config hashes in sorted order and keep those
    whose rank is i - 1 modulo n. Deterministic, disjoint, covering, sizes differ by <= 1;
    the grid order is kept within a shard."""
    if shard is None:
        return list(points)
    i, n = shard
    ranks = {h: r for r, h in enumerate(sorted(gp.hash for gp in points))}
    return [gp for gp in points if ranks[gp.hash] % n == i - 1]
