"""The fvcore counter against the analytic formula, and against published GMACs."""

from __future__ import annotations

import pytest
import torch

from tosa_bench import build_model
from tosa_bench.measure.analytic import analytic_gmacs, analytic_macs
from tosa_bench.measure.flops import count_macs
from tosa_bench.methods.registry import expected_token_counts

CASES = [
    ("dense", {}),
    ("tosa", {"keep": 0.5}),
    ("tosa", {"keep": 0.3, "placement": "second-half"}),
    ("tosa", {"keep": 0.7, "placement": "3,4,5", "selector_hidden": 8, "selector_kernel": 5}),
    ("tosa", {"keep": 0.5, "importance": "cls", "placement": "all"}),
    ("tosa", {"keep": 0.5, "importance": "cls"}),
    ("tosa", {"keep": 0.4, "importance": "cls", "placement": "2,3,5"}),
    ("tosa", {"keep": 0.9}),  # test_tiny: runs 15 of 16 patches, one short of all
    ("tosa", {"keep": 1.0}),  # every token runs: no selector runs, dense's MACs (the A/A check's premise)
    ("random", {"keep": 0.4}),
    ("tome", {"r": 4}),
    ("tome", {"r": 3, "schedule": "decreasing", "prop_attn": False}),
    ("evit", {"keep": 0.7}),
    ("evit", {"keep": 0.5, "fuse": False, "locations": [1, 2]}),
    ("evit", {"keep": 0.9}),  # test_tiny: keeps 15 of 16 patches, one short of all
    ("evit", {"keep": 1.0}),  # locations that drop nothing add nothing
]


def reducer_outside(counted) -> int:
    """What the counter attributes to the reducer itself, outside its child modules (the
    selectors): ToMe's matching, EViT's CLS softmax, ToSA's softmax of predicted logits."""
    children = {k for k in counted.by_module if k.startswith("reducer.") and k.count(".") == 1}
    return counted.by_module.get("reducer", 0) - sum(counted.by_module[k] for k in children)


@pytest.mark.parametrize("variant,options", CASES)
@pytest.mark.parametrize("model", ["test_tiny", "test_deep", "demo_vit"])  # demo_vit: the convolutional stem
def test_counter_agrees_with_formula(model, variant, options):
    """Exact, not within a tolerance: both sides are integer MAC counts under the same
    conventions, so any difference is a bug on one side (a 1% slack hid a final norm counted
    on the wrong tokens, and would hide EViT's CLS row or ToMe's matching on small models)."""
    m = build_model(model, variant, **options)
    x = torch.randn(1, 3, m.cfg.img_size, m.cfg.img_size)
    counted = count_macs(m, x)
    formula = analytic_macs(m.cfg, m.reducer, m.token_counts)
    assert m.token_counts == expected_token_counts(m.reducer, m.cfg.num_tokens)
    # Per block: the block's own modules plus its selector module.
    got = [counted.by_module[f"blocks.{i}"] + counted.by_module.get(f"reducer.selectors.{i}", 0) for i in range(len(formula.blocks))]
    assert got == list(formula.blocks)
    # What runs in the reducer itself is not per block in the counter: compare the sum.
    assert reducer_outside(counted) == sum(formula.outside)
    assert counted.by_module["patch_embed"] == formula.embed
    assert counted.by_module["norm"] + counted.by_module["head"] == formula.tail
    assert counted.total == formula.total
    assert all(type(v) is int for v in (formula.embed, formula.tail, *formula.blocks, *formula.outside))


@pytest.mark.parametrize("variant,options", [("dense", {}), ("tosa", {"keep": 0.5}), ("tome", {"r": 4}), ("evit", {"keep": 0.7})])
def test_analytic_gmacs_at_another_image_size_is_the_counters(variant, options):
    """``analytic_gmacs(..., img_size=)`` (what ``--match gmacs`` and the tables use at a
    non-default resolution) must cost the model at that size, not at its default one."""
    m = build_model("test_tiny", variant, img_size=64, **options)
    counted = count_macs(m, torch.randn(1, 3, 64, 64))
    assert analytic_gmacs("test_tiny", variant, options, img_size=64) == pytest.approx(counted.gmacs, rel=1e-12)
    assert analytic_gmacs("test_tiny", variant, options) < counted.gmacs / 3


@pytest.mark.parametrize("num_classes", [0, 1])
def test_counter_agrees_without_a_classifier_and_with_one_class(num_classes):
    """A backbone for a dense head (no classifier: an identity head, 0 MACs) and a
    one-logit head (D MACs) are costed like the counter sees them."""
    m = build_model("test_tiny", "tosa", keep=0.5, num_classes=num_classes)
    counted = count_macs(m, torch.randn(1, 3, 32, 32))
    formula = analytic_macs(m.cfg, m.reducer, m.token_counts)
    assert counted.by_module.get("head", 0) == m.cfg.embed_dim * num_classes
    assert counted.total == formula.total


def test_counter_agrees_on_deit_small_variants():
    for variant, options in [("dense", {}), ("tosa", {"keep": 0.5}), ("tome", {"r": 13}), ("evit", {"keep": 0.7})]:
        m = build_model("deit_small_patch16_224", variant, **options)
        counted = count_macs(m, torch.randn(1, 3, 224, 224))
        formula = analytic_macs(m.cfg, m.reducer, m.token_counts)
        assert counted.total == formula.total, variant


def test_selector_cost_is_visible_not_hidden():
    m = build_model("test_deep", "tosa", keep=0.5)
    counted = count_macs(m, torch.randn(1, 3, 32, 32))
    assert counted.by_module["reducer.selectors.1"] > 0
    assert "aten::topk" in counted.uncounted_ops and {"aten::scatter", "aten::scatter_"} & set(counted.uncounted_ops)  # in place under no_grad


def formula_gmacs(name: str, variant: str = "dense", **options) -> float:
    m = build_model(name, variant, **options)
    counts = expected_token_counts(m.reducer, m.cfg.num_tokens)
    return analytic_macs(m.cfg, m.reducer, counts).gmacs


@pytest.mark.parametrize("name,published", [("deit_tiny_patch16_224", 1.26), ("deit_small_patch16_224", 4.61), ("deit_base_patch16_224", 17.58)])
def test_dense_deit_totals(name, published):
    assert formula_gmacs(name) == pytest.approx(published, rel=0.01)


@pytest.mark.parametrize("keep,published", [(0.9, 4.0), (0.8, 3.5), (0.7, 3.0), (0.6, 2.6), (0.5, 2.3)])
def test_evit_readme_gmacs_deit_small_fused(keep, published):
    # EViT README (youweiliang/evit), DeiT-S, fused, 4th/7th/10th block; figures rounded to 0.1.
    assert round(formula_gmacs("deit_small_patch16_224", "evit", keep=keep, fuse=True), 1) == published


@pytest.mark.parametrize("r,published", [(8, 3.4), (13, 2.7), (16, 2.3)])
def test_tome_paper_gmacs_deit_small(r, published):
    # ToMe paper, DeiT-S at r = 8 / 13 / 16; figures rounded to 0.1.
    assert round(formula_gmacs("deit_small_patch16_224", "tome", r=r), 1) == published


@pytest.mark.parametrize("variant,options", [
    ("tosa", {"keep": 0.5, "placement": [1, 2, 4]}),  # consecutive ToSA blocks, a dense block between
    ("tosa", {"keep": 0.25, "placement": "alternate", "importance": "cls"}),
    ("tome", {"r": 3}),
    ("evit", {"keep": 0.5, "locations": [1, 3]}),
])
def test_count_point_record_fields_against_the_formula_and_by_hand(variant, options):
    """Every field count_point writes into a record, each from an independent value: the
    per-block GMACs (selector included) and the MACs outside blocks from the closed form,
    block by block and exactly; the selectors' MACs and parameters by hand (two Conv1d,
    H -> 2H -> H, kernel 3, with biases); the backbone's parameters from a dense model;
    GFLOPs = 2 x GMACs; the ideal from the two formulas."""
    from tosa_bench.measure.point import count_point
    from tosa_bench.methods.base import TokenReducer
    from tosa_bench.methods.tosa import selector_macs

    torch.manual_seed(0)
    model = build_model("test_tiny", variant, **options).eval()
    cfg = model.cfg
    rec = count_point(model)
    counts = expected_token_counts(model.reducer, cfg.num_tokens)
    formula = analytic_macs(cfg, model.reducer, counts)
    assert rec["gmacs_per_block"] == [m / 1e9 for m in formula.blocks]
    assert rec["gmacs_method_outside_blocks"] == pytest.approx(sum(formula.outside) / 1e9, abs=1e-15)
    assert rec["gmacs"] == pytest.approx(formula.gmacs, rel=1e-12) and rec["gmacs_analytic"] == formula.gmacs
    assert rec["gflops"] == pytest.approx(2 * rec["gmacs"], rel=1e-12)
    dense = build_model("test_tiny", "dense")
    assert rec["params_backbone"] == sum(p.numel() for p in dense.parameters())
    H, N = cfg.num_heads, cfg.num_tokens
    placement = list(model.reducer.placement) if variant == "tosa" else []
    rows = 1 if options.get("importance") == "cls" else N
    per_selector = (2 * H) * H * 3 + 2 * H + H * (2 * H) * 3 + H
    assert rec["params_method"] == per_selector * len(placement)
    assert rec["params"] == rec["params_backbone"] + rec["params_method"]
    assert rec["gmacs_selectors"] == pytest.approx(sum(selector_macs(H, 2 * H, 3, N, rows) for _ in placement) / 1e9, abs=1e-15)
    plain = TokenReducer()
    plain.bind(cfg)
    dense_total = analytic_macs(cfg, plain, expected_token_counts(plain, N)).total
    assert rec["gmacs_dense_analytic"] == dense_total / 1e9 and rec["speedup_ideal"] == dense_total / formula.total
    assert rec["tokens_per_block"] == [[t.attn, t.mlp] for t in counts] and rec["selector_tokens_per_block"] == [t.selector for t in counts]
    assert rec["img_size"] == 32
    assert rec["uncounted_ops"] == count_macs(model, torch.randn(1, 3, 32, 32)).uncounted_ops
