"""Closed-form GMACs of a configuration, and ``--match gmacs``: ToMe/EViT settings at
ToSA's cost.

Why closed form: choosing a matched setting must be instant (no model weights, no trace),
so it evaluates the analytic MAC formula (:mod:`tosa_bench.measure.analytic`) on the token
schedule derived from the options alone (:mod:`tosa_bench.methods.schedule`). Only the
method's reducer is built and bound to the model's config (a few small selector convs at
most). The formula agrees with the fvcore counter to 1 % (tests/test_macs.py).

Matching, per model and keep: the target is ToSA at that keep and the sweep's first
placement (the variant's default if none is given). Candidates are

- ToMe: a constant ``r`` per block, r = 0 .. (N - 1) // 2 (the most any block can merge);
- EViT: keep rates 0.01 .. 1.00 in steps of 0.01 at the sweep's EViT locations, fused;

and the candidate whose GMACs is closest to the target's wins (ties: the smaller r / the
keep closest to ToSA's keep). Unit: GMACs = 1e9 multiply-accumulates per image.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Mapping, Sequence

from tosa_bench.build import VARIANTS
from tosa_bench.measure.analytic import analytic_macs
from tosa_bench.methods.schedule import expected_token_counts
from tosa_bench.models.configs import ViTConfig, get_config


def model_config(model: str, img_size: int | None = None) -> ViTConfig:
    """The model's config at ``img_size`` (None: its own)."""
    return get_config(model).with_overrides(img_size=img_size)


def bound_reducer(cfg: ViTConfig, variant: str, options: Mapping[str, Any]):
    """The variant's reducer built with ``options`` and bound to ``cfg`` (validates them:
    ValueError for a bad keep, placement, location...)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    reducer = VARIANTS[variant](**dict(options))
    reducer.bind(cfg)
    return reducer


@lru_cache(maxsize=4096)
def _gmacs(model: str, img_size: int | None, variant: str, options_json: str) -> float:
    cfg = model_config(model, img_size)
    reducer = bound_reducer(cfg, variant, json.loads(options_json))
    return analytic_macs(cfg, reducer, expected_token_counts(reducer, cfg.num_tokens)).gmacs


def analytic_gmacs(model: str, variant: str, options: Mapping[str, Any], img_size: int | None = None) -> float:
    """GMACs per image (1e9 multiply-accumulates) of ``model``/``variant`` with ``options``,
    from the closed-form formula; no forward pass."""
    return _gmacs(model, img_size, variant, json.dumps(dict(options), sort_keys=True))


def match_tome(model: str, target_gmacs: float, img_size: int | None = None) -> tuple[dict[str, Any], float]:
    """ToMe options ``{"r": r}`` whose GMACs is closest to ``target_gmacs``, and that GMACs."""
    cfg = model_config(model, img_size)
    best: tuple[float, int, float] | None = None
    for r in range(0, (cfg.num_tokens - 1) // 2 + 1):
        g = analytic_gmacs(model, "tome", {"r": r}, img_size)
        key = (abs(g - target_gmacs), r, g)
        if best is None or key < best:
            best = key
    assert best is not None
    return {"r": best[1]}, best[2]


def match_evit(
    model: str,
    target_gmacs: float,
    keep_hint: float,
    locations: Sequence[int] | None = None,
    img_size: int | None = None,
    fuse: bool = True,
) -> tuple[dict[str, Any], float]:
    """EViT options (keep on a 0.01 grid, ``locations``, ``fuse``) whose GMACs is closest to
    ``target_gmacs``, and that GMACs. Among equal costs the keep nearest ``keep_hint``."""
    best: tuple[float, float, float, float] | None = None
    for step in range(1, 101):
        keep = round(step / 100, 2)
        opts: dict[str, Any] = {"keep": keep, "fuse": fuse}
        if locations is not None:
            opts["locations"] = list(locations)
        g = analytic_gmacs(model, "evit", opts, img_size)
        key = (abs(g - target_gmacs), abs(keep - keep_hint), keep, g)
        if best is None or key < best:
            best = key
    assert best is not None
    opts = {"keep": best[2], "fuse": fuse}
    if locations is not None:
        opts["locations"] = list(locations)
    return opts, best[3]
