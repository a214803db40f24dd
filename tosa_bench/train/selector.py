"""Distil ToSA's token selectors from the dense model (``tosa-bench train selector``).

The backbone is frozen and runs densely as the teacher. The selector before block ``l``
reads the teacher's attention logits of block ``l - 1`` (the map it reads at inference
when block ``l - 1`` runs densely) and learns to predict block ``l``'s real attention:

- ``kl`` (default): KL(teacher || selector) over the keys of every query row,
  sum_j p_j (log p_j - log q_j), averaged over images, heads and rows, then over the
  selectors (p: the teacher's softmax attention, q: the selector's);
- ``mse``: the mean squared difference of the two attention distributions.

Under the ``cls`` importance rule a selector only ever sees and predicts the CLS row, so
it is trained on that row alone.

Top-k recall, reported every epoch at each ``--keep``: the share of the teacher's top-k
patch tokens (by the attention they receive, under the selector's importance rule) that
the selector's top-k also holds, averaged over images and selectors; chance is
k / (N - 1), the recall of a random choice of k of the N - 1 patches.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from tosa_bench.data.imagenet import Batch, collate_skip_bad
from tosa_bench.errors import OptionError
from tosa_bench.methods.base import kept_count

LOSSES = ("kl", "mse")


def importance(log_attention: Tensor) -> Tensor:
    """Attention each key receives, summed over heads and query rows: (B, H, R, N) log
    attention -> (B, N) (a sum ranks like the mean)."""
    return log_attention.exp().sum(dim=(1, 2))


def topk_recall(teacher: Tensor, student: Tensor, k: int) -> Tensor:
    """Per image, the share of the teacher's top-``k`` patch tokens (CLS, token 0, left
    out) that are also in the student's top-``k``: (B, N) scores -> (B,)."""
    t = teacher[:, 1:].topk(k, dim=1).indices
    s = student[:, 1:].topk(k, dim=1).indices
    hits = (t.unsqueeze(2) == s.unsqueeze(1)).any(dim=2).sum(dim=1)
    return hits.to(torch.float32) / k


def distillation_loss(student_log: Tensor, teacher_logits: Tensor, kind: str = "kl") -> Tensor:
    """The loss of one selector: ``student_log`` its log attention (B, H, R, N),
    ``teacher_logits`` the teacher's logits of the same rows (module docstring)."""
    teacher_log = F.log_softmax(teacher_logits.float(), dim=-1)
    if kind == "kl":
        return (teacher_log.exp() * (teacher_log - student_log.float())).sum(dim=-1).mean()
    if kind == "mse":
        return (teacher_log.exp() - student_log.float().exp()).pow(2).mean()
    raise OptionError(f"--loss: expected one of {', '.join(LOSSES)}, got {kind!r}")


class SelectorStudent(nn.Module):
    """The trainable part (the selectors of a ToSA model) and its forward on one batch:
    teacher maps in, (loss, recall metrics) out. The teacher (the whole dense model) is
    held outside the module tree, so checkpoints and DDP see the selectors only."""

    def __init__(self, model: nn.Module, keeps: Sequence[float], loss: str = "kl") -> None:
        super().__init__()
        reducer = model.reducer
        if not hasattr(reducer, "selectors") or not len(reducer.selectors):
            raise OptionError(f"train selector: the {reducer.variant} variant has no selectors to train")
        self.selectors = reducer.selectors
        self.placement = tuple(reducer.placement)
        self.cls_only = reducer.importance == "cls"
        self.keeps = tuple(keeps)
        if loss not in LOSSES:
            raise OptionError(f"--loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss = loss
        self._teacher = (model,)  # a tuple: not registered as a submodule
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.selectors.parameters():
            p.requires_grad_(True)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, float]]:
        teacher = self.teacher
        teacher.eval()
        wanted = sorted({b for i in self.placement for b in (i - 1, i)})
        with torch.no_grad():
            maps = teacher.attention_logits(images, wanted)
        losses, metrics = [], {f"recall@{k:g}": 0.0 for k in self.keeps}
        for i in self.placement:
            before, target = maps[i - 1], maps[i]
            if self.cls_only:
                before, target = before[:, :, :1], target[:, :, :1]
            pred = F.log_softmax(self.selectors[str(i)](before), dim=-1)
            losses.append(distillation_loss(pred, target, self.loss))
            with torch.no_grad():
                t_imp, s_imp = importance(F.log_softmax(target.float(), dim=-1)), importance(pred.detach().float())
                for keep in self.keeps:
                    k = kept_count(keep, t_imp.shape[1] - 1)
                    metrics[f"recall@{keep:g}"] += float(topk_recall(t_imp, s_imp, k).mean()) / len(self.placement)
        return torch.stack(losses).mean(), metrics


class SelectorTask:
    """Selector distillation as a :class:`~tosa_bench.train.loop.Task`."""

    def __init__(self, model: nn.Module, dataset: Dataset, keeps: Sequence[float], loss: str, device: torch.device,
                 meta: dict[str, str]) -> None:
        self.model = model.to(device)
        self.student = SelectorStudent(model, keeps, loss)
        self.dataset = dataset
        self.keeps = tuple(keeps)
        self.num_tokens = model.cfg.num_tokens
        self.meta = meta

    def collate(self, items: list[Any]) -> Batch:
        return collate_skip_bad(items)

    def batch_inputs(self, batch: Batch, device: torch.device) -> tuple[tuple[Any, ...], int]:
        self.unreadable = getattr(self, "unreadable", 0) + len(batch.unreadable)
        return (batch.images.to(device, non_blocking=True),), int(batch.images.shape[0]) if batch.images.ndim == 4 else 0

    def epoch_metrics(self, sums: dict[str, float], images: int) -> dict[str, float]:
        out = {"loss": sums.get("loss", math.nan) / max(images, 1)}
        for keep in self.keeps:
            key = f"recall@{keep:g}"
            out[key] = sums.get(key, math.nan) / max(images, 1)
            out[f"chance@{keep:g}"] = kept_count(keep, self.num_tokens - 1) / (self.num_tokens - 1)
        return out

    def export(self, out_dir: Path, history: list[dict[str, Any]]) -> Path:
        from tosa_bench.models.selector_file import save_selectors

        last = history[-1] if history else {}
        meta = {**self.meta, "epochs": str(len(history)), "final_loss": f"{last.get('loss', math.nan):.6g}",
                "recall": ", ".join(f"{k}={last[k]:.4f}" for k in last if k.startswith("recall@"))}
        path = out_dir / "selectors.safetensors"
        save_selectors(path, self.model, meta)
        return path
