"""What one ``--keep`` value means for each variant (its "natural" mapping), shared by
``tosa-bench profile`` and ``tosa-bench sweep``.

- tosa, random: ``keep`` is the share of patch tokens that run each selected block
  (tosa also takes ``importance``: "mean", the default, or "cls").
- evit: ``keep`` is EViT's keep rate at each of its pruning blocks (it compounds).
- tome: ``r = round((1 - keep) * (N - 1) / L)`` tokens merged per block, so that about
  ``keep`` of the patch tokens are left after the last block (keep 0.5 on DeiT-S/224:
  r = 8). An explicit ``tome_r`` overrides it.
- dense: ignores keep.

These mappings give different costs at the same keep; ``--match gmacs`` in the sweep
picks ToMe/EViT settings at ToSA's GMACs instead.
"""

from __future__ import annotations

from typing import Any, Sequence

from tosa_bench.models.configs import ViTConfig


def tome_r_for_keep(keep: float, cfg: ViTConfig) -> int:
    """ToMe's r for a keep ratio (module docstring)."""
    return max(0, round((1.0 - keep) * (cfg.num_tokens - 1) / cfg.depth))


def natural_options(
    variant: str,
    keep: float | None,
    cfg: ViTConfig,
    *,
    placement: str | Sequence[int] | None = None,
    tome_r: int | None = None,
    evit_locations: Sequence[int] | None = None,
    fuse: bool = True,
    seed: int = 0,
    importance: str | None = None,
) -> dict[str, Any]:
    """build_model options for ``variant`` at ``keep`` (None: the variant's default keep,
    0.5 for tosa/random/tome, 0.7 for evit)."""
    if variant in ("tosa", "random"):
        opts: dict[str, Any] = {"keep": 0.5 if keep is None else keep}
        if placement is not None:
            opts["placement"] = placement
        if variant == "random":
            opts["seed"] = seed
        elif importance is not None and importance != "mean":
            opts["importance"] = importance  # "mean" is the default: left out so hashes stay put
        return opts
    if variant == "tome":
        return {"r": tome_r if tome_r is not None else tome_r_for_keep(0.5 if keep is None else keep, cfg)}
    if variant == "evit":
        opts = {"keep": 0.7 if keep is None else keep, "fuse": fuse}
        if evit_locations is not None:
            opts["locations"] = list(evit_locations)
        return opts
    if variant == "dense":
        return {}
    raise ValueError(f"variant: unknown variant {variant!r}")
