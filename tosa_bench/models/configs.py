"""Named ViT configurations, kept as data (one dataclass, one table).

The public configs mirror timm's names and shapes so that timm/DeiT checkpoints load
directly (reference: DeiT/timm model cards; dims/heads/depth per ../shared/reference §3).
The ``test_*`` configs are tiny models for the unit tests (2-core CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from tosa_bench.errors import OptionError


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a plain ViT with a class token (DeiT/ViT style, pre-norm blocks).

    Attributes:
        img_size: input side in pixels the position embedding was trained for.
        patch_size: patch side in pixels (non-overlapping patches).
        embed_dim: token width D.
        depth: number of transformer blocks L.
        num_heads: attention heads H (head dim = D / H).
        mlp_ratio: hidden width of the MLP relative to D.
        num_classes: classifier outputs (1000 for ImageNet-1k).
        qkv_bias: whether the qkv projection has a bias (True for DeiT/ViT).
        ln_eps: LayerNorm epsilon (timm ViT uses 1e-6).
        stem: how patches become tokens: ``"patch"`` (timm's one strided p x p
            convolution) or ``"conv"`` (a convolutional stem, :class:`~tosa_bench.models.vit.ConvStem`;
            needs ``patch_size`` and ``embed_dim`` divisible by 4). Either way one token per
            p x p patch, so every method sees the same token grid.
    """

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    stem: str = "patch"

    @property
    def grid(self) -> int:
        """Patches per side at ``img_size``."""
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens at ``img_size``: patches plus the class token."""
        return self.grid**2 + 1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **changes) -> "ViTConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


MODEL_CONFIGS: dict[str, ViTConfig] = {
    "deit_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "deit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "deit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    # The demo's ViT (tosa-bench demo, tosa_bench/experiments/demo.py): 64x64 input, 8x8
    # patches -> 64 patches + CLS; wide enough that token reduction pays in wall time on a
    # 2-core CPU, small enough to learn the generated shapes there in minutes.
    # The convolutional stem: on those shapes it learnt about 1.5x faster per image seen than
    # the single patch convolution (one epoch of 12,000 images: 45% vs 30% validation top-1).
    "demo_vit": ViTConfig(img_size=64, patch_size=8, embed_dim=96, depth=6, num_heads=4, num_classes=10, stem="conv"),
    # Tiny models for tests: 32x32 input, 8x8 patches -> 16 patches + CLS = 17 tokens.
    "test_tiny": ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=6, num_heads=3, num_classes=10),
    # Deeper test model with a 12-block layout so default placements/locations apply as for DeiT.
    "test_deep": ViTConfig(img_size=32, patch_size=4, embed_dim=32, depth=12, num_heads=2, num_classes=10),
}


def get_config(name: str, img_size: int | None = None) -> ViTConfig:
    """The named config, at ``img_size`` when given (None: its own), or an error listing
    the known names."""
    try:
        cfg = MODEL_CONFIGS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_CONFIGS))
        raise OptionError(f"model: unknown model {name!r}; known models: {known}") from None
    return cfg.with_overrides(img_size=img_size)
