"""Where a method looks: the share of an object's patch tokens that it let run a block.

The generated ``shapes`` set knows where each image's object is (``annotations.json``:
shape, centre and radius). On such a set a sweep also records, per block, how many of
the object's patch tokens a method kept:

- ToSA and the random control: the tokens that *ran* the block (the rest bypassed it);
- EViT: the tokens *kept* after the block's attention (the rest were dropped or fused);
- ToMe merges rather than drops, so no token is lost and nothing is recorded for it.

``object_share[b]`` = (object tokens chosen in block b) / (object tokens), pooled over
every image of the set (a micro average, so an image with a larger object weighs more).
``object_chance[b]`` = (patch tokens chosen in block b) / (patch tokens): what a choice
blind to the object would reach on average. A selector that learnt where the class is
keeps the object far above its chance; the random control sits on it.

An *object token* is a patch of the model's input that the object covers by at least
:data:`OBJECT_COVERAGE` of its pixels, after the evaluation transform (resize of the
short side to ``int(img_size / crop_pct)``, centre crop): the object's mask is drawn
again from the annotation at the generated size, area-resampled like the image and cut
like it, and each patch's covered share is its mean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

#: a patch is an object token when the object covers at least this share of its pixels
OBJECT_COVERAGE = 0.1
#: kinds of :class:`~tosa_bench.methods.base.BlockSelection` that choose tokens (ToMe's "merged" does not)
CHOOSING_KINDS = ("ran", "kept")
ANNOTATIONS = "annotations.json"


def object_tokens(annotation: Mapping[str, Any], generated_size: int, img_size: int, patch_size: int,
                  crop_pct: float = 0.875) -> np.ndarray:
    """Boolean (grid * grid,) mask, raster order, of the patches that the annotated
    object covers by at least :data:`OBJECT_COVERAGE` after the evaluation transform."""
    from PIL import Image

    from tosa_bench.data.synthetic import object_mask

    mask = object_mask(annotation, generated_size).astype(np.float32)
    resized = int(img_size / crop_pct)
    # BOX resampling averages the source pixels under each output pixel: the covered share
    area = np.asarray(Image.fromarray(mask, mode="F").resize((resized, resized), Image.BOX), np.float32)
    top = int(round((resized - img_size) / 2.0))  # torchvision's CenterCrop offset
    crop = area[top:top + img_size, top:top + img_size]
    grid = img_size // patch_size
    coverage = crop[:grid * patch_size, :grid * patch_size].reshape(grid, patch_size, grid, patch_size).mean(axis=(1, 3))
    return coverage.reshape(-1) >= OBJECT_COVERAGE


def find_annotations(data_root: str | Path) -> Path | None:
    """The ``annotations.json`` of a generated set: in ``data_root`` or the folder above
    (the loader may be pointed at ``OUT`` or ``OUT/val``); None for a set without one."""
    root = Path(data_root)
    for folder in (root, root.parent):
        if (folder / ANNOTATIONS).is_file():
            return folder / ANNOTATIONS
    return None


def dataset_object_tokens(samples: Sequence[tuple[str, int]], annotations_path: Path, img_size: int, patch_size: int,
                          crop_pct: float = 0.875) -> Tensor | None:
    """(len(samples), grid * grid) bool: the object tokens of every image of a dataset, in
    dataset order; None when an image has no annotation (the set is not ``shapes``)."""
    meta = json.loads(Path(annotations_path).read_text(encoding="utf-8"))
    if meta.get("kind") != "shapes":
        return None
    base = Path(annotations_path).parent.resolve()
    by_file = {str((base / r["file"]).resolve()): r for r in meta.get("images", [])}
    rows = []
    for path, _label in samples:
        ann = by_file.get(str(Path(path).resolve()))
        if ann is None:
            return None
        rows.append(object_tokens(ann, int(meta["size"]), img_size, patch_size, crop_pct))
    return torch.from_numpy(np.stack(rows)) if rows else None


class ObjectShare:
    """Accumulates, per block, chosen object tokens and chosen patch tokens over batches."""

    def __init__(self) -> None:
        self.hits: dict[int, int] = {}
        self.objects: dict[int, int] = {}
        self.chosen: dict[int, int] = {}
        self.patches: dict[int, int] = {}

    def update(self, selections: Mapping[int, Any], objects: Tensor) -> None:
        """``selections``: a reducer's ``last_selection`` (block -> BlockSelection) for a
        batch; ``objects``: (B, N - 1) bool object tokens of the same images."""
        for block, sel in selections.items():
            if sel.kind not in CHOOSING_KINDS:
                continue
            index = sel.index.to(torch.long).cpu()
            n = objects.shape[1] + 1
            index = index.where(index < n, 0)  # EViT's fused token (position n) is no patch: count it as CLS
            chosen = torch.zeros(index.shape[0], n, dtype=torch.bool)
            chosen.scatter_(1, index, True)
            chosen = chosen[:, 1:]  # patch tokens only (CLS, token 0, always runs)
            b = int(block)
            self.hits[b] = self.hits.get(b, 0) + int((chosen & objects).sum())
            self.objects[b] = self.objects.get(b, 0) + int(objects.sum())
            self.chosen[b] = self.chosen.get(b, 0) + int(chosen.sum())
            self.patches[b] = self.patches.get(b, 0) + chosen.numel()

    def compute(self) -> dict[str, Any]:
        """``object_share`` and ``object_chance`` (block as a string -> share, 0-1; JSON
        keys), and ``object_share_mean`` / ``object_chance_mean`` over those blocks; all
        None where no block chose tokens (dense, ToMe)."""
        blocks = sorted(b for b in self.hits if self.objects[b] > 0)
        if not blocks:
            return {"object_share": None, "object_chance": None, "object_share_mean": None, "object_chance_mean": None}
        share = {str(b): self.hits[b] / self.objects[b] for b in blocks}
        chance = {str(b): self.chosen[b] / self.patches[b] for b in blocks}
        return {"object_share": share, "object_chance": chance,
                "object_share_mean": float(np.mean(list(share.values()))),
                "object_chance_mean": float(np.mean(list(chance.values())))}
