"""The contract every token-reduction method follows, and the dense method itself.

A method is a ``TokenReducer``: an ``nn.Module`` that owns the loop over the ViT's blocks.
It gets the embedded tokens (B, N, D) (CLS first) and returns a :class:`ReducerOutput`.
Keeping the loop in the method (rather than hooks spread over the model) means each
method is readable in one file, and the backbone stays a plain timm-compatible ViT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from torch import Tensor, nn

from tosa_bench.errors import OptionError

#: how a method's own modules run under ``torch.compile`` where they have no kernel
#: registered as a custom op: the compiler fuses their PyTorch ops
COMPILED_PATH = "PyTorch ops compiled by torch.compile"


@dataclass(frozen=True)
class BlockTokens:
    """Tokens one block processed in a forward pass.

    attn: tokens that entered the attention (queries = keys).
    mlp: tokens that entered the MLP (differs from ``attn`` where a method acts between
        the two halves, as ToMe and EViT do).
    selector: keys of the map the block's ToSA selector read, 0 where there is none.
    selector_rows: query rows of that map (``selector`` for the full map, 1 when only
        the CLS row is read).
    """

    attn: int
    mlp: int
    selector: int = 0
    selector_rows: int = 0

    def __post_init__(self) -> None:
        # Under torch.jit.trace (fvcore) shapes are traced values; store plain ints.
        for name in ("attn", "mlp", "selector", "selector_rows"):
            object.__setattr__(self, name, int(getattr(self, name)))


@dataclass
class ReducerOutput:
    """Result of running the blocks.

    tokens: (B, n, D) the final reduced token set, CLS at index 0 (feeds the classifier).
    full: (B, N, D) every input token's final feature in its original position, or None
        when not requested. ToSA keeps all tokens anyway; ToMe copies each merged token
        back to its sources ("unmerge"); EViT keeps dropped tokens' last features.
    intermediates: block index -> (B, N, D) full token map after that block.
    """

    tokens: Tensor
    full: Tensor | None = None
    intermediates: dict[int, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockSelection:
    """What a method did to the tokens of one block in the last forward, in original
    token positions (0 = CLS, 1..N-1 = patches in raster order), for token pictures.

    kind: ``"ran"`` (ToSA, random: ``index`` (B, k+1) are the tokens that ran the block;
    the others bypassed it), ``"kept"`` (EViT: ``index`` (B, k+1) are the tokens kept
    after the block's attention; the others were dropped or fused), ``"merged"`` (ToMe:
    ``index`` (B, N) gives, for every original token, the merged token it belongs to after
    this block, so equal values form one group).
    """

    kind: str
    index: Tensor


def kernel_paths(module: nn.Module, compiled: bool = False) -> list[str]:
    """How ``module``'s submodules ran their last eager forward, where they can run more
    than one way (ToSA's selector: a Triton kernel, the fused CPU kernel or PyTorch ops;
    attention with ToMe's bias: the backend timed fastest): the distinct ``last_path`` of
    its submodules, sorted; [] where none ran more than one way. ``compiled``: the model
    runs under ``torch.compile``, where those modules leave their ops to the compiler
    (:data:`COMPILED_PATH`) unless they keep a kernel as a custom op in the graph (their
    ``compiled_path``)."""
    ran = [m for m in module.modules() if getattr(m, "last_path", None)]
    if compiled:  # a module that keeps its kernel in the compiled graph says so (ToSA's selector)
        return sorted({getattr(m, "compiled_path", None) or COMPILED_PATH for m in ran})
    return sorted({m.last_path for m in ran})


def validate_keep(keep: float) -> float:
    """Keep ratio in (0, 1]; anything else (incl. NaN, bool) is an ``OptionError`` naming ``keep``."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise OptionError(f"keep must be a number in (0, 1], got {keep!r}")
    keep = float(keep)
    if math.isnan(keep) or not 0.0 < keep <= 1.0:
        raise OptionError(f"keep must be in (0, 1], got {keep!r}")
    return keep


def kept_count(keep: float, n: int) -> int:
    """ceil(keep * n) patch tokens, guarded against float round-up (0.7*196 -> 138, not 138+1
    from 137.20000000000002 noise) and never below 1."""
    return max(1, min(n, math.ceil(keep * n - 1e-9)))


def validate_block_indices(name: str, indices: Sequence[int], depth: int, lowest: int = 0) -> tuple[int, ...]:
    """Sorted unique 0-based block indices in [lowest, depth); ``OptionError`` naming ``name``."""
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int):
            raise OptionError(f"{name}: block index {i!r} is not an integer")
        if not lowest <= i < depth:
            raise OptionError(f"{name}: block index {i} out of range [{lowest}, {depth - 1}] for a {depth}-block model")
        out.append(i)
    if len(set(out)) != len(out):
        raise OptionError(f"{name}: repeated block index in {list(indices)}")
    return tuple(sorted(out))


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, N, D), idx (B, k) -> (B, k, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(x: Tensor, idx: Tensor, values: Tensor, in_place: bool = False) -> Tensor:
    """x with rows idx (B, k) replaced by values (B, k, D); other rows untouched
    (bit-identical). A copy of x, or x itself written over where ``in_place`` (the caller
    owns x and no gradient flows: it saves a full copy of the token tensor per block,
    which on an H100 at batch 256 was a ~32 us kernel dense never runs)."""
    index = idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return x.scatter_(1, index, values) if in_place else x.scatter(1, index, values)


class TokenReducer(nn.Module):
    """Dense: every block on every token. Base class of all methods.

    Subclasses override :meth:`bind` (to validate options against the model's shape)
    and :meth:`forward`. After each forward, ``token_counts`` lists a ``BlockTokens``
    per block and ``last_selection`` maps each block the method acted on to a
    :class:`BlockSelection` (empty for dense). Each method is declared to the rest of the
    project in :mod:`tosa_bench.methods.registry`.
    """

    variant = "dense"

    def __init__(self) -> None:
        super().__init__()
        self.token_counts: list[BlockTokens] = []
        self.last_selection: dict[int, BlockSelection] = {}
        self.depth = 0

    def bind(self, cfg) -> None:
        """Called once by the model with its ``ViTConfig``."""
        self.depth = cfg.depth

    def options(self) -> dict:
        """The method's resolved options (for records and tables)."""
        return {}

    def kernel_paths(self, compiled: bool = False) -> list[str]:
        """:func:`kernel_paths` of the method's own modules."""
        return kernel_paths(self, compiled)

    def forward(self, blocks: nn.ModuleList, x: Tensor, collect: tuple[int, ...] = (), need_full: bool = False) -> ReducerOutput:
        counts, inter = [], {}
        for i, blk in enumerate(blocks):
            counts.append(BlockTokens(x.shape[1], x.shape[1]))
            # The same two calls as every other method's loop, keeping the attention output
            # alive until the next block's attention, not ``x = blk(x)``: that frees the
            # block's buffers sooner, and on a CPU glibc then hands them back to the OS and
            # faults them in again, which made dense ~4% slower than ToSA at keep 1.0 (the
            # same computation) in the A/A check (benchmarks/aa_check.py).
            h, _att = blk.attention(x)
            x = blk.feedforward(h)
            if i in collect:
                inter[i] = x
        self.token_counts = counts
        return ReducerOutput(tokens=x, full=x if need_full else None, intermediates=inter)

