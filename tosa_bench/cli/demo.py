"""``tosa-bench demo``: the whole project end to end on generated data, on any machine.

1. data: a ``shapes`` training set and a separate validation set (ImageFolder JPEGs);
2. ``train classifier``: a small ViT (``test_tiny``) from scratch;
3. ``train selector``: ToSA's selectors distilled from it;
4. ``sweep``: dense, ToSA (with the trained selectors), ToMe, EViT and the random control
   at three keeps, with accuracy on the validation set, cost and speed;
5. figures: the sweep's (accuracy against GMACs, speed-up against keep, ...) and both
   training runs' curves; token pictures of two validation images.

Each step is the command a user would run (the same functions), so the demo shows what
every part does and tests that they fit together. On a 2-core CPU it takes about two
minutes. The model is tiny and the data synthetic: the numbers show the mechanics, not
ImageNet results (the 32-pixel ViT reaches only ~15-20% top-1 on the 10 shape classes in
12 epochs), and speed-ups of a model this small are dominated by overheads.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from tosa_bench.cli.common import app, check_output_dir, guarded, out, say
from tosa_bench.errors import RunStateError

MODEL = "test_tiny"
KEEPS = (0.25, 0.5, 0.75)


def _step(n: int, text: str) -> None:
    out.print(f"\n[{n}/6] {text}", highlight=False, markup=False)


@app.command("demo")
@guarded
def demo_command(
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where everything goes (default runs/demo-<time>).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Classifier epochs.")] = 12,
    train_images: Annotated[int, typer.Option("--train-images", min=100, help="Generated training images.")] = 2000,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    quick: Annotated[bool, typer.Option("--quick", help="Smoke test: 1 selector epoch, 100 validation images, minimal timing (speed-ups then noisy), no latency or memory.")] = False,
) -> None:
    """Everything end to end on generated data: train a small ViT and its ToSA selectors,
    sweep ToSA, ToMe, EViT and the random control with accuracy, and draw the figures."""
    from tosa_bench.cli.plot import figures_after_run, write_report
    from tosa_bench.cli.sweep import run_plan
    from tosa_bench.cli.train import classifier_command, selector_command
    from tosa_bench.data.synthetic import make_dataset
    from tosa_bench.measure.spec import resolve_device
    from tosa_bench.methods.registry import builtin_names, get, is_dense
    from tosa_bench.models.configs import get_config
    from tosa_bench.results.figures import plot_training
    from tosa_bench.results.tokens import token_pictures
    from tosa_bench.sweep.session import plan_new
    from tosa_bench.sweep.suite import Suite

    dev = resolve_device(device)
    root = out_dir or Path("runs") / f"demo-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    check_output_dir(root, "--out")
    if root.is_dir() and any(root.iterdir()):
        raise RunStateError(f"--out {root}: not empty; the demo writes into a new or empty directory")
    size = get_config(MODEL).img_size * 3 // 2  # the evaluation crop (0.875) then takes the centre

    _step(1, "generated data (ImageFolder JPEGs)")
    train_dir = make_dataset("shapes", root / "data" / "shapes-train", n=train_images, size=size, seed=1)
    n_val = 100 if quick else 500
    val_dir = make_dataset("shapes", root / "data" / "shapes-val", n=n_val, size=size, seed=2)
    out.print(f"{train_dir} ({train_images} images), {val_dir} ({n_val} images)", highlight=False, markup=False)

    _step(2, f"train classifier: {MODEL} from scratch, {epochs} epochs")
    classifier_command(data=train_dir, model=MODEL, epochs=epochs, batch_size=64, lr=3e-3, min_crop_scale=0.9, device=dev,
                       workers=0, out_dir=root / "classifier")
    checkpoint = root / "classifier" / "checkpoint.safetensors"

    _step(3, "train selector: ToSA's selectors distilled from the classifier")
    selector_command(data=train_dir, model=MODEL, checkpoint=checkpoint, keep=list(KEEPS), epochs=1 if quick else 4, batch_size=64, lr=1e-3,
                     device=dev, workers=0, out_dir=root / "selector")
    selector = root / "selector" / "selectors.safetensors"

    _step(4, f"sweep: every method at keeps {', '.join(map(str, KEEPS))}, accuracy on the validation set")
    suite = Suite().with_overrides(models=(MODEL,), keeps=KEEPS, batch_size=(64,), devices=(dev,), checkpoint={"*": str(checkpoint)},
                                   selector={"*": str(selector)}, imagenet=str(val_dir), time_budget_s=0.2 if quick else 1.0,
                                   pair_budget_s=1.0 if quick else 6.0, pair_min_rounds=4 if quick else 12, num_workers=0,
                                   latency=False if quick else None, memory=False if quick else None)
    plan = plan_new(suite, root / "sweep")
    run_plan(plan, figures=False)
    figures_after_run(root / "sweep")

    _step(5, "training curves")
    for run in ("classifier", "selector"):
        write_report(plot_training(root / run), root / run / "figures")

    _step(6, "token pictures of two validation images")
    images = sorted(val_dir.rglob("*.JPEG"))[:2]
    written = []
    for variant in (n for n in builtin_names() if not is_dense(n) and not get(n).control):  # ToSA, ToMe, EViT
        options = get(variant).natural_options(0.5, get_config(MODEL))
        written += token_pictures(images, MODEL, variant, options, root / "tokens", checkpoint=checkpoint,
                                  selector=selector if get(variant).accepts_selector else None, formats=("png",))
    out.print(f"{len(written)} pictures in {root / 'tokens'}", highlight=False, markup=False)
    say(f"demo done: {root} (sweep table: {root / 'sweep' / 'table.md'}; figures: {root / 'sweep' / 'figures'})", prefix="")
