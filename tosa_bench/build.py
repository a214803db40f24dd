"""The one public entry point that builds any model/variant pair."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tosa_bench.errors import OptionError
from tosa_bench.methods import registry
from tosa_bench.models.checkpoint import head_classes, load_backbone, load_method_weights, read_state_dict
from tosa_bench.models.configs import get_config
from tosa_bench.models.selector_file import check_selector_file
from tosa_bench.models.vit import VisionTransformer


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
        variant: a registered method (``tosa_bench.methods.registry.names()``: dense,
            tosa, tome, evit, random, and any registered later).
        checkpoint: timm/DeiT weights (``.pth`` bare or under ``"model"``, or
            ``.safetensors``), loaded tensors-only. Without ``num_classes`` the classifier
            takes the checkpoint's number of classes.
        selector: trained ToSA selector weights (``reducer.selectors.*``).
        num_classes, img_size: override the config (position embeddings are resized).
        **options: the variant's options, as its registry entry declares them
            (``tosa-bench models`` lists them).

    Returns a ``VisionTransformer`` mapping images (B, 3, H, W) to logits; after each
    forward ``model.token_counts`` lists the tokens every block processed.
    Raises ``OptionError`` (naming the argument) for bad names or options, and
    ``CheckpointError`` for weights that do not fit (both in :mod:`tosa_bench.errors`).
    """
    cfg = get_config(name)
    method = registry.get(variant)
    registry.check_option_names(method, options)
    state = read_state_dict(checkpoint) if checkpoint is not None else None
    if num_classes is None and state is not None:
        num_classes = head_classes(state)
    for arg, value in (("num_classes", num_classes), ("img_size", img_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (0 if arg == "num_classes" else 1)):
            raise OptionError(f"{arg} must be a positive integer, got {value!r}")
    if img_size is not None and img_size % cfg.patch_size:
        raise OptionError(f"img_size {img_size} is not a multiple of the patch size {cfg.patch_size}")
    cfg = cfg.with_overrides(num_classes=num_classes, img_size=img_size)
    model = VisionTransformer(cfg, reducer=method.reducer(**options))
    model.name = name
    if state is not None:
        load_backbone(model, state, source=f"checkpoint {checkpoint}")
    if selector is not None:
        if not method.accepts_selector:
            raise OptionError(f"selector: selector weights apply to the {', '.join(registry.selector_takers())} variant, not {variant!r}")
        check_selector_file(selector, model)  # trained for another model or placement: said in one line
        load_method_weights(model, read_state_dict(selector), source=f"selector weights {selector}")
    return model.eval()
