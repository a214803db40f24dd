"""Operation counting with fvcore, in MULTIPLY-ACCUMULATES (MACs).

Unit and conventions
--------------------
fvcore's native unit is one fused multiply-add = 1 ("flop" in its docs, MAC here). We
report MACs by that name and GFLOPs only as ``2 x MACs`` (see :class:`MacCount`); never an
unlabeled "FLOPs". The published DeiT figures 1.26 / 4.61 / 17.58 GMACs (tiny / small /
base @224) are fvcore totals under exactly these conventions, attention matmuls included.

What is counted (per forward, whole batch):

* fvcore's own handles, unchanged: ``linear`` / ``addmm`` / ``matmul`` / ``mm`` / ``bmm`` /
  ``einsum`` (one MAC per multiply of the product; biases not counted), ``_convolution``
  (any dimensionality, groups handled by the weight shape; 1-D convolutions included:
  ``B * C_out * C_in/groups * k * L_out``), and ``layer_norm`` / ``group_norm`` at
  **5 per element with an affine transform (4 without)**, fvcore's rough estimate, kept
  because the published DeiT GMACs include it.
* ``aten::scaled_dot_product_attention`` (fvcore sees it as unsupported, which silently
  drops 12 x 2 x 197^2 x D MACs from a DeiT): with q (*batch, Nq, d), k (*batch, Nk, d),
  v (*batch, Nk, dv) and the broadcast batch size Bb = prod(batch):
  ``Bb * Nq * Nk * (d + dv)`` MACs under the operator name ``scaled_dot_product_attention``
  (q k^T plus attention @ v), **plus** ``Bb * Nq * Nk`` under ``softmax`` for the softmax
  the kernel runs internally. So a fused-attention model and the same model written as
  ``softmax(q k^T) @ v`` give the same total and the same ``softmax`` entry. A causal
  mask is counted as full attention (an upper bound); dropout is not counted.
* Elementwise nonlinearities that involve a transcendental function count **1 MAC-
  equivalent per element**: ``softmax`` / ``_softmax`` / ``log_softmax`` (per input element)
  and ``gelu`` (per element).

What is *not* counted, and is reported instead in :attr:`MacCount.uncounted_ops`:
cheap elementwise arithmetic (``add``, ``sub``, ``mul``, ``div``, ``relu``, ``clamp``,
comparisons, ``masked_fill``, ...), reductions (``mean``, ``sum``, ``max``), and
data-dependent selection / indexing (``topk``, ``sort``, ``argsort``, ``gather``,
``scatter``, ``scatter_reduce``, ``index``, ``index_select``, ...). fvcore itself silently
ignores several of those (``gather``, ``index``, ``max``, ``relu``, ``clamp``, ...); we
narrow its ignore list to operators that move or create memory without arithmetic
(views, reshapes, permutes, ``cat``, ``stack``, copies, constructors), so every other
operator without a handle shows up in ``uncounted_ops`` (number of occurrences, not
elements). Leaving residual adds and the attention scale uncounted is also what keeps
the totals comparable with the published DeiT figures.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Counter, Sequence

import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    # fvcore.nn scripts its focal loss at import; recent torch releases call torch.jit.script
    # deprecated. Harmless here, so keep it out of every run's output.
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.script.*deprecated")
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = [
    "MacCount",
    "count_macs",
    "sdpa_mac_handle",
    "per_element_handle",
    "EXTRA_HANDLES",
    "ZERO_COST_OPS",
]

# Operators that only re-arrange, copy or create memory: no arithmetic, safe to ignore.
# (fvcore's default ignore list also contains gather/index/max/relu/clamp/comparisons,
# which we want to see reported rather than silently dropped.)
ZERO_COST_OPS: frozenset[str] = frozenset(
    "aten::" + op
    for op in (
        "Int ScalarImplicit size numel dim arange empty empty_like new_empty new_full "
        "new_zeros new_ones ones ones_like zeros zeros_like full full_like "
        "view view_as reshape reshape_as flatten unflatten permute transpose t "
        "expand expand_as squeeze unsqueeze unsqueeze_ select slice narrow split "
        "split_with_sizes chunk unbind unsafe_split unsafe_chunk cat concat stack "
        "contiguous clone copy_ detach detach_ to type_as alias lift_fresh "
        "dropout feature_dropout alpha_dropout"
    ).split()
)


def _shape(value: Any) -> list[int] | None:
    """Complete static shape of a traced value, or None if the trace did not record one."""
    return get_shape(value)


def sdpa_mac_handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore handle for ``aten::scaled_dot_product_attention``.

    Returns ``{"scaled_dot_product_attention": Bb*Nq*Nk*(d+dv), "softmax": Bb*Nq*Nk}``
    where Bb is the product of the broadcast leading (batch, head) dimensions. The output
    shape (*batch, Nq, dv) gives Bb, Nq and dv when traced; otherwise the leading dims of
    q, k, v are broadcast (with grouped-query attention, the query's head count is used).
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    if q is None or k is None or v is None:
        raise ValueError("scaled_dot_product_attention: the trace recorded no shapes for q, k, v")
    d, nk = q[-1], k[-2]
    out = _shape(outputs[0]) if outputs else None
    if out is not None:
        batch, nq, dv = out[:-2], out[-2], out[-1]
    else:
        nq, dv = q[-2], v[-1]
        try:
            batch = list(torch.broadcast_shapes(tuple(q[:-2]), tuple(k[:-2]), tuple(v[:-2])))
        except RuntimeError:  # grouped-query attention: kv heads are repeated to q's
            batch = q[:-2]
    bb = math.prod(batch)
    return Counter({"scaled_dot_product_attention": bb * nq * nk * (d + dv), "softmax": bb * nq * nk})


def per_element_handle(name: str, of: str = "input") -> Any:
    """Handle counting 1 MAC-equivalent per element of the first input (``of="input"``)
    or of the first output (``of="output"``), reported under operator ``name``."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
        shape = _shape(inputs[0] if of == "input" else outputs[0])
        if shape is None:
            raise ValueError(f"{name}: the trace recorded no shape")
        return Counter({name: math.prod(shape)})

    return handle


EXTRA_HANDLES: dict[str, Any] = {
    "aten::scaled_dot_product_attention": sdpa_mac_handle,
    "aten::softmax": per_element_handle("softmax"),
    "aten::_softmax": per_element_handle("softmax"),
    "aten::log_softmax": per_element_handle("log_softmax"),
    "aten::_log_softmax": per_element_handle("log_softmax"),
    "aten::gelu": per_element_handle("gelu"),
    "aten::gelu_": per_element_handle("gelu"),
}


class _MacAnalysis(FlopCountAnalysis):
    """FlopCountAnalysis with our extra handles and a narrower ignore list.

    fvcore (0.1.5.post20221221, its last release) has no public way to un-ignore an op,
    so the ignore set ``_ignored_ops`` is replaced here; a test guards this.
    """

    def __init__(self, model: nn.Module, inputs: tuple[Any, ...]) -> None:
        super().__init__(model, inputs)
        self._ignored_ops = set(ZERO_COST_OPS)
        self.set_op_handle(**EXTRA_HANDLES)
        self.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        self.tracer_warnings("none")


@dataclass(frozen=True)
class MacCount:
    """Result of :func:`count_macs`.

    total: MACs of one forward over the whole input batch (int).
    by_module: MACs per module name (``""`` is the whole model; e.g. ``blocks.3``,
        ``blocks.3.attn``, ``reducer.selectors.5``). A module's count includes every op
        run inside any of its named submodules (fvcore's "owner" mode).
    by_operator: MACs per operator (``linear``, ``conv``, ``matmul``, ``layer_norm``,
        ``scaled_dot_product_attention``, ``softmax``, ``gelu``, ...).
    uncounted_ops: operators seen in the trace but counted as 0 MACs, mapped to how many
        times they occurred (e.g. ``{"aten::add": 13, "aten::topk": 2}``).
    """

    total: int
    by_module: dict[str, int]
    by_operator: dict[str, int]
    uncounted_ops: dict[str, int]

    @property
    def gmacs(self) -> float:
        """Total in giga multiply-accumulates (1e9 MACs)."""
        return self.total / 1e9

    @property
    def gflops(self) -> float:
        """Total in GFLOPs, counting a MAC as two floating-point operations: 2 x MACs / 1e9."""
        return 2 * self.total / 1e9

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form with explicit unit names."""
        return {
            "macs": self.total,
            "gmacs": self.gmacs,
            "gflops": self.gflops,
            "macs_by_module": dict(self.by_module),
            "macs_by_operator": dict(self.by_operator),
            "uncounted_ops": dict(self.uncounted_ops),
        }


def _as_int(x: float) -> int:
    return int(round(x))


def count_macs(model: nn.Module, inputs: Tensor | Sequence[Tensor]) -> MacCount:
    """Count the MACs of ``model(*inputs)`` with fvcore plus our handles (module docstring).

    The model is traced once in eval mode under ``torch.no_grad()``; its previous
    train/eval mode is restored afterwards. ``inputs`` is one tensor or a sequence of
    tensors (positional arguments). Counts cover the whole batch given.
    """
    args = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    was_training = model.training
    model.eval()
    try:
        analysis = _MacAnalysis(model, args)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
            total = analysis.total()
            by_module = analysis.by_module()
            by_operator = analysis.by_operator()
            uncounted = analysis.unsupported_ops()
    finally:
        model.train(was_training)
    return MacCount(
        total=_as_int(total),
        by_module={k: _as_int(v) for k, v in by_module.items()},
        by_operator={k: _as_int(v) for k, v in by_operator.items()},
        uncounted_ops=dict(sorted(uncounted.items())),
    )
