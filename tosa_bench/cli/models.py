"""``tosa-bench models``: what can be built."""

from __future__ import annotations

from tosa_bench.cli.common import app, out


@app.command("models")
def models_command() -> None:
    """List model configs and variants with their options."""
    from rich.table import Table

    from tosa_bench.build import VARIANTS, variant_options
    from tosa_bench.models.configs import MODEL_CONFIGS

    t = Table(title="models")
    for col in ("name", "img", "patch", "dim", "depth", "heads", "classes"):
        t.add_column(col)
    for name, c in MODEL_CONFIGS.items():
        t.add_row(name, str(c.img_size), str(c.patch_size), str(c.embed_dim), str(c.depth), str(c.num_heads), str(c.num_classes))
    out.print(t)
    v = Table(title="variants")
    v.add_column("variant")
    v.add_column("options")
    for name in VARIANTS:
        v.add_row(name, ", ".join(variant_options(name)) or "-")
    out.print(v)
