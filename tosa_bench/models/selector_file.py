"""Trained ToSA selector files: safetensors with the selectors' tensors and metadata
saying what they were trained for.

Keys are the model's own (``reducer.selectors.<block>.conv1.weight`` ...), so the file
loads through :func:`tosa_bench.models.checkpoint.load_method_weights`. The metadata
(safetensors' string-to-string header) holds ``format`` (:data:`FORMAT`), ``model``,
``placement`` (0-based blocks, "1,3,5"), ``importance``, ``selector_hidden``,
``selector_kernel``, ``img_size`` and, from training, ``data``, ``epochs``,
``final_loss``, ``recall`` and ``loss``. :func:`check_selector_file` refuses a file made
for another model or another placement with one line naming both, before any tensor
is compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tosa_bench.errors import CheckpointError

FORMAT = "tosa-bench-selectors/1"
PREFIX = "reducer."


def selector_metadata(model: nn.Module) -> dict[str, str]:
    """What a selector file must say about the model it belongs to."""
    r = model.reducer
    return {"format": FORMAT, "model": str(getattr(model, "name", "")), "placement": ",".join(map(str, r.placement)),
            "importance": str(r.importance), "selector_hidden": str(r.selector_hidden),
            "selector_kernel": str(r.selector_kernel), "img_size": str(model.cfg.img_size)}


def save_selectors(path: str | Path, model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """Write ``model``'s selectors and their metadata to ``path`` (temp file + rename)."""
    from tosa_bench.models.checkpoint import write_safetensors

    write_safetensors(path, {PREFIX + k: v for k, v in model.reducer.state_dict().items()},
                      {**(extra or {}), **selector_metadata(model)})


def read_selector_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors selector file ({} for a file without ours, or a .pth)."""
    p = Path(path)
    if p.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # a damaged header: the tensor reader reports the file itself
        raise CheckpointError(f"selector file {p}: not a readable safetensors file ({type(exc).__name__})") from None
    return meta if meta.get("format") == FORMAT else {}


def check_selector_file(path: str | Path, model: nn.Module) -> dict[str, str]:
    """CheckpointError when the file says it was made for another model or placement
    (its metadata; files without it are checked by their tensors alone). Returns the
    metadata."""
    meta = read_selector_metadata(path)
    if not meta:
        return meta
    want = selector_metadata(model)
    if meta.get("model") and want["model"] and meta["model"] != want["model"]:
        raise CheckpointError(f"selector file {path} was trained for {meta['model']}, not {want['model']}; "
                              f"train one for {want['model']} (tosa-bench train selector --model {want['model']})")
    if meta.get("placement") != want["placement"]:
        raise CheckpointError(f"selector file {path} has selectors at blocks {meta.get('placement')}, the model at "
                              f"{want['placement']}; build it with --placement {meta.get('placement')} or train selectors for this placement")
    return meta
