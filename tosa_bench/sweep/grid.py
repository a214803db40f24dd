"""A suite -> the ordered list of points to measure.

Expansion, per model x device x dtype x batch size (every list multiplies; ``itertools.product``):

- first the points each method makes without a keep (dense; ToMe's explicit ``tome_r``);
- then for each keep, each variant in the suite's order, the points its registry entry
  makes of that keep (:meth:`~tosa_bench.methods.registry.Method.grid_options`: ToSA and
  random at every placement, EViT at every location list, ToMe at its mapped r);
  with ``match = "gmacs"`` a method that can be matched takes instead the setting closest
  to the match target's GMACs (ToSA at that keep and the first placement;
  :meth:`~tosa_bench.methods.registry.Method.match_gmacs`), computed in closed form.

Points are identified by ``Point.config_hash``; a configuration reached twice (ToMe at two
keeps that round to the same r) is measured once and carries both keeps in ``keeps``.
Every point is validated as it is made (its reducer is bound to the model's config), so a
bad placement or location fails before anything is measured. ``auto`` devices are resolved
here, so the hash names the device really used.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

from tosa_bench.errors import OptionError, UserInputError, first_line
from tosa_bench.measure.analytic import analytic_gmacs
from tosa_bench.measure.spec import Point, resolve_device
from tosa_bench.methods import registry
from tosa_bench.methods.registry import Knobs
from tosa_bench.models.configs import get_config
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


def _checked(point: Point) -> Point:
    """Validate ``point``'s options against its model (binds the reducer); the
    UserInputError raised (same class) names the point."""
    try:
        cfg = get_config(point.model, point.img_size)
        if point.img_size is not None and point.img_size % cfg.patch_size:
            raise OptionError(f"img_size {point.img_size} is not a multiple of the patch size {cfg.patch_size}")
        registry.bound_reducer(cfg, point.variant, point.options)
    except UserInputError as err:
        raise type(err)(f"grid point {point.model}/{point.variant} {point.options}: {first_line(err)}") from None
    return point


def _check_dtype(dtype: str, device: str) -> None:
    from tosa_bench.precision import resolve_autocast

    try:
        resolve_autocast(dtype, device)
    except UserInputError as err:
        raise type(err)(f"grid: {err} (device {device})") from None


def weights_for(table: dict[str, str], model: str) -> str | None:
    """The path a weights table gives ``model`` (its own entry, else ``*``)."""
    return table.get(model, table.get("*"))


def knobs_of(suite: Suite) -> Knobs:
    """The method settings of ``suite`` that the registry's methods read."""
    return Knobs(placements=tuple(suite.placements), importance=suite.importance, seed=suite.seed,
                 tome_r=tuple(suite.tome_r), evit_locations=tuple(suite.evit_locations), fuse=suite.fuse)


def _devices(suite: Suite) -> list[str]:
    """The suite's devices resolved (``auto`` -> cuda or cpu), each once."""
    return list(dict.fromkeys(resolve_device(d) for d in suite.devices))


def _setups(suite: Suite) -> Iterator[dict[str, Any]]:
    """The Point fields shared by one model x device x dtype x batch block of the grid."""
    for model, device in itertools.product(suite.models, _devices(suite)):
        dev_type = "cuda" if device.startswith("cuda") else "cpu"
        for dtype in suite.dtypes[dev_type]:
            _check_dtype(dtype, device)
            for batch, mode in itertools.product(suite.batch_size[dev_type], suite.compile):
                yield dict(model=model, batch_size=batch, dtype=dtype, device=device, img_size=suite.img_size,
                           checkpoint=weights_for(dict(suite.checkpoint), model), compile=mode)


def _points_of(suite: Suite, base: dict[str, Any], keep: float | None, knobs: Knobs) -> Iterator[GridPoint]:
    """Every method's points at ``keep`` (None: those not tied to a keep) for one setup."""
    cfg = get_config(base["model"], suite.img_size)
    selector = weights_for(dict(suite.selector), base["model"])
    target = _match_target(suite, base, keep, cfg, knobs) if keep is not None and suite.match == "gmacs" else None
    keeps = () if keep is None else (keep,)
    for variant in suite.variants:
        method = registry.get(variant)

        def point(options: dict[str, Any]) -> Point:
            return _checked(Point(variant=variant, options=options, selector=selector if method.accepts_selector else None, **base))

        matched = None
        if target is not None and not method.match_target:
            gmacs_of = lambda o, v=variant: analytic_gmacs(base["model"], v, o, suite.img_size)  # noqa: E731
            matched = method.match_gmacs(keep, cfg, knobs, target["target_gmacs"], gmacs_of)
        if matched is None:
            for entry in method.grid_options(keep, cfg, knobs):
                yield GridPoint(point(entry.options), keeps, entry.placement)
            continue
        for options, g in matched:
            info = {**target, "gmacs_analytic": g, "gap": g / target["target_gmacs"] - 1.0}
            yield GridPoint(point(options), keeps, None, (info,))


def _match_target(suite: Suite, base: dict[str, Any], keep: float, cfg, knobs: Knobs) -> dict[str, Any] | None:
    """What ``--match gmacs`` aims at for ``keep``: the match target method (ToSA) at that
    keep and the first placement, its GMACs from the closed form."""
    method = registry.match_target()
    if method is None:
        raise OptionError("match: no registered method is a match target")
    entry = method.grid_options(keep, cfg, knobs)[0]
    _checked(Point(variant=method.name, options=entry.options, **base))
    return {"keep": keep, "target": method.name, "target_placement": entry.placement or "default",
            "target_gmacs": analytic_gmacs(base["model"], method.name, entry.options, suite.img_size)}


def expand(suite: Suite) -> list[GridPoint]:
    """Every point of ``suite``, in measuring order, deduplicated by config hash."""
    out: dict[str, GridPoint] = {}
    knobs = knobs_of(suite)
    for base in _setups(suite):
        for keep in (None, *suite.keeps):
            for gp in _points_of(suite, base, keep, knobs):
                old = out.get(gp.hash)
                if old is None:
                    out[gp.hash] = gp
                    continue
                keeps = tuple(sorted(set(old.keeps) | set(gp.keeps), reverse=True))
                out[gp.hash] = replace(old, keeps=keeps, match=old.match + tuple(m for m in gp.match if m not in old.match))
    return list(out.values())


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/3' -> (2, 3); OptionError unless 1 <= i <= n."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise OptionError(f"shard: expected i/n like 2/3, got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise OptionError(f"shard: need 1 <= i <= n, got {text!r}")
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
