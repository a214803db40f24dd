"""EViT: token reorganisation by CLS attention (Liang et al., ICLR 2022; youweiliang/evit),
as a baseline.

At each block in ``locations`` (default the 4th, 7th and 10th of 12, i.e. 0-based 3, 6,
9), after attention and before the MLP:

- attentiveness of a patch token = attention the CLS query gives it, averaged over heads
  (only that row of logits is computed, beside the fused attention kernel);
- the ceil(keep * (n - 1)) most attentive of the n - 1 current non-CLS tokens are kept
  (n = tokens entering that block, so keep compounds over locations, as in EViT);
- with ``fuse`` (default True) the others are summed into one extra token weighted by
  their CLS attention (raw weights, not renormalised, as EViT does); a fused token from an
  earlier location competes like any other token.

For dense outputs a dropped token keeps the feature it had when it was dropped (after
that block's attention); fused tokens have no position of their own and are left out.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
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


def default_locations(depth: int) -> tuple[int, ...]:
    """EViT's 4th/7th/10th of 12 blocks, scaled to other depths (0-based)."""
    return tuple(sorted({max(1, depth * f // 12) for f in (3, 6, 9)}))


class EViTReducer(TokenReducer):
    """EViT over a plain ViT. Options: ``keep``, ``locations`` (0-based), ``fuse``."""

    variant = "evit"

    def __init__(self, keep: float = 0.7, locations: Sequence[int] | None = None, fuse: bool = True) -> None:
        super().__init__()
        self.keep = validate_keep(keep)
        if not isinstance(fuse, bool):
            raise OptionError(f"fuse must be True or False, got {fuse!r}")
        self.fuse = fuse
        self.locations_spec = locations
        self.locations: tuple[int, ...] = ()

    def bind(self, cfg) -> None:
        super().bind(cfg)
        spec = default_locations(cfg.depth) if self.locations_spec is None else list(self.locations_spec)
        if not spec:
            raise OptionError("locations: no block selected")
        self.locations = validate_block_indices("locations", spec, cfg.depth)

    def options(self) -> dict:
        return {"keep": self.keep, "locations": list(self.locations), "fuse": self.fuse}

    def forward(self, blocks: nn.ModuleList, x: Tensor, collect: tuple[int, ...] = (), need_full: bool = False) -> ReducerOutput:
        B, n0, D = x.shape
        track = need_full or bool(collect)
        # position[b, j]: original index of current token j (0 = CLS); n0 marks a fused token.
        position = torch.arange(n0, device=x.device).expand(B, -1)
        store: Tensor | None = None  # (B, n0 + 1, D) last features of dropped tokens; row n0 is a bin
        counts, inter = [], {}
        self.last_selection = {}

        def full_map(cur: Tensor) -> Tensor:
            if store is None:
                return cur
            return scatter_tokens(store, position, cur)[:, :n0]

        for i, blk in enumerate(blocks):
            n = x.shape[1]
            k = kept_count(self.keep, n - 1)
            prune = i in self.locations and k < n - 1
            h, att = blk.attention(x, need_logits="cls" if prune else False)
            if prune:
                cls_attn = att.logits[:, :, 0, :].softmax(dim=-1)[:, :, 1:].mean(dim=1)  # (B, n-1)
                order = cls_attn.argsort(dim=1, descending=True, stable=True)
                keep_idx = order[:, :k].sort(dim=1).values + 1
                drop_idx = order[:, k:] + 1
                idx = torch.cat([keep_idx.new_zeros(B, 1), keep_idx], dim=1)
                if track:
                    if store is None:
                        store = h.new_zeros(B, n0 + 1, D)
                    store = scatter_tokens(store, position.gather(1, drop_idx), gather_tokens(h, drop_idx))
                parts = [gather_tokens(h, idx)]
                new_position = [position.gather(1, idx)]
                if self.fuse:
                    weight = cls_attn.gather(1, drop_idx - 1).unsqueeze(-1)
                    parts.append((gather_tokens(h, drop_idx) * weight).sum(dim=1, keepdim=True))
                    new_position.append(position.new_full((B, 1), n0))
                h = torch.cat(parts, dim=1)
                self.last_selection[i] = BlockSelection("kept", new_position[0])
                position = torch.cat(new_position, dim=1)
            x = blk.feedforward(h)
            counts.append(BlockTokens(n, x.shape[1]))
            if i in collect:
                inter[i] = full_map(x)
        self.token_counts = counts
        return ReducerOutput(tokens=x, full=full_map(x) if need_full else None, intermediates=inter)


# --------------------------------------------------------------------------- declaration
class EViTMethod(Method):
    """EViT declared to the registry. In ``last_selection`` a kept index equal to N (the
    input token count) stands for a fused token of an earlier location."""

    name = "evit"
    display = "EViT"
    order = 3
    colour, marker = "#009E73", "^"  # Okabe-Ito bluish green
    summary = "at a few blocks, keep the patches the CLS token attends to most; fuse the rest into one token"
    keep_meaning = "keep rate at each pruning block (ceil(keep (n - 1)) of the current patches; it compounds)"
    options = (
        OptionSpec("keep", "float", 0.7, "(0, 1]", "keep rate at each pruning block", validate_keep),
        OptionSpec("locations", "list[int] | None", None, "0-based block indices (None: 4th/7th/10th of 12, scaled)", "pruning blocks"),
        OptionSpec("fuse", "bool", True, "true, false", "fuse the dropped tokens into one, weighted by CLS attention"),
    )

    def reducer(self, **options: Any) -> EViTReducer:
        return EViTReducer(**options)

    def natural_options(self, keep, cfg, knobs: Knobs = Knobs()) -> dict[str, Any]:
        opts: dict[str, Any] = {"keep": 0.7 if keep is None else keep, "fuse": knobs.fuse}
        if knobs.evit_locations:
            opts["locations"] = list(knobs.evit_locations[0])
        return opts

    def grid_options(self, keep, cfg, knobs: Knobs) -> list[GridEntry]:
        if keep is None:
            return []
        return [GridEntry(self.natural_options(keep, cfg, self._at(locs, knobs))) for locs in knobs.evit_locations or (None,)]

    def match_gmacs(self, keep, cfg, knobs, target_gmacs, gmacs_of):
        """Per location list, the keep rate on a 0.01 grid (0.01 .. 1.00, fused) whose cost
        is closest to the target; among equal costs the keep nearest the grid's keep."""
        out = []
        for locs in knobs.evit_locations or (None,):
            base = self.natural_options(1.0, cfg, self._at(locs, Knobs(fuse=knobs.fuse)))
            best = min((abs(gmacs_of({**base, "keep": step / 100}) - target_gmacs), abs(step / 100 - keep), step)
                       for step in range(1, 101))
            opts = {**base, "keep": round(best[2] / 100, 2)}
            out.append((opts, gmacs_of(opts)))
        return out

    @staticmethod
    def _at(locations, knobs: Knobs) -> Knobs:
        return Knobs(evit_locations=(tuple(locations),) if locations is not None else (), fuse=knobs.fuse)

    def token_counts(self, reducer, num_tokens: int) -> list[BlockTokens]:
        out, n = [], num_tokens
        for i in range(reducer.depth):
            k = kept_count(reducer.keep, n - 1)
            m = k + 1 + int(reducer.fuse) if (i in reducer.locations and k < n - 1) else n
            out.append(BlockTokens(n, m))
            n = m
        return out

    def extra_macs(self, cfg, reducer, counts, block: int) -> tuple[int, int]:
        """At a pruning block: the CLS row of the logits, n D (inside the block), and its
        softmax, H n (outside)."""
        t = counts[block]
        if block in reducer.locations and kept_count(reducer.keep, t.attn - 1) < t.attn - 1:
            return t.attn * cfg.embed_dim, cfg.num_heads * t.attn
        return 0, 0

    def setting_label(self, options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        locs = options.get("locations")
        parts = [f"keep {options.get('keep')}" + (f" @ {','.join(map(str, locs))}" if locs else "")]
        if options.get("fuse") is False:
            parts.append("no fuse")
        return ", ".join(parts)

    def curve_label(self, options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        # the setting without its keep: "@ 3,6,9", "@ 3,6,9, no fuse"
        return self.setting_label(options, record).partition(" ")[2].partition(" ")[2]


EVIT = register(EViTMethod())
