"""DPT-style monocular depth head on any tosa-bench ViT backbone (dense, ToSA, ToMe, ...).

Why this shape: the point of the benchmark is that ToSA keeps a feature for every patch,
so a dense head can read full token maps from a token-reduced backbone. The head only uses
``backbone.forward_intermediates(images, indices)``, which every variant implements with
all N = 1 + gh*gw tokens in their original order, so the same head (and checkpoint) works
for every method.

Pipeline (after Ranftl et al., "Vision Transformers for Dense Prediction", 2021):

1. **Hooks.** Token maps after four blocks. Default for a 12-block ViT: 0-based
   [2, 5, 8, 11]; in general ``ceil(k * depth / 4) - 1`` for k = 1..4 (evenly spaced,
   ending at the last block): depth 24 -> [5, 11, 17, 23], depth 6 -> [1, 2, 4, 5].
2. **Readout "ignore".** The CLS token is dropped; patch tokens are reshaped to
   (B, D, gh, gw) with gh = H / patch, gw = W / patch.
3. **Reassemble.** Per stage a 1x1 conv to ``stage_channels[i]`` (default D/8, D/4, D/2, D,
   i.e. DPT-Base's 96/192/384/768 for D = 768), then resampling to 4x, 2x, 1x and 0.5x of
   the token grid (transposed conv k=s=4, transposed conv k=s=2, identity, 3x3 conv
   stride 2), then a 3x3 conv to ``features`` channels.
4. **Fusion.** Refine blocks from coarse to fine: ``x = rcu2(x + rcu1(skip))``, then
   bilinear resize to the next stage's size (explicit sizes, so odd grids work).
5. **Output.** 3x3 conv to features/2, bilinear resize to the input (H, W), 3x3 conv,
   ReLU, 1x1 conv to one channel, then ``max_depth * sigmoid``: depth in metres, strictly
   inside (0, max_depth) with the default max_depth = 10 m, the NYU evaluation range, so
   no output needs clamping and the gradient never dies as it can under a ReLU.

Parameter names: the backbone is under ``backbone.`` (timm names below that), the whole
head under ``head.`` (``head.reassemble``, ``head.fusion``, ``head.squeeze``,
``head.output``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tosa_bench.errors import OptionError
from tosa_bench.models.checkpoint import check_fit, read_state_dict

__all__ = [
    "DepthBackbone",
    "default_hooks",
    "DepthModel",
    "DPTHead",
    "save_depth_checkpoint",
    "load_depth_checkpoint",
]


class DepthBackbone(Protocol):
    """What the head needs from a backbone: ``cfg.patch_size``, ``cfg.embed_dim``,
    ``cfg.depth`` and ``forward_intermediates`` returning (B, 1 + gh*gw, D) maps, CLS first
    then patches row-major (true of every tosa-bench ViT variant)."""

    cfg: Any

    def forward_intermediates(self, images: Tensor, indices: Sequence[int]) -> list[Tensor]: ...


def default_hooks(depth: int) -> list[int]:
    """0-based blocks to read for a ``depth``-block ViT: ``ceil(k * depth / 4) - 1``,
    k = 1..4 (12 -> [2, 5, 8, 11]). For depth < 4 some blocks repeat."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return [max(0, math.ceil(k * depth / 4) - 1) for k in range(1, 5)]


class ResidualConvUnit(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with 3x3 convs (no batch norm, as DPT's default,
    so evaluation does not depend on batch statistics)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class RefineBlock(nn.Module):
    """One fusion step: add the (refined) skip map, refine, project, resize to ``size``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels)
        self.unit = ResidualConvUnit(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = self.unit(x)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.project(x)


class Reassemble(nn.Module):
    """Token grid (B, D, gh, gw) -> (B, features, s*gh, s*gw) for one scale s in {4, 2, 1, 0.5}."""

    def __init__(self, embed_dim: int, channels: int, features: int, scale: float) -> None:
        super().__init__()
        self.project = nn.Conv2d(embed_dim, channels, 1)
        if scale == 4:
            self.resample: nn.Module = nn.ConvTranspose2d(channels, channels, 4, stride=4)
        elif scale == 2:
            self.resample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        elif scale == 1:
            self.resample = nn.Identity()
        elif scale == 0.5:
            self.resample = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            raise ValueError(f"unsupported reassemble scale {scale}")
        self.to_features = nn.Conv2d(channels, features, 3, padding=1, bias=False)

    def forward(self, grid: Tensor) -> Tensor:
        return self.to_features(self.resample(self.project(grid)))


class DPTHead(nn.Module):
    """Reassemble + fusion + output of DPT; input four (B, D, gh, gw) grids, output
    (B, H, W) depth in metres (``max_depth * sigmoid``)."""

    SCALES = (4.0, 2.0, 1.0, 0.5)

    def __init__(
        self,
        embed_dim: int,
        features: int = 256,
        stage_channels: Sequence[int] | None = None,
        head_channels: int = 32,
        max_depth: float = 10.0,
    ) -> None:
        super().__init__()
        if stage_channels is None:
            stage_channels = [max(1, embed_dim // 8), max(1, embed_dim // 4), max(1, embed_dim // 2), embed_dim]
        if len(stage_channels) != 4:
            raise ValueError(f"stage_channels needs 4 widths, got {list(stage_channels)}")
        if features < 2:
            raise ValueError(f"features must be >= 2, got {features}")
        if not max_depth > 0:
            raise ValueError(f"max_depth must be positive (metres), got {max_depth}")
        self.max_depth = float(max_depth)
        self.reassemble = nn.ModuleList(
            Reassemble(embed_dim, c, features, s) for c, s in zip(stage_channels, self.SCALES)
        )
        self.fusion = nn.ModuleList(RefineBlock(features) for _ in range(4))
        self.squeeze = nn.Conv2d(features, features // 2, 3, padding=1)  # before the resize to (H, W)
        self.output = nn.Sequential(
            nn.Conv2d(features // 2, head_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_channels, 1, 1),
        )

    def forward(self, grids: Sequence[Tensor], out_size: tuple[int, int]) -> Tensor:
        maps = [r(g) for r, g in zip(self.reassemble, grids)]  # fine (4x) ... coarse (0.5x)
        x = None
        for i in range(3, -1, -1):  # coarse to fine
            # after the finest stage, go to 2x its size (8x the token grid), as DPT does
            size = maps[i - 1].shape[-2:] if i > 0 else (2 * maps[0].shape[-2], 2 * maps[0].shape[-1])
            x = self.fusion[i](maps[i] if x is None else x, None if x is None else maps[i], tuple(size))
        x = F.interpolate(self.squeeze(x), size=out_size, mode="bilinear", align_corners=False)
        x = self.output(x)
        return self.max_depth * torch.sigmoid(x.squeeze(1))


class DepthModel(nn.Module):
    """ViT backbone + DPT head: forward(images (B, 3, H, W)) -> depth (B, H, W) in metres.

    Args:
        backbone: any tosa-bench ViT (see :class:`DepthBackbone`); H and W must be
            multiples of its patch size.
        features: fusion width (DPT uses 256; keep small for tests).
        hooks: four 0-based block indices to read; default :func:`default_hooks`.
        max_depth: output upper bound in metres (output = max_depth * sigmoid).
        stage_channels: per-stage reassemble widths; default D/8, D/4, D/2, D.
        head_channels: width of the last hidden conv (DPT: 32).
    """

    def __init__(
        self,
        backbone: nn.Module,
        features: int = 256,
        hooks: Sequence[int] | None = None,
        max_depth: float = 10.0,
        stage_channels: Sequence[int] | None = None,
        head_channels: int = 32,
    ) -> None:
        super().__init__()
        cfg = backbone.cfg
        depth = int(cfg.depth)
        hooks = list(default_hooks(depth) if hooks is None else hooks)
        if len(hooks) != 4:
            raise ValueError(f"hooks: need 4 block indices, got {hooks}")
        for h in hooks:
            if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < depth:
                raise ValueError(f"hooks: block index {h!r} out of range [0, {depth - 1}]")
        self.backbone = backbone
        self.hooks = hooks
        self.patch_size = int(cfg.patch_size)
        self.max_depth = float(max_depth)
        self.head = DPTHead(int(cfg.embed_dim), features, stage_channels, head_channels, max_depth)

    def token_grids(self, images: Tensor) -> list[Tensor]:
        """The four hooked token maps as (B, D, gh, gw) grids, CLS dropped ("ignore")."""
        B, _, H, W = images.shape
        p = self.patch_size
        if H % p or W % p:
            raise OptionError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        gh, gw = H // p, W // p
        unique = sorted(set(self.hooks))  # a shallow backbone may repeat a block
        maps = dict(zip(unique, self.backbone.forward_intermediates(images, unique)))
        grids = []
        for h in self.hooks:
            tokens = maps[h]
            if tokens.shape[1] != 1 + gh * gw:
                raise ValueError(
                    f"block {h} returned {tokens.shape[1]} tokens, expected 1 + {gh}x{gw}; "
                    "the backbone must return every token in its original position"
                )
            grids.append(tokens[:, 1:].transpose(1, 2).reshape(B, tokens.shape[-1], gh, gw))
        return grids

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.token_grids(images), (images.shape[-2], images.shape[-1]))


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------
def save_depth_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Save ``model.state_dict()`` bare, as .safetensors (by suffix) or torch .pth, without
    the backbone's classifier (``backbone.head.*``, unused by a depth model): the one
    depth checkpoint format ``eval --nyu`` and ``sweep --nyu`` both read."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("backbone.head.")}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


def load_depth_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a depth checkpoint (``backbone.*`` + ``head.*``) into ``model`` strictly (the
    backbone's classifier ``backbone.head.*`` aside: it may be there or not, never used).

    Read tensors-only like backbone checkpoints (``.safetensors``, or a torch file with
    ``weights_only=True``, bare or under ``"model"``/``"state_dict"``, ``module.``
    stripped); any missing or unexpected key or shape difference raises
    ``CheckpointError`` (a ``ValueError``) naming the first of each.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.head.")}
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("backbone.head.")}
    check_fit(own, state, f"depth checkpoint {path} does not fit the depth model")
    model.load_state_dict(state, strict=False)  # every key but the unused classifier checked above
    return model
