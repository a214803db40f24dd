"""The one public entry point that builds any model/variant pair."""

from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn

from tosa_bench.methods.base import TokenReducer
from tosa_bench.methods.evit import EViTReducer
from tosa_bench.methods.tome import ToMeReducer
from tosa_bench.methods.tosa import RandomReducer, ToSAReducer
from tosa_bench.models.checkpoint import head_classes, load_backbone, load_method_weights, read_state_dict
from tosa_bench.models.configs import get_config
from tosa_bench.models.vit import VisionTransformer

VARIANTS: dict[str, type[TokenReducer]] = {
    "dense": TokenReducer,
    "tosa": ToSAReducer,
    "tome": ToMeReducer,
    "evit": EViTReducer,
    "random": RandomReducer,
}


def variant_options(variant: str) -> list[str]:
    """Option names a variant accepts (its reducer's keyword arguments)."""
    return [p for p in inspect.signature(VARIANTS[variant].__init__).parameters if p != "self"]


def build_model(
    name: str,
    variant: str = "dense",
    *,
    checkpoint: str | Path | None = None,
    selector: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    **options,
) -> nn.Module:
    """Build ``name`` (a key of ``MODEL_CONFIGS``) with a token-reduction ``variant``.

    Args:
        name: model config, e.g. ``"deit_small_patch16_224"``.
        variant: ``dense`` | ``tosa`` | ``tome`` | ``evit`` | ``random``.
        checkpoint: timm/DeiT weights (``.pth`` bare or under ``"model"``, or
            ``.safetensors``), loaded tensors-only. Without ``num_classes`` the classifier
            takes the checkpoint's number of classes.
        selector: trained ToSA selector weights (``reducer.selectors.*``).
        num_classes, img_size: override the config (position embeddings are resized).
        **options: the variant's options: tosa ``keep``, ``placement`` (also
            ``importance``, ``selector_hidden``, ``selector_kernel``); tome ``r``,
            ``prop_attn`` (also ``schedule``); evit ``keep``, ``locations``, ``fuse``;
            random ``keep``, ``placement``, ``seed``.

    Returns a ``VisionTransformer`` mapping images (B, 3, H, W) to logits; after each
    forward ``model.token_counts`` lists the tokens every block processed.
    Raises ``ValueError`` (naming the argument) for bad names or options, and
    ``CheckpointError`` (a ``ValueError``) for weights that do not fit.
    """
    cfg = get_config(name)
    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    allowed = variant_options(variant)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"{unknown[0]}: not an option of the {variant} variant (options: {', '.join(allowed) or 'none'})")
    state = read_state_dict(checkpoint) if checkpoint is not None else None
    if num_classes is None and state is not None:
        num_classes = head_classes(state)
    for arg, value in (("num_classes", num_classes), ("img_size", img_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (0 if arg == "num_classes" else 1)):
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    if img_size is not None and img_size % cfg.patch_size:
        raise ValueError(f"img_size {img_size} is not a multiple of the patch size {cfg.patch_size}")
    cfg = cfg.with_overrides(num_classes=num_classes, img_size=img_size)
    model = VisionTransformer(cfg, reducer=VARIANTS[variant](**options))
    model.name = name
    if state is not None:
        load_backbone(model, state, source=f"checkpoint {checkpoint}")
    if selector is not None:
        if variant != "tosa":
            raise ValueError(f"selector: selector weights apply to the tosa variant, not {variant!r}")
        load_method_weights(model, read_state_dict(selector), source=f"selector weights {selector}")
    return model.eval()
