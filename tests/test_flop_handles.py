"""MAC counting: our fvcore handles, fvcore's own conv1d handle, and a whole tiny ViT
against a hand formula (conventions in tosa_bench/measure/flops.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tosa_bench.measure.flops import MacCount, count_macs, per_element_handle, sdpa_mac_handle
from tosa_bench.models.configs import get_config
from tosa_bench.models.vit import Attention, VisionTransformer


class Sdpa(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize(
    "q_shape, k_shape, v_shape",
    [
        ((2, 3, 17, 16), (2, 3, 17, 16), (2, 3, 17, 16)),  # self-attention
        ((1, 4, 5, 8), (1, 4, 9, 8), (1, 4, 9, 12)),  # Nq != Nk, d != dv
        ((2, 3, 6, 8), (1, 3, 7, 8), (1, 3, 7, 8)),  # k, v broadcast over batch
        ((5, 6, 4), (5, 10, 4), (5, 10, 3)),  # a single batch dim
    ],
)
def test_sdpa_handle_matches_formula(q_shape, k_shape, v_shape) -> None:
    q, k, v = torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape)
    batch = torch.broadcast_shapes(q_shape[:-2], k_shape[:-2], v_shape[:-2]).numel()
    nq, d = q_shape[-2:]
    nk, dv = v_shape[-2:]
    r = count_macs(Sdpa(), (q, k, v))
    assert r.by_operator["scaled_dot_product_attention"] == batch * nq * nk * (d + dv)
    assert r.by_operator["softmax"] == batch * nq * nk  # the kernel's internal softmax
    assert r.total == batch * nq * nk * (d + dv + 1)
    assert "aten::scaled_dot_product_attention" not in r.uncounted_ops


class Elementwise(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.softmax(-1), torch.log_softmax(x, dim=1), F.gelu(x), nn.GELU(approximate="tanh")(x)


def test_softmax_log_softmax_gelu_count_one_per_element() -> None:
    x = torch.randn(2, 3, 5, 7)
    r = count_macs(Elementwise(), x)
    n = x.numel()
    assert r.by_operator == {"softmax": n, "log_softmax": n, "gelu": 2 * n}
    assert r.total == 4 * n


def test_conv1d_counted_by_fvcore() -> None:
    conv = nn.Conv1d(6, 8, kernel_size=3, padding=1)
    grouped = nn.Conv1d(6, 4, kernel_size=5, groups=2)
    x = torch.randn(2, 6, 20)
    assert count_macs(conv, x).total == 2 * 8 * 6 * 3 * 20  # B * Cout * Cin * k * Lout
    assert count_macs(grouped, x).total == 2 * 4 * (6 // 2) * 5 * 16  # Lout = 20 - 5 + 1
    r = count_macs(conv, x)
    assert r.by_operator == {"conv": r.total}


class Selecting(nn.Module):
    """Uses ops that have no MAC rule: they must be reported, not hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x).relu()
        score = y.mean(-1)
        idx = score.topk(3, dim=1).indices.sort(dim=1).values
        picked = y.gather(1, idx.unsqueeze(-1).expand(-1, -1, y.shape[-1]))
        out = picked.max(dim=1).values * 2.0 + y.index_select(1, idx[0]).sum(1)
        return out.scatter(1, torch.zeros_like(idx[:, :1]), 1.0)


def test_uncounted_ops_are_reported() -> None:
    r = count_macs(Selecting(), torch.randn(2, 5, 8))
    assert r.total == 2 * 5 * 8 * 8  # only the linear layer
    for op in ("topk", "sort", "gather", "max", "relu", "mean", "mul", "add", "index_select", "scatter", "sum"):
        assert f"aten::{op}" in r.uncounted_ops, (op, r.uncounted_ops)
    assert all(v >= 1 for v in r.uncounted_ops.values())
    # pure layout ops are not noise in the report
    assert "aten::unsqueeze" not in r.uncounted_ops and "aten::expand" not in r.uncounted_ops


def _tiny_vit_formula(batch: int = 1) -> int:
    cfg = get_config("test_tiny")
    D, H, C, p = cfg.embed_dim, cfg.num_heads, cfg.num_classes, cfg.patch_size
    n_patches = cfg.grid**2
    N = n_patches + 1
    assert N == 17
    block = (
        N * D * 3 * D  # qkv
        + 2 * N * N * D  # q k^T and attn @ v
        + N * D * D  # proj
        + N * D * 4 * D  # fc1
        + N * 4 * D * D  # fc2
        + 2 * 5 * N * D  # two affine layer norms (fvcore: 5 per element)
        + N * 4 * D  # GELU
        + H * N * N  # softmax
    )
    per_image = n_patches * D * 3 * p * p + cfg.depth * block + 5 * N * D + D * C
    return batch * per_image


@pytest.fixture(scope="module")
def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(get_config("test_tiny"))


def test_tiny_vit_total_matches_hand_formula(tiny_vit: VisionTransformer) -> None:
    r = count_macs(tiny_vit, torch.randn(2, 3, 32, 32))
    assert isinstance(r, MacCount) and isinstance(r.total, int)
    assert r.total == _tiny_vit_formula(batch=2)
    assert r.gmacs == pytest.approx(r.total / 1e9)
    assert r.gflops == pytest.approx(2 * r.total / 1e9)
    # per-module names as the model spells them; a block owns its submodules' MACs
    cfg = get_config("test_tiny")
    N, D = 17, cfg.embed_dim
    assert r.by_module["blocks.3.attn.qkv"] == 2 * N * D * 3 * D
    assert r.by_module["blocks.3"] == r.by_module["blocks.0"] > r.by_module["blocks.3.attn"] > 0
    assert r.by_module[""] == r.total
    # the residual adds are seen and listed, not counted
    assert "aten::add" in r.uncounted_ops


def test_sdpa_path_equals_explicit_path(tiny_vit: VisionTransformer, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(1, 3, 32, 32)
    fused = count_macs(tiny_vit, x)
    assert "scaled_dot_product_attention" in fused.by_operator

    original = Attention.forward

    def explicit(self, x, bias=None, need_logits=False):
        return original(self, x, bias=bias, need_logits=True)

    monkeypatch.setattr(Attention, "forward", explicit)
    manual = count_macs(tiny_vit, x)
    assert "scaled_dot_product_attention" not in manual.by_operator
    assert manual.by_operator["matmul"] == fused.by_operator["scaled_dot_product_attention"]
    assert manual.by_operator["softmax"] == fused.by_operator["softmax"]
    assert manual.total == fused.total == _tiny_vit_formula()
    assert manual.by_module["blocks.2.attn"] == fused.by_module["blocks.2.attn"]


def test_count_macs_restores_training_mode(tiny_vit: VisionTransformer) -> None:
    tiny_vit.train()
    count_macs(tiny_vit, torch.randn(1, 3, 32, 32))
    assert tiny_vit.training
    tiny_vit.eval()


def test_to_dict_names_units() -> None:
    d = count_macs(nn.Linear(4, 3), torch.randn(2, 4)).to_dict()
    assert d["macs"] == 24 and d["gflops"] == pytest.approx(48e-9)
    assert set(d) >= {"macs", "gmacs", "gflops", "macs_by_module", "macs_by_operator", "uncounted_ops"}


def test_deit_tiny_matches_published_gmacs() -> None:
    """DeiT-tiny @224 is 1.26 GMACs (reference §3); our softmax/GELU handles add ~0.25%."""
    model = VisionTransformer(get_config("deit_tiny_patch16_224"))
    r = count_macs(model, torch.randn(1, 3, 224, 224))
    assert round(r.gmacs, 2) == 1.26
    without_elementwise = r.total - r.by_operator["softmax"] - r.by_operator["gelu"]
    assert round(without_elementwise / 1e9, 2) == 1.26
    assert r.by_operator["scaled_dot_product_attention"] == 12 * 2 * 197**2 * 192


class _Traced:
    """Stands in for a traced ``torch._C.Value``: what fvcore's ``get_shape`` reads.
    ``shape=None`` is a value the trace recorded no complete shape for."""

    def __init__(self, shape: tuple[int, ...] | None) -> None:
        self.shape = shape

    def isCompleteTensor(self) -> bool:  # noqa: N802 (torch's name)
        return self.shape is not None

    def type(self) -> "_Traced":
        return self

    def sizes(self) -> list[int]:
        return list(self.shape)


def _sdpa(q, k, v, out=None) -> dict[str, int]:
    return dict(sdpa_mac_handle([_Traced(q), _Traced(k), _Traced(v)], [] if out is None else [_Traced(out)]))


def test_sdpa_handle_without_an_output_shape_broadcasts_q_k_v() -> None:
    """The fallback for a trace that recorded no output shape: every one of q, k, v
    contributes its own broadcast dimension here, so leaving one out, or cutting the
    batch dims one too short or too long, changes the count."""
    q, k, v = (2, 1, 1, 6, 8), (1, 3, 1, 7, 8), (1, 1, 4, 7, 5)
    expect = {"scaled_dot_product_attention": 24 * 6 * 7 * (8 + 5), "softmax": 24 * 6 * 7}
    assert _sdpa(q, k, v) == expect
    assert _sdpa(q, k, v, out=(2, 3, 4, 6, 5)) == expect  # the traced output says the same


def test_sdpa_handle_grouped_query_attention_takes_the_query_heads() -> None:
    # 8 query heads over 2 key/value heads do not broadcast: the kv heads are repeated
    q, k, v = (2, 2, 8, 6, 4), (2, 2, 2, 7, 4), (2, 2, 2, 7, 4)
    assert _sdpa(q, k, v) == {"scaled_dot_product_attention": 32 * 6 * 7 * 8, "softmax": 32 * 6 * 7}


@pytest.mark.parametrize("missing", [0, 1, 2])
def test_sdpa_handle_refuses_untraced_shapes(missing: int) -> None:
    shapes = [(1, 2, 3, 4)] * 3
    shapes[missing] = None
    with pytest.raises(ValueError, match=r"^scaled_dot_product_attention: the trace recorded no shapes for q, k, v$"):
        _sdpa(*shapes)


def test_per_element_handle_counts_its_input_or_its_output() -> None:
    inputs, outputs = [_Traced((2, 3)), _Traced((7,))], [_Traced((4, 5))]
    assert per_element_handle("gelu")(inputs, outputs) == {"gelu": 6}  # default: the first input
    assert per_element_handle("gelu", of="input")(inputs, outputs) == {"gelu": 6}
    assert per_element_handle("softmax", of="output")(inputs, outputs) == {"softmax": 20}
    with pytest.raises(ValueError, match=r"^softmax: the trace recorded no shape$"):
        per_element_handle("softmax")([_Traced(None)], outputs)


def test_counting_a_reduced_model_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    """The counter reports ops it cannot count in the record (``uncounted_ops``), so it
    must not also print fvcore's per-op warnings, uncalled-module notes, tracer warnings
    or torch.jit's deprecation notice on every sweep point."""
    import logging
    import warnings

    from tosa_bench import build_model

    model = build_model("test_tiny", "tosa", keep=0.5).eval()
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        count = count_macs(model, torch.randn(1, 3, 32, 32))
    assert count.uncounted_ops  # there were ops to warn about
    assert [str(w.message) for w in seen] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
