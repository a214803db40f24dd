"""Accuracy of one sweep point: ImageNet-style top-1/top-5 and NYU-style depth metrics.

Accuracy and speed are separate measurements of the same configuration: the model is
built again from the point (same weights: checkpoint, selectors) and evaluated with the
loops of :mod:`tosa_bench.tasks.evaluate`, which never time anything.

Fields every record gets (None where not measured, ``accuracy_reason`` says why):

- classification (``--imagenet DIR``): ``top1``, ``top5`` (percent), ``n_images``
  (scored), ``n_unreadable`` (files that could not be decoded, skipped),
  ``n_empty_classes`` (class folders without an image);
- depth (``--nyu PATH`` and ``--depth-checkpoint``): ``delta1``, ``delta2``, ``delta3``
  (share of pixels, 0-1), ``absrel``, ``sqrel``, ``rmse`` (m), ``rmse_log``, ``log10``,
  ``silog``, ``depth_n_images``, ``depth_n_skipped``, ``depth_n_unreadable``,
  ``depth_n_nonfinite`` (NaN/inf predicted pixels: the metrics are then None);
- on a generated ``shapes`` set (it knows each object's place): ``object_share`` and
  ``object_chance`` (block -> share of the object's patch tokens the method let run or
  kept, and of all patch tokens), ``object_share_mean`` / ``object_chance_mean`` over
  those blocks (:mod:`tosa_bench.tasks.object_tokens`; None for dense and ToMe, which
  choose no tokens, and on other data);
- ``weights``: ``"checkpoint"`` or ``"random"`` (no checkpoint: accuracy is still
  measured, and flagged in ``accuracy_reason``); ``eval_batch_size``, ``eval_limit``.

``accuracy_reason`` is None only when every accuracy column was measured with trained
weights; otherwise it lists the reasons, e.g. "no --imagenet given; no --nyu given".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from tosa_bench.measure.spec import Point
from tosa_bench.tasks.metrics import DEPTH_METRIC_NAMES

if TYPE_CHECKING:  # the datasets and depth code (torchvision: seconds to import) load only when used
    from tosa_bench.tasks.accuracy import DepthWeights

CLASSIFICATION_FIELDS = ("top1", "top5", "n_images", "n_unreadable", "n_empty_classes")
OBJECT_FIELDS = ("object_share", "object_chance", "object_share_mean", "object_chance_mean")
DEPTH_FIELDS = (*DEPTH_METRIC_NAMES, "depth_n_images", "depth_n_skipped", "depth_n_unreadable", "depth_n_nonfinite")
ACCURACY_FIELDS = (*CLASSIFICATION_FIELDS, *OBJECT_FIELDS, *DEPTH_FIELDS, "weights", "accuracy_reason", "eval_batch_size", "eval_limit")


@dataclass
class AccuracyPlan:
    """What the whole sweep evaluates accuracy on (built and checked by
    :func:`tosa_bench.sweep.inputs.validate_inputs` before anything is measured).

    ``imagenet``: (img_size, num_classes) -> dataset; ``nyu``: the NYU dataset;
    ``depth``: model name -> depth weights; ``imagenet_path`` / ``nyu_path`` for reasons;
    ``objects``: the same keys as ``imagenet`` -> (images, patches) bool object tokens of
    a generated ``shapes`` set (absent for other data).
    """

    imagenet_path: str | None = None
    imagenet: dict[tuple[int, int], Any] = field(default_factory=dict)
    nyu_path: str | None = None
    nyu: Any = None
    depth: dict[str, DepthWeights] = field(default_factory=dict)
    limit: int | None = None
    eval_batch_size: int | None = None
    num_workers: int = 0
    depth_input: tuple[int, int] | None = None
    objects: dict[tuple[int, int], Any] = field(default_factory=dict)

    def evaluate(self, point: Point, stage: Callable[[str], None] = lambda _s: None) -> dict[str, Any]:
        """Accuracy fields for ``point`` (module docstring)."""
        out: dict[str, Any] = {k: None for k in ACCURACY_FIELDS}
        reasons: list[str] = []
        batch = self.eval_batch_size or point.batch_size
        out.update(weights="checkpoint" if point.checkpoint else "random", eval_batch_size=batch, eval_limit=self.limit)
        if self.imagenet_path is None:
            reasons.append("no --imagenet given")
        else:
            stage("top-1")
            out.update(self._classify(point, batch))
            if point.checkpoint is None:
                reasons.append("no checkpoint: random weights")
        if self.nyu_path is None:
            reasons.append("no --nyu given")
        elif point.model not in self.depth:
            reasons.append("no --depth-checkpoint given: depth not measured")
        else:
            stage("depth")
            out.update(self._depth(point, batch))
            if out.get("depth_n_nonfinite"):
                reasons.append(f"depth: NaN or inf predicted for {out['depth_n_nonfinite']} pixels, metrics not computed")
        out["accuracy_reason"] = "; ".join(reasons) or None
        return out

    def _classify(self, point: Point, batch: int) -> dict[str, Any]:
        from tosa_bench.data.imagenet import collate_skip_bad
        from tosa_bench.measure.spec import build_point_model
        from tosa_bench.tasks.evaluate import evaluate_classification

        from tosa_bench.tasks.object_tokens import ObjectShare

        model = build_point_model(point)
        key = (model.cfg.img_size, model.cfg.num_classes)
        objects, share = self.objects.get(key), ObjectShare()

        def observe(net: Any, positions: list[int]) -> None:
            share.update(net.reducer.last_selection, objects[positions])

        res = evaluate_classification(model, self.imagenet[key], batch, point.device, point.dtype, num_workers=self.num_workers,
                                      collate_fn=collate_skip_bad, observer=observe if objects is not None else None)
        res["n_empty_classes"] = len(getattr(self.imagenet[key], "empty_classes", ()))
        return {**{k: res[k] for k in CLASSIFICATION_FIELDS}, **share.compute()}

    def _depth(self, point: Point, batch: int) -> dict[str, Any]:
        from tosa_bench.measure.spec import build_point_model
        from tosa_bench.tasks.accuracy import depth_model_for
        from tosa_bench.tasks.evaluate import evaluate_depth

        model = depth_model_for(build_point_model(point), self.depth[point.model])
        res = evaluate_depth(model, self.nyu, batch, point.device, point.dtype, input_size=self.depth_input,
                             num_workers=self.num_workers)
        out = {k: res[k] for k in DEPTH_METRIC_NAMES}
        out.update(depth_n_images=res["n_images"], depth_n_skipped=res.get("n_skipped"), depth_n_unreadable=res["n_unreadable"],
                   depth_n_nonfinite=res.get("n_nonfinite_pixels"))
        return out
