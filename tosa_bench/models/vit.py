"""A plain ViT (DeiT/timm layout) written so that token-reduction methods can run blocks
on any subset of tokens.

Parameter names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``, ``norm``, ``head``), so a
timm or DeiT checkpoint loads with no renaming. The method-specific modules (ToSA's token
selectors) live under ``reducer.``.

The block loop itself is delegated to a :class:`~tosa_bench.methods.base.TokenReducer`:
dense, ToSA, ToMe, EViT and the random control each own exactly one loop in their own
file, over the same blocks.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tosa_bench.errors import OptionError
from tosa_bench.kernels import biased_attention
from tosa_bench.models import chunks
from tosa_bench.models.chunks import (CALIBRATED, CALIBRATION_IMAGES, CANDIDATE_BYTES, FUSED, CandidateUnavailable, Chunked, ChunkKey,
                                      items_per_chunk)
from tosa_bench.models.configs import ViTConfig


class AttentionOutput(NamedTuple):
    """What one attention call returns.

    out: projected attention output (B, n, D), before the residual add.
    logits: pre-softmax logits ``q k^T / sqrt(d) + bias``: (B, H, n, n) for
        ``need_logits=True``, only the CLS query's row (B, H, 1, n) for
        ``need_logits="cls"``, else ``None`` (the fused SDPA kernel never materialises them).
    keys: the keys (B, H, n, d); ToMe uses them as its similarity metric.
    """

    out: Tensor
    logits: Tensor | None
    keys: Tensor


class Attention(Chunked, nn.Module):
    """Multi-head self-attention with two paths.

    * fused ``F.scaled_dot_product_attention`` whenever no attention map is needed; with a
      ``bias``, the backend timed fastest on the device (:meth:`bias_backend`);
    * explicit ``softmax(q k^T * scale + bias) @ v`` when ``need_logits=True``, used only
      in the blocks whose full map a method reads (the block before a ToSA selector);
    * fused attention plus the CLS query's logits alone (one 1 x n row per head) when
      ``need_logits="cls"``, for methods that read only that row (EViT; ToSA with the
      "cls" importance rule).

    ``bias`` is an additive logit bias broadcastable to (B, H, n, n), e.g. ToMe's
    proportional attention ``log(size)`` over keys.
    """

    #: how the last biased attention ran (its backend), for a record's ``kernel_paths``
    last_path: str | None = None

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Tensor | None = None, need_logits: bool | str = False) -> AttentionOutput:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        logits = None
        if need_logits is True:
            y, logits = self._explicit(q, k, v, bias)
        else:
            if bias is not None:
                bias = bias.to(q.dtype)
                y = self._biased(q, k, v, bias)
            else:
                y = F.scaled_dot_product_attention(q, k, v)
            if need_logits == "cls":
                logits = (q[:, :, :1] * self.scale) @ k.transpose(-2, -1)
                if bias is not None:
                    logits = logits + bias[..., :1, :]
            elif need_logits:
                raise ValueError(f"need_logits must be True, False or 'cls', got {need_logits!r}")
        y = y.transpose(1, 2).reshape(B, N, C)
        return AttentionOutput(self.proj(y), logits, k)

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, budget_bytes: int | None = CALIBRATED) -> tuple[Tensor, Tensor]:
        """softmax(q k^T * scale + bias) @ v and its logits. On a CPU the softmax and the
        product with v run a few images at a time, so each chunk's probabilities are still
        in cache when multiplied by v; ``budget_bytes`` bounds a chunk's map (None or 0:
        one piece; -1: the output by fused ``scaled_dot_product_attention`` and the logits
        by their own product, which computes q k^T twice but never writes or re-reads the
        probabilities; the default: on a CPU whichever was timed fastest on this machine,
        :mod:`tosa_bench.models.chunks`, elsewhere the fused form)."""
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        B, H, n, _ = logits.shape
        if budget_bytes == CALIBRATED:
            # off the CPU the fused form: flash attention never writes the probabilities,
            # and the softmax (float32 under autocast) would write twice the logits' bytes
            budget_bytes = self.cpu_budget(q, n) if q.device.type == "cpu" else FUSED
        if budget_bytes == FUSED:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype)), logits
        step = items_per_chunk(B, H * n * n * logits.element_size(), budget_bytes)
        outs = [logits[b : b + step].softmax(dim=-1) @ v[b : b + step] for b in range(0, B, step)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)), logits

    def _biased(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """softmax(q k^T * scale + bias) v on the backend timed fastest for these shapes on
        this device (:mod:`tosa_bench.kernels.biased_attention`); ``last_path`` names it."""
        backend = self.bias_backend(q, bias)
        # set through __dict__: nn.Module.__setattr__ costs microseconds in every block
        self.__dict__["last_path"] = biased_attention.PATHS[backend]
        return biased_attention.attend(backend, q, k, v, bias, self.scale)

    def bias_backend(self, q: Tensor, bias: Tensor) -> str:
        """The backend of :meth:`_biased` for inputs like ``q`` (B, H, n, d) and ``bias``:
        each one the device offers timed once per device, shape and dtype (on a CPU on
        ``CALIBRATION_IMAGES`` images, as the chunk sizes are; on CUDA at this batch, where
        the fastest kernel depends on how full the card is), the fastest kept;
        :data:`~tosa_bench.kernels.biased_attention.DEFAULT` where nothing is timed
        (compiled, traced, other devices)."""
        B, H, n, d = q.shape
        dev, dtype, cuda = q.device, q.dtype, q.device.type == "cuda"
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return biased_attention.DEFAULT  # nothing is timed while compiled or traced
        # Every block of every forward asks: building the calibration key each time cost
        # ToMe ~10% of a tiny model's forward, so a settled choice is remembered per shape.
        memo = self.__dict__.setdefault("_bias_backends", {})
        seen = (q.shape, bias.shape, dtype, dev, torch.get_num_threads(), chunks.generation())
        if seen in memo:
            return memo[seen]
        names = biased_attention.candidates(dev)

        def key() -> ChunkKey:
            shape = f"heads {H} tokens {n} head_dim {d} bias {'x'.join(map(str, bias.shape[1:]))}" + (f" batch {B}" if cuda else "")
            return ChunkKey("biased-attention", shape + " | " + ", ".join(names), str(dtype).removeprefix("torch."), str(dev) if cuda else "cpu")

        def runner():
            images = B if cuda else CALIBRATION_IMAGES
            g = torch.Generator(device=dev).manual_seed(0)
            qkv = [torch.randn(images, H, n, d, generator=g, device=dev).to(dtype) for _ in range(3)]
            sizes = torch.randint(1, 8, (images, *bias.shape[1:]), generator=g, device=dev)  # merged-token sizes
            b = sizes.float().log().to(dtype)
            calls = 10 if cuda else 1  # a GPU call is tens of microseconds: time ten

            def run(i: int) -> None:
                backend = biased_attention.BACKENDS[i]
                try:
                    for _ in range(calls):
                        biased_attention.attend(backend, *qkv, b, self.scale)
                except RuntimeError as e:  # a pinned kernel that refuses these inputs
                    raise CandidateUnavailable(str(e)) from e
            return run

        with torch.no_grad():
            found = self.chunk_budget(dev, key, runner, tuple(biased_attention.BACKENDS.index(b) for b in names), whole=False,
                                      devices=("cpu", "cuda"))
        if found is None or not 0 <= found.bytes < len(biased_attention.BACKENDS) or biased_attention.BACKENDS[found.bytes] not in names:
            return biased_attention.DEFAULT  # nothing timed here (or a value this device does not offer)
        memo[seen] = biased_attention.BACKENDS[found.bytes]
        return memo[seen]

    def cpu_budget(self, q: Tensor, n: int) -> int | None:
        """The calibrated chunk budget of :meth:`_explicit` for ``n`` tokens (None off the CPU)."""
        H, d, dtype = self.num_heads, self.head_dim, q.dtype

        def key() -> ChunkKey:
            return ChunkKey("attention", f"heads {H} tokens {n} head_dim {d} | chunks or fused", str(dtype).removeprefix("torch."))

        def runner():
            g = torch.Generator().manual_seed(0)
            qkv = [torch.randn(CALIBRATION_IMAGES, H, n, d, generator=g).to(dtype) for _ in range(3)]
            return lambda b: self._explicit(*qkv, None, budget_bytes=b)

        with torch.no_grad():
            found = self.chunk_budget(q.device, key, runner, CANDIDATE_BYTES + (FUSED,))
        return None if found is None else found.bytes


class Mlp(nn.Module):
    """Two-layer GELU MLP (timm names ``fc1``/``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block, split in its two halves so methods can act between
    attention and MLP (ToMe merges there, EViT prunes there)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, qkv_bias=cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)

    def attention(self, x: Tensor, bias: Tensor | None = None, need_logits: bool | str = False) -> tuple[Tensor, AttentionOutput]:
        """First half: ``x + attn(norm1(x))``; also returns the raw attention output."""
        a = self.attn(self.norm1(x), bias=bias, need_logits=need_logits)
        return x + a.out, a

    def feedforward(self, x: Tensor) -> Tensor:
        """Second half: ``x + mlp(norm2(x))``."""
        return x + self.mlp(self.norm2(x))

    def forward(self, x: Tensor) -> Tensor:
        x, _ = self.attention(x)
        return self.feedforward(x)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution (timm ``patch_embed.proj``)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


class ConvStem(nn.Module):
    """A convolutional stem in place of the patch convolution (Xiao et al., NeurIPS 2021,
    "Early Convolutions Help Transformers See Better"): two 3x3 stride-2 convolutions,
    each followed by BatchNorm and ReLU, widen 3 -> D/4 -> D/2 channels, then a
    (p/4) x (p/4) convolution of stride p/4 makes one D-wide token per p x p patch, the
    grid the patch embedding gives. It lends a small ViT the locality of a CNN, so it
    learns from far fewer images (the demo model, :mod:`tosa_bench.models.configs`).
    MACs per image (:mod:`tosa_bench.measure.analytic`): the three convolutions, plus
    BatchNorm at 2 per element (inference, affine), as fvcore counts it."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        if patch_size % 4 or dim % 4:
            raise OptionError(f"stem 'conv': patch size {patch_size} and width {dim} must be multiples of 4")
        self.patch_size = patch_size
        widths = (3, dim // 4, dim // 2)
        layers: list[nn.Module] = []
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(dim // 2, dim, kernel_size=patch_size // 4, stride=patch_size // 4)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(self.stem(x))
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


STEMS = {"patch": PatchEmbed, "conv": ConvStem}


def resize_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """Bicubically resample the patch part of a (1, prefix + gh*gw, D) position embedding
    to ``new_grid`` (rows, cols); the class-token entry is kept as it is.

    The source grid is assumed square (true for every timm/DeiT checkpoint we load).
    """
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old = int(math.isqrt(patches.shape[1]))
    if old * old != patches.shape[1]:
        raise ValueError(f"pos_embed has {patches.shape[1]} patch entries, not a square grid")
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = patches.shape[-1]
    grid = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


class VisionTransformer(nn.Module):
    """ViT with a class token; ``reducer`` decides how the blocks are run.

    forward(images (B, 3, H, W)) -> logits (B, num_classes). H and W must be multiples of
    the patch size; other sizes than ``cfg.img_size`` use a bicubically resized position
    embedding.
    """

    def __init__(self, cfg: ViTConfig, reducer: nn.Module | None = None) -> None:
        super().__init__()
        from tosa_bench.methods.base import TokenReducer

        self.cfg = cfg
        if cfg.stem not in STEMS:
            raise OptionError(f"stem: expected one of {', '.join(STEMS)}, got {cfg.stem!r}")
        self.patch_embed = STEMS[cfg.stem](cfg.patch_size, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.embed_dim))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()
        self.reducer = reducer if reducer is not None else TokenReducer()
        self.reducer.bind(cfg)

    def _init_weights(self) -> None:
        """timm-like init (truncated normal, std 0.02) so an unloaded model is sane."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- embedding ---------------------------------------------------------------------
    def embed(self, images: Tensor) -> Tensor:
        """Patch-embed, prepend CLS, add (resized if needed) position embedding."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        p = self.cfg.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise OptionError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        x, grid = self.patch_embed(images)
        pos = resize_pos_embed(self.pos_embed, grid)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + pos

    # -- token paths ---------------------------------------------------------------------
    def forward_tokens(self, images: Tensor, collect: Sequence[int] = (), need_full: bool = False):
        """Run the blocks through the reducer; see ``ReducerOutput`` for what comes back."""
        return self.reducer(self.blocks, self.embed(images), collect=tuple(collect), need_full=need_full)

    def forward_features(self, images: Tensor) -> Tensor:
        """Final-normed tokens of the reduced set (B, n, D); CLS is token 0."""
        return self.norm(self.forward_tokens(images).tokens)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features[:, 0])

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    def forward_intermediates(self, images: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Token maps after the given blocks (0-based), each (B, N, D) with every one of
        the N input tokens in its original position, whatever the method did to them
        (used by dense heads such as DPT)."""
        depth = self.cfg.depth
        for i in indices:
            if not 0 <= i < depth:
                raise OptionError(f"indices: block {i} out of range for a {depth}-block model")
        out = self.forward_tokens(images, collect=indices)
        return [out.intermediates[i] for i in indices]

    @property
    def token_counts(self):
        """Tokens each block processed in the last forward (list of ``BlockTokens``)."""
        return list(self.reducer.token_counts)

    @torch.no_grad()
    def attention_logits(self, images: Tensor, blocks: Sequence[int]) -> dict[int, Tensor]:
        """Dense pre-softmax attention logits (B, H, N, N) of the given blocks, the teacher
        signal for distilling ToSA selectors. Runs all blocks densely, whatever the reducer."""
        wanted = set(blocks)
        x = self.embed(images)
        maps: dict[int, Tensor] = {}
        for i, blk in enumerate(self.blocks):
            x, a = blk.attention(x, need_logits=i in wanted)
            if i in wanted:
                maps[i] = a.logits
            x = blk.feedforward(x)
        return maps
