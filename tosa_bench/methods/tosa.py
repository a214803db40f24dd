"""ToSA: Token Selective Attention (Singh et al., CVPR-W 2024, arXiv 2406.08816).

A *token selector* sits before each chosen block. It reads the attention logits of the
block before, predicts the attention map of its own block, and lets only the top-k tokens
(by predicted attention received) run that block. The other tokens bypass the block
unchanged and are put back in their places, so every patch keeps a feature to the end.

The paper's full text was not available to us; every choice it leaves open is a named
option here (defaults per ../shared/reference/README.md §1):

- ``placement``: which blocks carry a selector (named scheme or explicit 0-based list;
  see :func:`parse_placement`). Block 0 cannot carry one: there is no map before it.
- selector = Conv1d(H -> C, k) -> ReLU -> Conv1d(C -> H, k) -> log-softmax over keys.
  Heads are the channels and the convolutions run along the key axis, separately for
  every query row. ``selector_hidden`` = C (default 2H), ``selector_kernel`` = k
  (default 3, zero padding, so key neighbours = spatially adjacent patches in a row).
  The convolutions give predicted logits z; the predicted attention is softmax(z) (its
  log, the log-softmax, is what distillation compares). Inference takes the softmax
  directly, which is the same distribution in one pass fewer.
- initialisation "reuse current attention": conv1 holds +I and -I on the centre tap, conv2
  recombines ``relu(x) - relu(-x) = x``, so an untrained selector predicts exactly
  ``log_softmax(current logits)``. Extra hidden channels (C > 2H) start small-random in
  conv1 and zero in conv2, so they change nothing but still receive gradients.
- ``importance``: ``"mean"`` (default) = predicted attention a token receives, averaged
  over heads and all queries; ``"cls"`` = predicted attention from the CLS query only.
  The selector treats every query row on its own, so the "cls" rule needs only the CLS
  row: the block before computes that row of logits next to its fused attention and the
  selector runs on (B, H, 1, N), about N times less work than the "mean" rule.
- CLS is always kept; k = ceil(keep * (N - 1)) patch tokens are selected per image; the
  selected tokens keep their original relative order and run the whole block (attention
  among themselves, then MLP).
- consecutive ToSA blocks: the selector of block l reads the last *complete* N x N map
  of logits. If block l-1 ran densely that is its real logits; if block l-1 was itself a
  ToSA block (which only attended among its selected tokens) it is the logits that block
  l-1's selector predicted for block l-1. Only the first block of a run of consecutive
  ToSA blocks therefore needs a materialised attention map in the block before it.

For distillation (selectors trained on their own, backbone frozen) set
``record_predictions = True``: each forward then stores the predicted log-attention
(log-softmax over keys) per ToSA block in ``predictions`` (block -> (B, H, N, N), or
(B, H, 1, N) under the "cls" rule, which only ever predicts the CLS row); the dense
teacher maps come from ``VisionTransformer.attention_logits``.

``RandomReducer`` is the control: ToSA's mechanism (same placement, same k, bypass and
restore) but with tokens chosen uniformly at random, to compare any rule with chance.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tosa_bench.errors import OptionError
from tosa_bench.methods.base import (
    BlockSelection,
    BlockTokens,
    ReducerOutput,
    TokenReducer,
    gather_tokens,
    kept_count,
    scatter_tokens,
    validate_block_indices,
    validate_keep,
)
from tosa_bench.methods.registry import GridEntry, Knobs, Method, OptionSpec, register
from tosa_bench.kernels import selector_cpu, selector_triton
from tosa_bench.models.chunks import (CALIBRATED, CALIBRATION_IMAGES, CANDIDATE_BYTES, FUSED, CandidateUnavailable, Chunked, ChunkKey,
                                      items_per_chunk)

PLACEMENT_SCHEMES = {
    "alternate": "every other block from block 1: 1, 3, 5, ... (default)",
    "alternate-even": "every other block from block 2: 2, 4, 6, ...",
    "second-half": "every block of the second half: L/2 ... L-1",
    "all": "every block but the first: 1 ... L-1",
    "last:K": "the last K blocks",
}
IMPORTANCE_RULES = ("mean", "cls")


def parse_placement(placement: str | Sequence[int], depth: int) -> tuple[int, ...]:
    """Resolve a placement to sorted 0-based block indices in [1, depth).

    Accepts a scheme name from ``PLACEMENT_SCHEMES``, a comma-separated string of
    indices ("3,5,7") or a sequence of ints. Raises ``OptionError`` naming ``placement``.
    """
    if isinstance(placement, str):
        text = placement.strip().lower()
        if text == "alternate":
            idx = list(range(1, depth, 2))
        elif text == "alternate-even":
            idx = list(range(2, depth, 2))
        elif text == "second-half":
            idx = list(range(depth // 2, depth))
        elif text == "all":
            idx = list(range(1, depth))
        elif text.startswith("last:"):
            try:
                n = int(text.split(":", 1)[1])
            except ValueError:
                raise OptionError(f"placement: {placement!r} needs an integer after 'last:'") from None
            if not 1 <= n <= depth - 1:
                raise OptionError(f"placement: {placement!r} must name 1..{depth - 1} blocks")
            idx = list(range(depth - n, depth))
        elif text and all(part.strip().removeprefix("-").isdecimal() and part.isascii() for part in text.split(",")):
            idx = [int(part) for part in text.split(",")]
        else:
            known = ", ".join(PLACEMENT_SCHEMES)
            raise OptionError(f"placement: unknown scheme {placement!r}; use one of {known} or a list like '3,5,7'")
    else:
        idx = list(placement)
    if not idx:
        raise OptionError("placement: no block selected")
    return validate_block_indices("placement", idx, depth, lowest=1)


class TokenSelector(Chunked, nn.Module):
    """Predicts a block's attention from the previous block's logits.

    Input (B, H, N, N) logits of the block before; output (B, H, N, N) predicted logits
    of this block (softmax over keys = predicted attention). Each query row is one 1-D
    sequence along keys with the heads as channels. The parameters are two ``nn.Conv1d``
    (so saved selectors hold (C, H, k) kernels), applied as (1, k) 2-D convolutions over
    the map in channels-last layout (one copy in). On the 2-core CPU (DeiT-S maps, one
    image per call, interleaved A/B) that ran 2.3-3.4x faster than ``nn.Conv1d`` over the
    (B * N_q, H, N_k) row layout; over a whole batch of 32, about 3x faster than a
    channels-first (1, k) Conv2d. The output keeps that layout: a (B, H, N, N) tensor
    whose strides are channels-last.

    :meth:`received` is the path ToSA's forward uses: it sums the predicted attention per
    key and, on a CPU, runs either the fused kernel (:mod:`tosa_bench.kernels.selector_cpu`)
    or these convolutions over the rows in chunks, whichever was timed faster on the
    machine (:mod:`tosa_bench.models.chunks`); on CUDA, the Triton kernel
    (:mod:`tosa_bench.kernels.selector_triton`) where it takes the maps, else these
    convolutions in one piece.
    """

    #: how the last :meth:`received` ran ("triton kernel (packed)", "fused CPU kernel (64-byte
    #: vectors)", "PyTorch ops ..." with the reason on CUDA); records list these
    #: (``kernel_paths``; a compiled model's are its :attr:`compiled_path`).
    last_path: str | None = None
    #: (rows, keys, dtype, kernel) of the maps the last eager call ran a kernel on: the
    #: fused CPU kernel where it was timed faster (kernel = its vector bytes), or the
    #: Triton kernel on CUDA (kernel = its form, "packed" or "stacked"). A compiled
    #: forward on maps like these calls that kernel as a custom op inside its graph (``received_op`` of
    #: :mod:`tosa_bench.kernels.selector_cpu` / :mod:`tosa_bench.kernels.selector_triton`);
    #: on other maps, or before any eager call, the compiler fuses the PyTorch ops
    compiled_kernel: tuple[int, int, torch.dtype, int | str] | None = None

    @property
    def compiled_path(self) -> str | None:
        """What a compiled forward runs, for a record (None: the compiler's own fusion)."""
        if self.compiled_kernel is None:
            return None
        kind = self.compiled_kernel[3]
        name = f"triton kernel ({kind})" if isinstance(kind, str) else f"fused CPU kernel ({kind}-byte vectors)"
        return f"{name}, a custom op in the compiled graph"

    def __init__(self, num_heads: int, hidden: int | None = None, kernel: int = 3) -> None:
        super().__init__()
        hidden = 2 * num_heads if hidden is None else hidden
        if hidden < 2 * num_heads:
            raise OptionError(f"selector_hidden must be >= 2 x heads = {2 * num_heads} (needed for the identity start), got {hidden}")
        if kernel < 1 or kernel % 2 == 0:
            raise OptionError(f"selector_kernel must be a positive odd integer, got {kernel}")
        self.num_heads, self.hidden, self.kernel = num_heads, hidden, kernel
        self.conv1 = nn.Conv1d(num_heads, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(hidden, num_heads, kernel, padding=kernel // 2)
        self.reset_to_identity()

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        """Start as "reuse the current attention" (see module docstring)."""
        H, c = self.num_heads, self.kernel // 2
        nn.init.normal_(self.conv1.weight, std=0.02)
        self.conv1.weight[: 2 * H].zero_()
        self.conv2.weight.zero_()
        for h in range(H):
            self.conv1.weight[h, h, c] = 1.0
            self.conv1.weight[H + h, h, c] = -1.0
            self.conv2.weight[h, h, c] = 1.0
            self.conv2.weight[h, H + h, c] = -1.0
        self.conv1.bias.zero_()
        self.conv2.bias.zero_()

    def forward(self, logits: Tensor) -> Tensor:
        """(B, H, R, N) logits of R query rows (R = N, or 1 for the CLS row alone) ->
        predicted logits of this block for the same rows, (B, H, R, N); the predicted
        attention is their softmax over keys (see :meth:`log_attention`)."""
        pad = (0, self.kernel // 2)
        x = logits.contiguous(memory_format=torch.channels_last)
        h = F.relu_(F.conv2d(x, self.conv1.weight.unsqueeze(2), self.conv1.bias, padding=pad))
        return F.conv2d(h, self.conv2.weight.unsqueeze(2), self.conv2.bias, padding=pad)

    def log_attention(self, logits: Tensor) -> Tensor:
        """The selector's output distribution: log-softmax over keys of :meth:`forward`
        (what distillation compares with the teacher's next-block attention)."""
        return F.log_softmax(self(logits), dim=-1)

    def chunking(self, batch: int, rows: int, keys: int, budget_bytes: int | None, itemsize: int = 4) -> tuple[int, int]:
        """(images, query rows) per chunk for :meth:`received`: everything for one piece
        (``budget_bytes`` None or 0), else as many rows as keep the hidden activation
        within ``budget_bytes`` (whole images while one fits, else blocks of one image's
        rows)."""
        per_chunk = items_per_chunk(batch * rows, self.hidden * keys * itemsize, budget_bytes)
        if per_chunk >= rows:
            return per_chunk // rows, rows
        return 1, per_chunk

    def _calibration_key(self, op: str, rows: int, keys: int, dtype: torch.dtype, build: str | None) -> ChunkKey:
        """The calibration cache's key for ``op`` on maps of ``rows`` x ``keys`` per head, with
        the kernel build (or "pytorch ops only") that the timed candidates ran on."""
        shape = f"heads {self.num_heads} hidden {self.hidden} kernel {self.kernel} rows {rows} keys {keys} | {build}"
        return ChunkKey(op, shape, str(dtype).removeprefix("torch."))

    def cpu_budget(self, logits: Tensor) -> int | None:
        """The calibrated chunk budget for maps like ``logits`` (None off the CPU; -1 for
        the fused kernel, :mod:`tosa_bench.kernels.selector_cpu`, where it was timed
        faster and can take these maps). Timed on maps of the same shape per image: N
        query rows for the "mean" rule, the CLS row alone for the "cls" rule."""
        H, R, N, dtype = self.num_heads, logits.shape[-2], logits.shape[-1], logits.dtype
        with torch.no_grad():  # the kernel is a candidate for maps it could take without autograd
            fused = selector_cpu.build_tag() if selector_cpu.usable(logits.detach()) and logits.device.type == "cpu" else None

        def key() -> ChunkKey:
            return self._calibration_key("selector", R, N, dtype, fused or "pytorch ops only")

        def runner():
            maps = _calibration_maps(H, R, N, dtype)
            return lambda b: self.received(maps, budget_bytes=b)

        with torch.no_grad():
            found = self.chunk_budget(logits.device, key, runner, CANDIDATE_BYTES + ((FUSED,) if fused else ()))
        if found is None:
            return None
        if found.bytes == FUSED and not selector_cpu.usable(logits):
            return found.fallback  # e.g. training: autograd needs the PyTorch path
        return found.bytes

    def kernel_vector_bytes(self, logits: Tensor) -> int:
        """The fused kernel's vector width (bytes) for maps like ``logits``: each width the
        build offers (:func:`selector_cpu.vector_widths`) timed once per machine and shape
        (:mod:`tosa_bench.models.chunks`, op "selector-kernel"), the fastest kept; the
        narrowest where nothing is calibrated (a trace)."""
        widths = selector_cpu.vector_widths()
        H, R, N, dtype = self.num_heads, logits.shape[-2], logits.shape[-1], logits.dtype

        def key() -> ChunkKey:
            return self._calibration_key("selector-kernel", R, N, dtype, selector_cpu.build_tag())

        def runner():
            maps = _calibration_maps(H, R, N, dtype)
            return lambda width: selector_cpu.received(maps, self.conv1, self.conv2, False, width)

        with torch.no_grad():
            found = self.chunk_budget(logits.device, key, runner, widths, whole=False)
        return widths[0] if found is None else found.bytes

    def triton_form(self, logits: Tensor, devices: tuple[str, ...] = ("cuda",)) -> str:
        """The Triton kernel's form (:data:`selector_triton.FORMS`) for maps like ``logits``:
        each form timed once per card, batch and shape (:mod:`tosa_bench.models.chunks`, op
        "selector-triton"), the fastest kept; a form that cannot run there is left out.
        The first form ("packed") where nothing is timed (off CUDA, compiled) or neither
        form runs (the caller then meets the kernel's failure and takes the PyTorch ops).
        ``devices``: where to time (a test adds "cpu" to time a faked kernel there)."""
        forms = selector_triton.FORMS
        B, H, R, N = logits.shape
        dev, dtype = logits.device, logits.dtype

        def key() -> ChunkKey:
            shape = f"batch {B} heads {H} hidden {self.hidden} kernel {self.kernel} rows {R} keys {N} | {', '.join(forms)}"
            return ChunkKey("selector-triton", shape, str(dtype).removeprefix("torch."), str(dev) if dev.type == "cuda" else "cpu")

        def runner():
            maps = torch.randn(B, H, R, N, generator=torch.Generator(device=dev).manual_seed(0), device=dev).to(dtype)

            def run(i: int) -> None:
                try:
                    selector_triton.received(maps, self.conv1, self.conv2, forms[i])
                except selector_triton.KernelFailed as e:
                    raise CandidateUnavailable(str(e)) from e
            return run

        try:
            with torch.no_grad():
                found = self.chunk_budget(dev, key, runner, tuple(range(len(forms))), whole=False, devices=devices)
        except RuntimeError:  # no form could run: the caller's own call fails the same way and says why
            return forms[0]
        return forms[found.bytes] if found is not None and 0 <= found.bytes < len(forms) else forms[0]

    def received(self, logits: Tensor, keep_logits: bool = False, budget_bytes: int | None = CALIBRATED) -> tuple[Tensor, Tensor | None]:
        """Predicted attention each key receives, summed over heads and the R query rows:
        (B, N). With ``keep_logits`` also the predicted logits (B, H, R, N) (what
        :meth:`forward` returns), else None. Summing instead of averaging leaves the
        ranking unchanged. ``budget_bytes``: the chunk budget (None or 0: one piece; -1:
        the fused CPU kernel; the default: on a CPU what was calibrated on this machine, on
        CUDA the Triton kernel where it takes the maps)."""
        B, _, R, N = logits.shape
        if torch.compiler.is_compiling():
            fused = self.compiled_kernel
            if fused is not None and not keep_logits and fused[:3] == (R, N, logits.dtype) and not torch.is_grad_enabled():
                weights = (self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias)
                if fused[3] in selector_triton.FORMS:
                    return selector_triton.received_op(logits, *weights, fused[3]), None
                return selector_cpu.received_op(logits, *weights, fused[3]), None
            budget_bytes = None  # the compiler fuses the PyTorch ops itself
        if budget_bytes == CALIBRATED and logits.device.type == "cuda":
            why = "the predicted logits are kept" if keep_logits else selector_triton.unavailable_reason(logits)
            if why is None:
                form = self.triton_form(logits)
                try:
                    out = selector_triton.received(logits, self.conv1, self.conv2, form)
                except selector_triton.KernelFailed as e:  # e.g. too little shared memory on this GPU
                    why = str(e)
                else:
                    self.last_path = f"triton kernel ({form})"
                    self.compiled_kernel = (R, N, logits.dtype, form)
                    return out, None
            self.last_path = f"PyTorch ops ({why})"
        if budget_bytes == CALIBRATED:
            budget_bytes = self.cpu_budget(logits)
        if budget_bytes == FUSED:
            width = self.kernel_vector_bytes(logits)
            self.last_path = f"fused CPU kernel ({width}-byte vectors)"
            self.compiled_kernel = (R, N, logits.dtype, width)
            return selector_cpu.received(logits, self.conv1, self.conv2, keep_logits, width)
        if logits.device.type == "cpu":
            self.last_path = "PyTorch ops in one piece" if not budget_bytes else "PyTorch ops in chunks"
        imgs, rows = self.chunking(B, R, N, budget_bytes, logits.element_size())
        received, kept = [], []
        for b in range(0, B, imgs):
            part, kept_rows = 0, []
            for r in range(0, R, rows):
                z = self(logits[b : b + imgs, :, r : r + rows])  # (imgs, H, rows, N)
                part = part + z.softmax(dim=-1).sum(dim=(1, 2))
                if keep_logits:
                    kept_rows.append(z)
            received.append(part)
            if keep_logits:
                kept.append(kept_rows[0] if len(kept_rows) == 1 else torch.cat(kept_rows, dim=2))
        z = (kept[0] if len(kept) == 1 else torch.cat(kept, dim=0)) if keep_logits else None
        return torch.cat(received, dim=0), z


def _calibration_maps(heads: int, rows: int, keys: int, dtype: torch.dtype) -> Tensor:
    """The maps the selector's choices are timed on: CALIBRATION_IMAGES images of standard
    normal logits (seeded, so every calibration times the same values), (images, heads,
    rows, keys)."""
    maps = torch.randn(CALIBRATION_IMAGES, heads, rows, keys, generator=torch.Generator().manual_seed(0))
    return maps.to(dtype)


def _with_cls(patch_idx: Tensor) -> Tensor:
    """Patch indices (B, k) relative to tokens 1..N-1, in any order -> sorted token indices
    (B, k+1) with the CLS token (0) first."""
    idx = patch_idx.sort(dim=1).values + 1
    return torch.cat([idx.new_zeros(idx.shape[0], 1), idx], dim=1)


class ToSAReducer(TokenReducer):
    """ToSA over a plain ViT. Options: ``keep``, ``placement`` (+ ``importance``,
    ``selector_hidden``, ``selector_kernel``); see the module docstring."""

    variant = "tosa"
    uses_maps = True  # the random control overrides this: it never reads attention

    def __init__(
        self,
        keep: float = 0.5,
        placement: str | Sequence[int] = "alternate",
        importance: str = "mean",
        selector_hidden: int | None = None,
        selector_kernel: int = 3,
    ) -> None:
        super().__init__()
        self.keep = validate_keep(keep)
        if importance not in IMPORTANCE_RULES:
            raise OptionError(f"importance must be one of {IMPORTANCE_RULES}, got {importance!r}")
        self.importance = importance
        self.placement_spec = placement
        self.selector_hidden, self.selector_kernel = selector_hidden, selector_kernel
        self.placement: tuple[int, ...] = ()
        self.selectors = nn.ModuleDict()
        self.record_predictions = False
        self.predictions: dict[int, Tensor] = {}

    def bind(self, cfg) -> None:
        super().bind(cfg)
        self.placement = parse_placement(self.placement_spec, cfg.depth)
        if self.uses_maps:
            self.selector_hidden = 2 * cfg.num_heads if self.selector_hidden is None else self.selector_hidden
            self.selectors = nn.ModuleDict(
                {str(i): TokenSelector(cfg.num_heads, self.selector_hidden, self.selector_kernel) for i in self.placement}
            )

    def options(self) -> dict:
        out = {"keep": self.keep, "placement": list(self.placement)}
        if self.uses_maps:
            out.update(importance=self.importance, selector_hidden=self.selector_hidden, selector_kernel=self.selector_kernel)
        return out

    def prepare(self, x: Tensor, active: tuple[int, ...]) -> None:
        """Called once per forward before the blocks, with the blocks that will choose
        (``active``): ToSA needs nothing ahead; the random control draws its scores here."""

    def choose(self, block: int, x: Tensor, maps: Tensor | None, k: int, keep_logits: bool) -> tuple[Tensor, Tensor | None]:
        """Tokens that run ``block``: (B, k+1) sorted indices with CLS first, and the
        predicted logits (B, H, rows, N) when ``keep_logits`` (the next selector's input,
        or a distillation record), else None. rows = 1 under the "cls" rule."""
        keep_logits = keep_logits or self.record_predictions
        received, z = self.selectors[str(block)].received(maps, keep_logits=keep_logits)
        if self.record_predictions:
            self.predictions[block] = F.log_softmax(z, dim=-1)
        top = received[:, 1:].topk(k, dim=1).indices
        return _with_cls(top), z

    def forward(self, blocks: nn.ModuleList, x: Tensor, collect: tuple[int, ...] = (), need_full: bool = False) -> ReducerOutput:
        n = x.shape[1]
        k = kept_count(self.keep, n - 1)
        active = self.placement if k < n - 1 else ()
        # Blocks whose real logits a selector reads: the dense block right before a ToSA block.
        map_blocks = {i - 1 for i in active if i - 1 not in active} if self.uses_maps else set()
        logits_kind = "cls" if self.importance == "cls" else True
        rows = 1 if self.importance == "cls" else n
        counts, inter, maps = [], {}, None
        self.predictions, self.last_selection = {}, {}
        self.prepare(x, active)
        # The bypassed tokens are written back into x itself when nothing else holds x
        # (the caller's input, a collected intermediate) and no gradient flows through it.
        owned, no_grad = False, not torch.is_grad_enabled()
        for i, blk in enumerate(blocks):
            if i in active:
                idx, maps = self.choose(i, x, maps, k, keep_logits=i + 1 in active)
                self.last_selection[i] = BlockSelection("ran", idx)
                x = scatter_tokens(x, idx, blk(gather_tokens(x, idx)), in_place=owned and no_grad)
                counts.append(BlockTokens(k + 1, k + 1, n, rows) if self.uses_maps else BlockTokens(k + 1, k + 1))
            else:
                h, att = blk.attention(x, need_logits=logits_kind if i in map_blocks else False)
                x = blk.feedforward(h)
                maps = att.logits
                counts.append(BlockTokens(n, n))
            owned = i not in collect
            if i in collect:
                inter[i] = x
        self.token_counts = counts
        return ReducerOutput(tokens=x, full=x if need_full else None, intermediates=inter)


class RandomReducer(ToSAReducer):
    """Control: ToSA's bypass mechanism with uniformly random token choice per image.

    Draws come from a generator seeded with ``seed`` when first used on a device, so a
    model built with the same seed draws the same sequence of choices.
    """

    variant = "random"
    uses_maps = False

    def __init__(self, keep: float = 0.5, placement: str | Sequence[int] = "alternate", seed: int = 0) -> None:
        super().__init__(keep=keep, placement=placement)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise OptionError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self._generator: torch.Generator | None = None

    def options(self) -> dict:
        return {**super().options(), "seed": self.seed}

    def prepare(self, x: Tensor, active: tuple[int, ...]) -> None:
        if active:  # at keep 1.0 nothing is drawn: the forward is dense's, compiled as one graph too
            self._scores = self._draw(x.shape[0], x.shape[1] - 1, len(active), x.device)

    def choose(self, block: int, x: Tensor, maps: Tensor | None, k: int, keep_logits: bool) -> tuple[Tensor, None]:
        scores = self._scores[self.placement.index(block)]
        return _with_cls(scores.topk(k, dim=1).indices), None

    @torch.compiler.disable
    def _draw(self, images: int, patches: int, blocks: int, device: torch.device) -> list[Tensor]:
        """``blocks`` tensors of (images, patches) uniform scores from the seeded generator,
        one per choosing block in order (the sequence drawn one block at a time). Drawn
        eagerly and all at once under ``torch.compile`` (a generator cannot be traced): one
        break before the blocks, and the blocks stay one compiled graph."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return [torch.rand(images, patches, generator=self._generator, device=device) for _ in range(blocks)]


# --------------------------------------------------------------------------- declarations
def placement_label(p: str | Sequence[int] | None) -> str | None:
    """The grid label of a placement spec: 'alternate' -> 'alternate'; (3, 5, 7) -> '3,5,7'."""
    if p is None or isinstance(p, str):
        return p
    return ",".join(str(i) for i in p)


def _placement_option(p: str | Sequence[int] | None) -> str | list[int] | None:
    return p if p is None or isinstance(p, str) else [int(i) for i in p]


def selector_macs(num_heads: int, hidden: int, kernel: int, n: int, rows: int) -> int:
    """MACs of one selector module on ``rows`` query rows of ``n`` keys: its two 1-D
    convolutions, H -> C and C -> H channels, kernel k, per (row, key) position."""
    return 2 * rows * n * hidden * num_heads * kernel


class ToSAMethod(Method):
    """ToSA declared to the registry (see the module docstring for the mechanism)."""

    name = "tosa"
    display = "ToSA"
    order = 1
    colour, marker = "#D55E00", "o"  # Okabe-Ito vermillion
    summary = "a selector predicts the next block's attention; the top-k tokens run the block, the others bypass it"
    keep_meaning = "share of patch tokens that run each selected block: k = ceil(keep (N - 1)), CLS always runs"
    accepts_selector = True
    bypasses = True
    match_target = True
    options = (
        OptionSpec("keep", "float", 0.5, "(0, 1]", "share of patch tokens that run each selected block", validate_keep),
        OptionSpec("placement", "str | list[int]", "alternate", ", ".join(PLACEMENT_SCHEMES) + ", or 0-based indices >= 1 like 3,5,7",
                   "blocks that carry a selector"),
        OptionSpec("importance", "str", "mean", ", ".join(IMPORTANCE_RULES),
                   "mean: predicted attention received over heads and queries; cls: from the CLS query only"),
        OptionSpec("selector_hidden", "int | None", None, ">= 2 x heads (None: 2 x heads)", "selector hidden channels"),
        OptionSpec("selector_kernel", "int", 3, "positive odd", "selector kernel along the keys"),
    )

    def reducer(self, **options: Any) -> ToSAReducer:
        return ToSAReducer(**options)

    def natural_options(self, keep, cfg, knobs: Knobs = Knobs()) -> dict[str, Any]:
        opts = self._keep_and_placement(keep, knobs)
        if knobs.importance is not None and knobs.importance != "mean":
            opts["importance"] = knobs.importance  # "mean" is the default: left out so hashes stay put
        return opts

    @staticmethod
    def _keep_and_placement(keep: float | None, knobs: Knobs) -> dict[str, Any]:
        """keep (default 0.5) and the first placement knob (left out when none: the
        default placement, so config hashes stay put)."""
        opts: dict[str, Any] = {"keep": 0.5 if keep is None else keep}
        if knobs.placements:
            opts["placement"] = _placement_option(knobs.placements[0])
        return opts

    def grid_options(self, keep, cfg, knobs: Knobs) -> list[GridEntry]:
        if keep is None:
            return []
        out = []
        for p in knobs.placements or (None,):
            one = Knobs(placements=(p,) if p is not None else (), importance=knobs.importance, seed=knobs.seed)
            out.append(GridEntry(self.natural_options(keep, cfg, one), placement_label(p)))
        return out

    def token_counts(self, reducer, num_tokens: int) -> list[BlockTokens]:
        n = num_tokens
        k = kept_count(reducer.keep, n - 1)
        active = set(reducer.placement) if k < n - 1 else set()
        if reducer.uses_maps:
            ran = BlockTokens(k + 1, k + 1, n, 1 if reducer.importance == "cls" else n)
        else:
            ran = BlockTokens(k + 1, k + 1)
        return [ran if i in active else BlockTokens(n, n) for i in range(reducer.depth)]

    def extra_macs(self, cfg, reducer, counts, block: int) -> tuple[int, int]:
        """The selector's two convolutions (inside, under ``reducer.selectors.<i>``) and the
        softmax of its predicted logits (outside); under the "cls" rule the block before
        also computes the CLS row of its logits (n D, inside that block)."""
        t = counts[block]
        inside = outside = 0
        if t.selector:
            sel = reducer.selectors[str(block)]
            inside += selector_macs(cfg.num_heads, sel.hidden, sel.kernel, t.selector, t.selector_rows)
            outside += cfg.num_heads * t.selector_rows * t.selector
        nxt = counts[block + 1] if block + 1 < len(counts) else None
        if nxt is not None and nxt.selector and not t.selector and nxt.selector_rows == 1:
            inside += t.attn * cfg.embed_dim
        return inside, outside

    def final_tokens(self, counts, num_tokens: int) -> int:
        # tokens that bypass a block are put back: the final norm sees every token
        return num_tokens

    def setting_label(self, options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        parts = [f"keep {options.get('keep')} @ {self._place(options, record)}"]
        if options.get("importance", "mean") != "mean":
            parts.append(f"importance {options['importance']}")
        if record.get("selector"):
            parts.append("trained selectors")
        return ", ".join(parts)

    def curve_label(self, options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        # the setting without its keep: "alternate", "second-half, importance cls"; on a
        # trained backbone, selectors that were not trained are named so, so a figure with
        # both tells the curves apart without its caption
        label = self.setting_label(options, record).split(" @ ", 1)[-1]
        if self.accepts_selector and not record.get("selector") and record.get("weights") == "checkpoint":
            label += ", untrained selectors"
        return label

    @staticmethod
    def _place(options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        p = options.get("placement", "default")
        return record.get("placement_label") or (",".join(map(str, p)) if isinstance(p, list) else str(p))


class RandomMethod(ToSAMethod):
    """The random control declared to the registry: ToSA's mechanism, random tokens."""

    name = "random"
    display = "Random (control)"
    order = 4
    colour, marker = "#E69F00", "D"  # Okabe-Ito orange
    summary = "ToSA's bypass mechanism with tokens drawn uniformly at random (the control)"
    accepts_selector = False
    match_target = False
    control = True
    options = (
        ToSAMethod.options[0],
        ToSAMethod.options[1],
        OptionSpec("seed", "int", 0, "any integer", "seed of the token draws"),
    )

    def reducer(self, **options: Any) -> RandomReducer:
        return RandomReducer(**options)

    def natural_options(self, keep, cfg, knobs: Knobs = Knobs()) -> dict[str, Any]:
        return {**self._keep_and_placement(keep, knobs), "seed": knobs.seed}

    def setting_label(self, options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        seed = options.get("seed", 0)  # a list in an aggregate over seeds (results.aggregate)
        seeds = f"seeds {', '.join(map(str, seed))}" if isinstance(seed, list) else f"seed {seed}"
        return f"keep {options.get('keep')} @ {self._place(options, record)}, {seeds}"


TOSA = register(ToSAMethod())
RANDOM = register(RandomMethod())
