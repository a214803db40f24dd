"""Checks of the inputs that apply to a whole sweep, done before anything is measured.

Why up front: a checkpoint that does not fit, a selector file for another placement or a
dataset path with a typo is the same mistake for every point; finding it at point 37 of
a 150-point GPU sweep wastes the run. So every such input is opened and checked once:

- ``checkpoint``: read once per file, then each model that uses it is built (CPU, dense)
  and the weights loaded into it (key and shape fit, the position embedding resampled);
- ``selector``: read once, loaded into a ToSA model of every (model, options) that uses it;
- ``imagenet``: the folder resolved and opened once per (input size, classes) the sweep
  needs (class count checked against the model's head), its first image decoded;
- ``nyu``: resolved and opened, its first item read; ``depth_checkpoint``: read, the DPT
  head shape inferred, and loaded into a DepthModel on each model's backbone.

Each failure raises a :class:`~tosa_bench.errors.UserInputError` (CheckpointError,
DatasetError, OptionError) with one line naming the input; the sweep stops at once.
"""

from __future__ import annotations

from typing import Any, Sequence

from tosa_bench.data.loader import default_workers
from tosa_bench.errors import DatasetError, OptionError
from tosa_bench.sweep.accuracy import AccuracyPlan
from tosa_bench.sweep.grid import GridPoint, weights_for
from tosa_bench.sweep.suite import Suite


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_sizes(points: Sequence[GridPoint]) -> None:
    """Refuse, before anything is built, a point whose forward pass cannot fit in the
    memory of its device (an ``--img-size`` far too large: tokens and attention maps
    estimated by :func:`tosa_bench.measure.fit.check_fits`)."""
    from tosa_bench.measure.fit import check_fits
    from tosa_bench.measure.spec import resolve_device
    from tosa_bench.models.configs import get_config

    seen: set[tuple] = set()
    for gp in points:
        p = gp.point
        key = (p.model, p.img_size, p.batch_size, p.dtype, p.device)
        if key not in seen:
            seen.add(key)
            side = get_config(p.model, p.img_size).img_size
            check_fits(p.model, side, side, p.batch_size, p.dtype, resolve_device(p.device))


def validate_inputs(suite: Suite, points: Sequence[GridPoint]) -> AccuracyPlan:
    """Check every whole-run input of ``suite`` for the models in ``points``; return the
    accuracy plan (datasets opened, depth weights read). Raises a UserInputError on the
    first bad input."""
    from tosa_bench.build import build_model
    from tosa_bench.models.checkpoint import head_classes, load_backbone, load_method_weights, read_state_dict

    _check_sizes(points)
    models = list(dict.fromkeys(gp.point.model for gp in points))
    num_classes: dict[str, int] = {}
    states: dict[str, dict] = {}
    for model in models:
        path = weights_for(dict(suite.checkpoint), model)
        if path is None:
            num_classes[model] = build_model(model, img_size=suite.img_size).cfg.num_classes
            continue
        if path not in states:
            states[path] = read_state_dict(path)
        state = states[path]
        net = build_model(model, img_size=suite.img_size, num_classes=head_classes(state))
        load_backbone(net, state, source=f"checkpoint {path}")
        num_classes[model] = net.cfg.num_classes
    states.clear()

    selectors: dict[str, dict] = {}
    seen: set[tuple[str, str]] = set()
    for gp in points:
        p = gp.point
        if p.selector is None:
            continue
        key = (p.model, repr(sorted(p.options.items())))
        if key in seen:
            continue
        seen.add(key)
        if p.selector not in selectors:
            selectors[p.selector] = read_state_dict(p.selector)
        net = build_model(p.model, p.variant, img_size=p.img_size, **p.options)
        load_method_weights(net, selectors[p.selector], source=f"selector weights {p.selector}")
    selectors.clear()

    plan = AccuracyPlan(limit=suite.limit, eval_batch_size=suite.eval_batch_size, num_workers=suite.num_workers if suite.num_workers is not None else default_workers(),
                        depth_input=suite.depth_input)
    if suite.imagenet is not None:
        from tosa_bench.data.imagenet import Unreadable, build_imagenet
        from tosa_bench.models.configs import get_config

        plan.imagenet_path = suite.imagenet
        for model in models:
            key = (get_config(model, suite.img_size).img_size, num_classes[model])
            if key in plan.imagenet:
                continue
            ds = build_imagenet(suite.imagenet, img_size=key[0], limit=suite.limit, expected_classes=key[1])
            if len(ds) == 0:
                raise DatasetError(f"imagenet: no images found under {suite.imagenet}")
            first = ds[0]
            if isinstance(first, Unreadable):
                raise DatasetError(f"imagenet: cannot decode the first image {first.path} ({first.reason})")
            plan.imagenet[key] = ds
            plan.objects[key] = _object_tokens(ds, suite.imagenet, key[0], get_config(model).patch_size)
    if suite.depth_checkpoint and suite.nyu is None:
        raise OptionError("depth-checkpoint: depth weights given but no --nyu dataset to evaluate them on")
    if suite.nyu is not None:
        from tosa_bench.data.nyu import build_nyu
        from tosa_bench.tasks.accuracy import depth_model_for, read_depth_weights

        plan.nyu_path = suite.nyu
        try:
            plan.nyu = build_nyu(suite.nyu, limit=suite.limit)
            if len(plan.nyu) == 0:
                raise DatasetError("no test images")
            plan.nyu[0]
        except Exception as err:  # h5py/scipy/PIL errors: the dataset does not open
            raise DatasetError(f"nyu: {suite.nyu}: {_first_line(err)}") from None
        read: dict[str, object] = {}
        for model in models:
            path = weights_for(dict(suite.depth_checkpoint), model)
            if path is None:
                continue
            if path not in read:
                read[path] = read_depth_weights(path)
            weights = read[path]
            depth_model_for(build_model(model, img_size=suite.img_size), weights)  # raises if it does not fit
            plan.depth[model] = weights  # type: ignore[assignment]
    return plan


def _object_tokens(dataset: Any, data_root: str, img_size: int, patch_size: int) -> Any:
    """The object tokens of every image of a generated ``shapes`` set (for the
    ``object_share`` fields), or None for data without object annotations."""
    from tosa_bench.tasks.object_tokens import dataset_object_tokens, find_annotations

    found = find_annotations(data_root)
    if found is None:
        return None
    return dataset_object_tokens(dataset.samples, found, img_size, patch_size, getattr(dataset, "crop_pct", 0.875))
