"""``tosa-bench models``: what can be built."""

from __future__ import annotations

from tosa_bench.cli.common import app, guarded, out


@app.command("models")
@guarded
def models_command() -> None:
    """List model configs and variants with their options.

    Example: tosa-bench models"""
    from rich.table import Table

    from rich.markup import escape

    from tosa_bench.methods import registry
    from tosa_bench.models.configs import MODEL_CONFIGS

    t = Table(title="models")
    for col in ("name", "img", "patch", "dim", "depth", "heads", "classes"):
        t.add_column(col)
    for name, c in MODEL_CONFIGS.items():
        t.add_row(name, str(c.img_size), str(c.patch_size), str(c.embed_dim), str(c.depth), str(c.num_heads), str(c.num_classes))
    out.print(t)
    v = Table(title="variants (tosa_bench/methods/, one file each)", show_lines=True)
    for col in ("variant", "what it does", "--keep means", "options: type = default (allowed)"):
        v.add_column(col)
    for name in registry.names():
        m = registry.get(name)
        opts = "\n".join(f"{o.name}: {o.type} = {o.default!r} ({o.allowed})" for o in m.options) or "-"
        v.add_row(escape(f"{name} ({m.display})"), escape(m.summary), escape(m.keep_meaning), escape(opts))
    out.print(v)
