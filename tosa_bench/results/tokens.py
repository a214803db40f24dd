"""Token pictures: which patches each block of a token-reduced ViT worked on, drawn over
the image (``tosa-bench show-tokens``).

One forward of the images through the model, then every reducer's ``last_selection``
(:class:`tosa_bench.methods.base.BlockSelection`, in original token positions) is drawn
block by block on the patch grid:

- ``ran`` (ToSA, random control): patches that bypassed the block are dimmed; the
  patches that ran it are shown as they are;
- ``kept`` (EViT): patches dropped (or fused) at or before the block are dimmed; a block
  after a pruning block keeps its picture;
- ``merged`` (ToMe): patches merged into one token share a colour (one colour per group of
  two or more); patches still alone are shown as they are.

A block without an entry ran on every token it was given. The image is shown as the
model saw it: the DeiT evaluation crop (short side resized to ``img_size / 0.875``,
centre crop), without the normalisation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from tosa_bench.errors import DatasetError, OptionError
from tosa_bench.methods import registry

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from torch import nn

#: alpha of the dark veil over patches that did not take part
DIM = 0.72


def _load_image(path: Path, img_size: int) -> tuple[np.ndarray, "Any"]:
    """(display crop as uint8 HxWx3, normalised tensor 3xHxW) of one image file."""
    from PIL import Image, UnidentifiedImageError
    from torchvision import transforms

    from tosa_bench.data.imagenet import eval_transform

    if not path.is_file():
        raise DatasetError(f"image {path}: no such file")
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"image {path}: not a readable image ({type(exc).__name__})") from None
    evaluation = eval_transform(img_size)
    crop = transforms.Compose(evaluation.transforms[:2])(rgb)  # its resize and centre crop, before the tensor steps
    return np.asarray(crop), evaluation(rgb)


def selections(model: "nn.Module", batch: "Any") -> dict[int, tuple[str, np.ndarray]]:
    """One forward of ``batch``; block -> (kind, index as a numpy array (B, ...))."""
    import torch

    model.eval()
    with torch.inference_mode():
        model(batch)
    sel = getattr(getattr(model, "reducer", None), "last_selection", {}) or {}
    return {i: (s.kind, s.index.detach().cpu().numpy()) for i, s in sorted(sel.items())}


def block_masks(sel: dict[int, tuple[str, np.ndarray]], depth: int, num_tokens: int, image: int) -> list[tuple[str, np.ndarray]]:
    """Per block, for image ``image``: (caption, per-patch label over the N-1 patches).

    Labels: 1 = took part, 0 = did not (dimmed); for ToMe a group id >= 2 per merged group of
    two or more patches (1 for a patch still alone)."""
    patches = num_tokens - 1
    alive = np.ones(patches, dtype=np.int64)  # EViT: still present after the last pruning block
    out = []
    for b in range(depth):
        if b not in sel:
            out.append((f"block {b}: all {int(alive.sum())}" if alive.all() else f"block {b}: {int(alive.sum())} kept", alive.copy()))
            continue
        kind, index = sel[b]
        if kind == "ran":
            label = np.zeros(patches, dtype=np.int64)
            label[_patches(index[image], num_tokens)] = 1
            out.append((f"block {b}: {int(label.sum())} ran", label))
        elif kind == "kept":
            label = np.zeros(patches, dtype=np.int64)
            label[_patches(index[image], num_tokens)] = 1
            alive = label
            out.append((f"block {b}: {int(label.sum())} kept", label.copy()))
        elif kind == "merged":
            groups = index[image][1:]  # the merged token every patch belongs to (CLS dropped)
            ids, counts = np.unique(groups, return_counts=True)
            big = {g: n for g, n in zip(ids.tolist(), counts.tolist()) if n > 1}
            relabel = {g: 2 + i for i, g in enumerate(sorted(big))}
            label = np.array([relabel.get(int(g), 1) for g in groups], dtype=np.int64)
            out.append((f"block {b}: {len(ids) + 1} tokens", label))
        else:
            raise ValueError(f"unknown selection kind {kind!r} at block {b}")
    return out


def _patches(tokens: np.ndarray, num_tokens: int) -> np.ndarray:
    """Patch positions (0-based, raster order) of token positions: CLS (0) and EViT's
    fused token (position ``num_tokens``, not a patch) left out."""
    return tokens[(tokens > 0) & (tokens < num_tokens)] - 1


def draw(image: np.ndarray, masks: Sequence[tuple[str, np.ndarray]], grid: int, title: str) -> "Figure":
    """A grid of panels, one per block, the image with its block's mask over it."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    cols = min(6, len(masks))
    rows = math.ceil(len(masks) / cols)
    fig = Figure(figsize=(1.15 * cols, 1.25 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = colormaps["tab20"]
    h, w = image.shape[:2]
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (caption, label) in zip(axes.ravel(), masks):
        veil = np.zeros((grid, grid, 4))
        lab = label.reshape(grid, grid)
        veil[lab == 0] = (0, 0, 0, DIM)
        for g in np.unique(lab[lab >= 2]):
            veil[lab == g] = (*cmap((int(g) - 2) % 20)[:3], 0.55)
        ax.imshow(image, extent=(0, w, h, 0))
        ax.imshow(veil, extent=(0, w, h, 0), interpolation="nearest")
        ax.set_title(caption, fontsize=6, pad=2)
    fig.suptitle(title, fontsize=7)
    return fig


def token_pictures(
    images: Sequence[str | Path], model_name: str, variant: str, options: dict[str, Any], out_dir: str | Path, *,
    checkpoint: str | Path | None = None, selector: str | Path | None = None, img_size: int | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Draw one token picture per image (module docstring) into ``out_dir``; returns the
    files written (``tokens-<image stem>-<variant>.<fmt>``)."""
    import torch

    from tosa_bench.build import build_model
    from tosa_bench.models.configs import get_config
    from tosa_bench.results.figures import RC, write_figure

    if registry.is_dense(variant):
        raise OptionError("show-tokens: dense runs every block on every token; pick a variant that reduces tokens "
                          f"({', '.join(n for n in registry.names() if not registry.is_dense(n))})")
    if not images:
        raise OptionError("show-tokens: give at least one image")
    model = build_model(model_name, variant, checkpoint=checkpoint, selector=selector, img_size=img_size, **options)
    cfg = get_config(model_name).with_overrides(img_size=img_size)
    loaded = [_load_image(Path(p), cfg.img_size) for p in images]
    sel = selections(model, torch.stack([t for _, t in loaded]))
    method = registry.get(variant)
    # the label of the setting as built: options left out take the method's defaults
    title_setting = method.setting_label({**{o.name: o.default for o in method.options}, **options}, {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    from matplotlib import rc_context

    with rc_context(RC):
        for n, (path, (crop, _)) in enumerate(zip(images, loaded)):
            masks = block_masks(sel, cfg.depth, cfg.num_tokens, n)
            weights = "trained selectors" if selector else ("checkpoint" if checkpoint else "random weights")
            fig = draw(crop, masks, cfg.grid, f"{Path(path).name}: {method.display} {title_setting} ({model_name}, {weights})")
            stem = f"tokens-{Path(path).stem}-{variant}"
            for fmt in formats:
                written.append(write_figure(fig, out / f"{stem}.{fmt}", {"Title": f"{method.display} token selection of {Path(path).name}"},
                                            dpi=200))
    return written
