"""Behaviour of the four methods and the random control on tiny models (CPU, fp32)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from tosa_bench.errors import OptionError
from tosa_bench import build_model
from tosa_bench.methods.base import kept_count
from tosa_bench.methods.tosa import TokenSelector, parse_placement
from tosa_bench.kernels import selector_cpu
from tosa_bench.models import chunks

MODEL = "test_deep"  # 12 blocks, 32x32 input, patch 4 -> 64 patches + CLS = 65 tokens
N = 65


def built(variant: str = "dense", **options):
    torch.manual_seed(0)
    return build_model(MODEL, variant, **options)


@pytest.fixture(scope="module")
def dense():
    return built()


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def same_weights(variant: str, dense, **options):
    m = build_model(MODEL, variant, **options)
    result = m.load_state_dict(dense.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("reducer.") for k in result.missing_keys)
    return m


@pytest.mark.parametrize(
    "variant,options",
    [("tosa", {"keep": 1.0}), ("tome", {"r": 0}), ("evit", {"keep": 1.0}), ("random", {"keep": 1.0}), ("tosa", {"keep": 1.0, "placement": "all"})],
)
def test_no_reduction_reproduces_dense(variant, options, dense, images):
    m = same_weights(variant, dense, **options)
    with torch.no_grad():
        assert (m(images) - dense(images)).abs().max() <= 1e-5


@pytest.mark.parametrize("placement", ["alternate", "3,4,5", "all", [2, 7]])
def test_tosa_keeps_every_token_in_order_and_bypass_is_bit_identical(placement, dense, images):
    m = same_weights("tosa", dense, keep=0.5, placement=placement)
    blocks = list(range(12))
    with torch.no_grad():
        out = m.forward_tokens(images, collect=blocks, need_full=True)
    assert out.tokens.shape == (8, N, 32) and torch.equal(out.full, out.tokens)
    k = kept_count(0.5, N - 1)
    sel = m.reducer.last_selection
    assert sorted(sel) == list(m.reducer.placement)
    for i, selection in sel.items():
        assert selection.kind == "ran"
        idx = selection.index
        before, after = out.intermediates[i - 1], out.intermediates[i]
        assert idx.shape == (8, k + 1) and (idx[:, 0] == 0).all()
        assert (idx[:, 1:] > idx[:, :-1]).all(), "selected tokens keep their order"
        skipped = torch.ones(8, N, dtype=torch.bool).scatter_(1, idx, False)
        assert torch.equal(after[skipped], before[skipped]), f"block {i}: bypassed tokens changed"
        assert not torch.equal(after[~skipped], before[~skipped])


def test_tosa_token_counts_and_selector_reads(images):
    m = built("tosa", keep=0.3, placement="alternate")
    for batch in (1, 8):
        with torch.no_grad():
            m(images[:batch])
        k = math.ceil(0.3 * (N - 1))
        for i, t in enumerate(m.token_counts):
            expect = k + 1 if i % 2 == 1 else N
            assert (t.attn, t.mlp) == (expect, expect)
            assert t.selector == (N if i % 2 == 1 else 0)


def test_tome_token_counts(images):
    m = built("tome", r=4)
    for batch in (1, 8):
        with torch.no_grad():
            m(images[:batch])
        n = N
        for t in m.token_counts:
            assert (t.attn, t.mlp) == (n, n - 4)
            n -= 4


def test_tome_caps_merges_at_half():
    m = built("tome", r=40)
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32))
    assert m.token_counts[0].mlp == N - (N - 1) // 2


def test_tome_decreasing_schedule_total():
    m = built("tome", r=2, schedule="decreasing")
    assert sum(m.reducer.per_block) == 2 * 12 and m.reducer.per_block[0] == 4 and m.reducer.per_block[-1] == 0


def test_evit_may_prune_in_the_first_block(images):
    """Unlike a ToSA selector (which needs the block before), EViT prunes with the block's
    own CLS attention, so block 0 is a valid location."""
    m = built("evit", keep=0.5, locations=[0, 5])
    assert m.reducer.locations == (0, 5)
    with torch.no_grad():
        m(images[:1])
    assert m.token_counts[0].attn == N and m.token_counts[0].mlp == kept_count(0.5, N - 1) + 2
    with pytest.raises(OptionError, match="placement"):
        built("tosa", placement=[0, 5])


@pytest.mark.parametrize("fuse", [True, False])
def test_evit_token_counts(fuse, images):
    m = built("evit", keep=0.5, fuse=fuse)
    assert m.reducer.locations == (3, 6, 9)
    for batch in (1, 8):
        with torch.no_grad():
            m(images[:batch])
        n = N
        for i, t in enumerate(m.token_counts):
            assert t.attn == n
            if i in (3, 6, 9):
                n = kept_count(0.5, n - 1) + 1 + int(fuse)
            assert t.mlp == n


@pytest.mark.parametrize(
    "variant,options",
    [("tosa", {"keep": 0.5}), ("tosa", {"keep": 0.4, "placement": "all", "importance": "cls"}), ("tome", {"r": 5}), ("tome", {"r": 3, "prop_attn": False}), ("evit", {"keep": 0.6}), ("evit", {"keep": 0.6, "fuse": False})],
)
def test_batch_equals_single_images(variant, options, images):
    m = built(variant, **options)
    with torch.no_grad():
        batch = m.forward_tokens(images, collect=[5, 11], need_full=True)
        for b in range(images.shape[0]):
            one = m.forward_tokens(images[b : b + 1], collect=[5, 11], need_full=True)
            assert (one.tokens[0] - batch.tokens[b]).abs().max() < 1e-5
            assert (one.full[0] - batch.full[b]).abs().max() < 1e-5
            for i in (5, 11):
                assert (one.intermediates[i][0] - batch.intermediates[i][b]).abs().max() < 1e-5


@pytest.mark.parametrize("variant,options", [("dense", {}), ("tosa", {"keep": 0.5}), ("tome", {"r": 6}), ("evit", {"keep": 0.5}), ("random", {"keep": 0.5})])
def test_dense_outputs_have_all_tokens(variant, options, images):
    m = built(variant, **options)
    with torch.no_grad():
        maps = m.forward_intermediates(images[:2], [2, 5, 8, 11])
        out = m.forward_tokens(images[:2], need_full=True)
    assert [t.shape for t in maps] == [(2, N, 32)] * 4
    assert out.full.shape == (2, N, 32)


def test_evit_dropped_tokens_keep_their_last_feature(images):
    m = built("evit", keep=0.5, locations=[3], fuse=True)
    with torch.no_grad():
        out = m.forward_tokens(images[:2], collect=[3, 11], need_full=True)
        # Recompute block 3's attention half by hand to find the dropped tokens and their features.
        x = m.embed(images[:2])
        for blk in m.blocks[:3]:
            x = blk(x)
        h, att = m.blocks[3].attention(x, need_logits="cls")
    cls_attn = att.logits[:, :, 0].softmax(-1)[:, :, 1:].mean(1)
    k = kept_count(0.5, N - 1)
    dropped = cls_attn.argsort(dim=1, descending=True, stable=True)[:, k:] + 1
    for b in range(2):
        for j in dropped[b]:
            assert torch.equal(out.full[b, j], h[b, j])
            assert torch.equal(out.intermediates[3][b, j], h[b, j])


def test_tome_unmerge_copies_merged_feature_to_every_source():
    m = built("tome", r=8, prop_attn=True)
    with torch.no_grad():
        out = m.forward_tokens(torch.randn(2, 3, 32, 32), need_full=True)
    for b in range(2):
        rows = {tuple(r.tolist()) for r in out.full[b]}
        assert len(rows) == out.tokens.shape[1]  # every full row is one of the merged tokens
        assert torch.equal(out.full[b, 0], out.tokens[b, 0])  # CLS never merged


def test_evit_fused_token_is_the_raw_cls_weighted_sum_of_the_dropped(images):
    """EViT fuses the dropped tokens into sum_j a_j h_j with a_j the CLS attention to token j
    averaged over heads, *not* renormalised over the dropped tokens (youweiliang/evit). The
    dropped weights here sum to about 1/2, so a renormalised sum or a plain mean is about
    twice as large and fails; the hand side uses the dense explicit logits, not the
    reducer's CLS-row path."""
    m = built("evit", keep=0.5, locations=[3], fuse=True)
    seen = {}
    hook = m.blocks[3].norm2.register_forward_pre_hook(lambda mod, args: seen.__setitem__("h", args[0]))
    try:
        with torch.no_grad():
            m(images[:2])
    finally:
        hook.remove()
    with torch.no_grad():
        x = m.embed(images[:2])
        for blk in m.blocks[:3]:
            x = blk(x)
        h, _ = m.blocks[3].attention(x)
        logits = m.attention_logits(images[:2], [3])[3]  # (B, H, N, N)
    weights = logits[:, :, 0].softmax(-1).mean(1)[:, 1:]  # (B, N-1): token j+1's raw CLS attention
    k = kept_count(0.5, N - 1)
    kept = m.reducer.last_selection[3].index
    assert seen["h"].shape == (2, k + 2, 32)  # CLS, k kept, 1 fused
    for b in range(2):
        dropped = sorted(set(range(1, N)) - set(kept[b].tolist()))
        assert len(dropped) == N - 1 - k
        w = weights[b, [j - 1 for j in dropped]]
        assert 0.2 < float(w.sum()) < 0.8  # far from 1: renormalising would show
        expect = (w[:, None] * h[b, dropped]).sum(0)
        assert torch.allclose(seen["h"][b, -1], expect, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(seen["h"][b, -1], h[b, dropped].mean(0), rtol=1e-2, atol=1e-3)
        assert torch.allclose(seen["h"][b, :-1], h[b, kept[b]], atol=1e-5)


def test_tome_proportional_attention_on_duplicates_equals_the_unmerged_tokens():
    """Merging two identical tokens into one of size 2 and adding log(2) to its logits is,
    for every query, the same attention as keeping both copies: so a ToMe run that merges
    exactly the duplicate pairs in block 0 must reproduce the dense run on the duplicated
    sequence in every later block (after unmerge), and must not without ``prop_attn``.
    Sharper attention (qkv weights x10) makes the missing bias clearly visible."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, N, 32, generator=g)
    x[:, 3:N - 1:2] = x[:, 2:N - 2:2]  # pairs (2,3), (4,5), ... (62,63): A token 2i = B token 2i+1
    pairs = (N - 3) // 2
    out = {}
    for prop in (True, False):
        m = built("tome", r=[pairs] + [0] * 11, prop_attn=prop)
        with torch.no_grad():
            for blk in m.blocks:
                blk.attn.qkv.weight.mul_(10)
            run = m.reducer(m.blocks, x, need_full=True)
            y = x
            for blk in m.blocks:
                y = blk(y)
        groups = m.reducer.last_selection[0].index
        assert run.tokens.shape[1] == N - pairs
        assert all(torch.equal(groups[:, 2 * i], groups[:, 2 * i + 1]) for i in range(1, pairs + 1))  # the duplicates merged
        out[prop] = (run.full - y).abs().max().item()
    assert out[True] < 1e-5
    assert out[False] > 1e-2


def test_tome_unmerge_gives_every_token_its_own_group_row_by_row(images):
    """``full`` and every intermediate map must give original token j exactly the feature
    of the merged token j ended up in. The map is rebuilt here from the keys each block's
    attention saw (bipartite matching per block, composed original -> current), then
    checked against ``last_selection`` and row by row against the reduced tokens."""
    from tosa_bench.methods.tome import bipartite_matching, max_merge

    m = built("tome", r=4, prop_attn=True)  # 65 -> 17 tokens: enough left at the end that a wrong map shows
    keys, halves, mlp_out = {}, {}, {}
    hooks = []
    for i, blk in enumerate(m.blocks):
        hooks.append(blk.attn.register_forward_hook(lambda mod, a, o, i=i: keys.__setitem__(i, o.keys)))
        hooks.append(blk.norm2.register_forward_pre_hook(lambda mod, a, i=i: halves.__setitem__(i, a[0])))
        hooks.append(blk.mlp.register_forward_hook(lambda mod, a, o, i=i: mlp_out.__setitem__(i, o)))
    try:
        with torch.no_grad():
            out = m.forward_tokens(images[:3], collect=range(12), need_full=True)
    finally:
        for h in hooks:
            h.remove()
    source = torch.arange(N).expand(3, -1)
    for i in range(12):
        n = keys[i].shape[2]
        r = min(4, max_merge(n))
        if r:
            new_index, _ = bipartite_matching(keys[i].mean(dim=1), r)
            source = new_index.gather(1, source)
            assert torch.equal(m.reducer.last_selection[i].index, source), i
        reduced = halves[i] + mlp_out[i]  # the block's output tokens, (B, n - r, D)
        assert reduced.shape[1] == m.token_counts[i].mlp
        for b in range(3):
            for j in range(N):
                assert torch.equal(out.intermediates[i][b, j], reduced[b, source[b, j]]), (i, b, j)
    for b in range(3):
        for j in range(N):
            assert torch.equal(out.full[b, j], out.tokens[b, source[b, j]]), (b, j)
    assert len(set(source[0].tolist())) == out.tokens.shape[1] < N  # every merged token has a source
    with torch.no_grad():
        maps = m.forward_intermediates(images[:3], [4, 11])
    assert torch.equal(maps[0], out.intermediates[4]) and torch.equal(maps[1], out.full)


def test_random_control_is_seeded(images):
    a, b, c = built("random", keep=0.5, seed=3), built("random", keep=0.5, seed=3), built("random", keep=0.5, seed=4)
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    with torch.no_grad():
        ya, yb, yc = a(images), b(images), c(images)
    assert torch.equal(ya, yb) and not torch.equal(ya, yc)
    assert not a.reducer.selectors and "reducer.selectors" not in str(list(a.state_dict()))


def test_random_control_draws_afresh_per_block_and_per_forward_and_can_pick_every_patch(images):
    """One generator stream per model: each block and each forward draws new tokens (a
    generator re-seeded per call would repeat one choice), and every patch, the last one
    included, can be drawn (with keep 0.5 over 8 images x 6 blocks x 3 forwards a patch
    is missed by chance with probability 2^-144)."""
    m = built("random", keep=0.5)
    picks = []
    with torch.no_grad():
        for _ in range(3):
            m(images)
            picks.append({i: s.index.clone() for i, s in m.reducer.last_selection.items()})
    blocks = sorted(picks[0])
    assert blocks == [1, 3, 5, 7, 9, 11]
    assert not torch.equal(picks[0][1], picks[0][3])
    assert not torch.equal(picks[0][1], picks[1][1])
    chosen = torch.cat([p[i][:, 1:].flatten() for p in picks for i in blocks])
    assert set(chosen.tolist()) == set(range(1, N))


def spy_attention(m) -> list:
    """Wrap each block's attention half; the returned list collects (block, bias,
    need_logits) for every call."""
    calls = []
    for i, blk in enumerate(m.blocks):
        def spy(x, bias=None, need_logits=False, _i=i, _inner=blk.attention):
            calls.append((_i, bias, need_logits))
            return _inner(x, bias=bias, need_logits=need_logits)
        blk.attention = spy
    return calls


@pytest.mark.parametrize(
    "variant,given,recorded",
    [
        ("dense", {}, {}),
        # the defaults (ToMe's r 8 and proportional attention, EViT's keep 0.7 and fused token)
        ("tosa", {}, {"keep": 0.5, "placement": [1, 3, 5, 7, 9, 11], "importance": "mean", "selector_hidden": 4, "selector_kernel": 3}),
        ("random", {}, {"keep": 0.5, "placement": [1, 3, 5, 7, 9, 11], "seed": 0}),
        ("tome", {}, {"r": 8, "prop_attn": True, "schedule": "constant"}),
        ("evit", {}, {"keep": 0.7, "locations": [3, 6, 9], "fuse": True}),
        ("tosa", {"keep": 0.5}, {"keep": 0.5, "placement": [1, 3, 5, 7, 9, 11], "importance": "mean", "selector_hidden": 4, "selector_kernel": 3}),
        ("tosa", {"keep": 0.3, "placement": "last:2", "importance": "cls", "selector_hidden": 6, "selector_kernel": 5},
         {"keep": 0.3, "placement": [10, 11], "importance": "cls", "selector_hidden": 6, "selector_kernel": 5}),
        ("random", {"keep": 0.25, "seed": 7}, {"keep": 0.25, "placement": [1, 3, 5, 7, 9, 11], "seed": 7}),
        ("tome", {"r": 4}, {"r": 4, "prop_attn": True, "schedule": "constant"}),
        ("tome", {"r": 3, "prop_attn": False, "schedule": "decreasing"}, {"r": 3, "prop_attn": False, "schedule": "decreasing"}),
        ("evit", {"keep": 0.5}, {"keep": 0.5, "locations": [3, 6, 9], "fuse": True}),
        ("evit", {"keep": 0.7, "locations": [2, 4], "fuse": False}, {"keep": 0.7, "locations": [2, 4], "fuse": False}),
    ],
)
def test_reducer_options_record_every_resolved_setting_and_rebuild_the_same_model(variant, given, recorded):
    """A record's ``options`` (what its config hash covers) names every setting the model
    ran with, defaults resolved (test_deep: 12 blocks, 2 heads), and building from them
    gives the same reducer."""
    m = built(variant, **given)
    assert m.reducer.options() == recorded
    for sel in getattr(m.reducer, "selectors", {}).values():  # the selectors are built as recorded
        assert (sel.hidden, sel.kernel, sel.conv1.weight.shape[0]) == (recorded["selector_hidden"], recorded["selector_kernel"], recorded["selector_hidden"])
    assert built(variant, **recorded).reducer.options() == recorded


@pytest.mark.parametrize(
    "options,biased",
    [
        ({"r": 4}, set(range(1, 12))),  # merging starts in block 0: every later block weighs by size
        ({"r": [0, 0, 3] + [2] * 9}, set(range(3, 12))),  # nothing merged before block 2's merge
        ({"r": 4, "prop_attn": False}, set()),
        ({"r": 0}, set()),
    ],
)
def test_tome_biases_attention_by_size_only_after_a_merge(images, options, biased):
    """Proportional attention adds log(size) to the keys' logits; before the first merge
    every size is 1, so no bias is passed and the block keeps its unbiased fused path."""
    m = built("tome", **options)
    calls = spy_attention(m)
    with torch.no_grad():
        m(images[:2])
    assert {i for i, bias, _ in calls if bias is not None} == biased


def test_reducers_hand_back_the_full_map_only_when_asked(images):
    """ReducerOutput.full is None unless ``need_full`` (its documented contract)."""
    for variant, options in [("dense", {}), ("tosa", {"keep": 0.5}), ("random", {"keep": 0.5}), ("tome", {"r": 4}), ("evit", {"keep": 0.5})]:
        m = built(variant, **options)
        with torch.no_grad():
            out = m.forward_tokens(images[:2])
        assert out.full is None, variant


def test_predictions_are_recorded_only_when_asked(dense, images):
    """Recording is off by default: a forward stores no predictions and a selector whose
    next block is dense keeps no predicted logits (the N x N tensor the kernel would
    otherwise write)."""
    m = same_weights("tosa", dense, keep=0.5, placement=[4])
    kept: list[bool] = []
    sel = m.reducer.selectors["4"]
    real = sel.received
    def spy(maps, keep_logits=False, **kw):
        if "budget_bytes" not in kw:  # the forward's call, not the calibration's timed runs
            kept.append(keep_logits)
        return real(maps, keep_logits=keep_logits, **kw)

    sel.received = spy
    with torch.no_grad():
        m(images[:2])
    assert m.reducer.record_predictions is False and m.reducer.predictions == {} and kept == [False]


def test_recorded_predictions_are_the_log_softmax_over_keys(dense, images):
    """An identity selector predicts the current attention: block 4's recorded prediction
    is the log-softmax over keys of block 3's logits, for every head and query row."""
    m = same_weights("tosa", dense, keep=0.5, placement=[4])
    m.reducer.record_predictions = True
    with torch.no_grad():
        m(images[:2])
        teacher = dense.attention_logits(images[:2], [3])[3]
    got = m.reducer.predictions[4]
    assert got.shape == teacher.shape
    assert torch.allclose(got, F.log_softmax(teacher, dim=-1), atol=1e-5)


@pytest.mark.parametrize(
    "variant,options,expected",
    [
        ("tosa", {"keep": 0.5}, {0: True, 2: True, 4: True, 6: True, 8: True, 10: True}),
        ("tosa", {"keep": 0.5, "placement": "all"}, {0: True}),  # later selectors read predictions
        ("tosa", {"keep": 0.5, "placement": "3,4,9", "importance": "cls"}, {2: "cls", 8: "cls"}),
        ("random", {"keep": 0.5}, {}),  # the control reads no attention
        ("tosa", {"keep": 1.0}, {}),  # nothing to select: the dense computation
        ("evit", {"keep": 0.5}, {3: "cls", 6: "cls", 9: "cls"}),  # each location its own CLS row
        ("evit", {"keep": 1.0}, {}),
        ("tome", {"r": 4}, {}),
        ("dense", {}, {}),
    ],
)
def test_only_the_blocks_before_a_selector_materialise_their_logits(images, variant, options, expected):
    """Writing a block's N x N logits costs time and memory; only the dense block right
    before a run of ToSA blocks may do it (the CLS row alone under the "cls" rule), and an
    EViT location only its CLS row."""
    m = built(variant, **options)
    calls = spy_attention(m)
    with torch.no_grad():
        m(images[:2])
    assert {i: need for i, _, need in calls if need} == expected


def test_selector_defaults_to_twice_the_heads_and_kernel_3():
    sel = TokenSelector(num_heads=4)
    assert (sel.hidden, sel.kernel) == (8, 3)
    assert sel.conv1.weight.shape == (8, 4, 3) and sel.conv2.weight.shape == (4, 8, 3)


@pytest.mark.parametrize("heads,hidden,kernel", [(3, 6, 1), (3, 7, 3), (2, 4, 5), (1, 2, 7)])
def test_selector_takes_any_odd_kernel_and_at_least_twice_the_heads(heads, hidden, kernel):
    """Both convolutions have the shapes asked for and pad by kernel // 2 on each side, so
    a row keeps its N keys (the nn.Conv1d modules are what saved selectors hold, and what
    the float64 reference in tests/test_selector_cpu.py runs)."""
    sel = TokenSelector(num_heads=heads, hidden=hidden, kernel=kernel)
    assert (sel.num_heads, sel.hidden, sel.kernel) == (heads, hidden, kernel)
    assert sel.conv1.weight.shape == (hidden, heads, kernel) and sel.conv2.weight.shape == (heads, hidden, kernel)
    assert sel.conv1.padding == sel.conv2.padding == (kernel // 2,)
    rows = torch.randn(4, heads, 9)
    assert sel.conv2(sel.conv1(rows)).shape == (4, heads, 9)


@pytest.mark.parametrize("heads,hidden,kernel,message", [
    (3, 5, 3, "selector_hidden must be >= 2 x heads = 6 (needed for the identity start), got 5"),
    (4, 1, 3, "selector_hidden must be >= 2 x heads = 8 (needed for the identity start), got 1"),
    (3, 6, 2, "selector_kernel must be a positive odd integer, got 2"),
    (3, 6, 4, "selector_kernel must be a positive odd integer, got 4"),
    (3, 6, 0, "selector_kernel must be a positive odd integer, got 0"),
    (3, 6, -1, "selector_kernel must be a positive odd integer, got -1"),
])
def test_selector_refuses_too_few_channels_and_even_kernels(heads, hidden, kernel, message):
    with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
        TokenSelector(num_heads=heads, hidden=hidden, kernel=kernel)


def test_selector_starts_as_reuse_current_attention():
    sel = TokenSelector(num_heads=3, hidden=10, kernel=5)
    logits = torch.randn(2, 3, 17, 17) * 4
    assert torch.equal(sel(logits), logits)
    assert torch.allclose(sel.log_attention(logits), F.log_softmax(logits, dim=-1), atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3, 5])
@pytest.mark.parametrize("budget", [None, 4 * 10 * 17 * 17 * 2, 4 * 10 * 17 * 17, 4 * 10 * 17 * 5, 1])
def test_selector_chunked_received_equals_whole_batch(batch, budget):
    """The CPU path works through the rows in chunks (whole images, then blocks of one
    image's rows, including chunks that split the batch or the rows unevenly); it must
    give the same sums and logits as one whole-batch call."""
    sel = TokenSelector(num_heads=3, hidden=10, kernel=3)
    with torch.no_grad():
        for conv in (sel.conv1, sel.conv2):
            conv.weight.normal_(std=0.3)
            conv.bias.normal_(std=0.3)
    logits = torch.randn(batch, 3, 17, 17) * 3
    imgs, rows = sel.chunking(batch, 17, 17, budget)
    expect_split = {None: (batch, 17), 4 * 10 * 17 * 17 * 2: (min(2, batch), 17), 4 * 10 * 17 * 17: (1, 17), 4 * 10 * 17 * 5: (1, 5), 1: (1, 1)}
    assert (imgs, rows) == expect_split[budget]
    with torch.no_grad():
        whole = sel(logits)
        received, z = sel.received(logits, keep_logits=True, budget_bytes=budget)
        received_only, none = sel.received(logits, budget_bytes=budget)
    assert none is None and z.shape == whole.shape
    # each logit is a sum of ~60 products; oneDNN may sum them in another order for a chunk
    # of 5 rows than for 17 (it did with another thread count), so allow a few float32 ulps
    # of the largest logit, not an absolute 1e-6 (below one ulp once |z| > 8)
    ulp = torch.finfo(torch.float32).eps * whole.abs().max()
    assert (z - whole).abs().max() <= 16 * ulp
    expect = whole.softmax(-1).sum(dim=(1, 2))
    assert torch.allclose(received, expect, atol=1e-5) and torch.equal(received, received_only)
    assert sel.chunking(batch, 17, 17, 0) == (batch, 17)  # 0: one piece


@pytest.mark.parametrize("dtype,calls", [(torch.float32, 4 * 3), (torch.bfloat16, 2 * 3)])
def test_selector_received_runs_in_the_chunks_its_budget_allows(dtype, calls):
    """received() works through the map in the pieces chunking() plans, sized by the maps'
    own element size: a budget of 10 hidden channels x 17 keys x 5 rows of fp32 is 4
    pieces of one image's 17 rows, or 2 pieces (10 + 7 rows) in bf16, per image."""
    sel = TokenSelector(num_heads=3, hidden=10, kernel=3).to(dtype)
    seen = []
    inner = sel.forward
    sel.forward = lambda x: (seen.append(tuple(x.shape)), inner(x))[1]
    logits = torch.randn(3, 3, 17, 17).to(dtype)
    with torch.no_grad():
        _, z = sel.received(logits, keep_logits=True, budget_bytes=4 * 10 * 17 * 5)
        assert len(seen) == calls and sum(s[2] for s in seen) == 3 * 17
        whole = inner(logits)  # the pieces' logits put back together, row for row (to a few ulps,
        # as in the test above: oneDNN may sum a piece in another order)
        assert z.shape == whole.shape
        assert (z.float() - whole.float()).abs().max() <= 16 * torch.finfo(dtype).eps * whole.float().abs().max()


@pytest.mark.parametrize("budget", [1, 4 * 3 * 9 * 9 * 2, chunks.FUSED])
@pytest.mark.parametrize("bias_batch", [None, 1, 3])
def test_explicit_attention_in_chunks_equals_one_piece(bias_batch, budget):
    """On a CPU the explicit path runs a few images at a time, or takes its output from the
    fused attention and its logits from their own product (FUSED); with one or two images
    per chunk (two splits the batch of 3 unevenly), or fused, it must match the one-piece
    result: output to float rounding, logits exactly (one product either way), with a
    per-image or shared bias."""
    from tosa_bench.models.vit import Attention

    torch.manual_seed(0)
    attn = Attention(dim=12, num_heads=3)
    x = torch.randn(3, 9, 12)
    bias = None if bias_batch is None else torch.randn(bias_batch, 1, 1, 9)
    with torch.no_grad():
        q, k, v = attn.qkv(x).reshape(3, 9, 3, 3, 4).permute(2, 0, 3, 1, 4).unbind(0)
        out_whole, logits_whole = attn._explicit(q, k, v, bias, budget_bytes=None)
        out_split, logits_split = attn._explicit(q, k, v, bias, budget_bytes=budget)
        whole = attn(x, bias=bias, need_logits=True)
        fused = attn(x, bias=bias)
    tol = 1e-6 if budget != chunks.FUSED else 1e-5
    assert torch.allclose(out_split, out_whole, atol=tol) and torch.equal(logits_split, logits_whole)
    assert torch.allclose(whole.out, fused.out, atol=1e-5)


@pytest.mark.parametrize("importance", ["mean", "cls"])
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_tosa_model_in_chunks_equals_one_piece(pin_budget, dense, importance, batch):
    """The whole ToSA forward at budgets that split images and rows selects the same
    tokens and gives the same outputs as one piece (the budget only moves work)."""
    m = same_weights("tosa", dense, keep=0.5, placement=[2, 3, 5], importance=importance)
    torch.manual_seed(batch)
    with torch.no_grad():
        for p in m.reducer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    row = m.reducer.selectors["2"].hidden * N * 4  # bytes of one query row's hidden activation
    runs = {}
    for budget in (0, 1, 7 * row, 2 * N * row, chunks.FUSED):  # one piece; one row; 7 rows; 2 images; fused
        if budget == chunks.FUSED and selector_cpu.kernel() is None:
            continue  # no compiler here: tests/test_selector_cpu.py says so
        pin_budget(budget)
        with torch.no_grad():
            out = m(x)
        runs[budget] = (out, {i: s.index.clone() for i, s in m.reducer.last_selection.items()})
    ref_out, ref_sel = runs.pop(0)
    for out, sel in runs.values():
        assert sel.keys() == ref_sel.keys() and all(torch.equal(sel[i], ref_sel[i]) for i in sel)
        assert torch.allclose(out, ref_out, atol=1e-5)


def test_untrained_tosa_selects_by_current_attention(dense, images):
    """With identity selectors, block l's choice = tokens most attended in block l-1."""
    m = same_weights("tosa", dense, keep=0.25, placement=[4])
    with torch.no_grad():
        m(images)
        logits = dense.attention_logits(images, [3])[3]
    received = logits.softmax(-1).mean(dim=(1, 2))[:, 1:]
    k = kept_count(0.25, N - 1)
    expect = received.topk(k, dim=1).indices.sort(dim=1).values + 1
    assert torch.equal(m.reducer.last_selection[4].index[:, 1:], expect)


def test_selectors_train_alone_with_frozen_backbone(dense, images):
    m = same_weights("tosa", dense, keep=0.5, placement=[3, 4])
    for name, p in m.named_parameters():
        p.requires_grad_(name.startswith("reducer."))
    m.reducer.record_predictions = True
    m.train()
    m(images[:2])
    teacher = dense.attention_logits(images[:2], [3, 4])
    loss = sum(F.kl_div(m.reducer.predictions[i], F.log_softmax(teacher[i], -1), log_target=True, reduction="batchmean") for i in (3, 4))
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("reducer.selectors.") for n in grads)
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_placement_schemes():
    assert parse_placement("alternate", 12) == (1, 3, 5, 7, 9, 11)
    assert parse_placement("alternate-even", 12) == (2, 4, 6, 8, 10)
    assert parse_placement("second-half", 12) == tuple(range(6, 12))
    assert parse_placement("last:3", 12) == (9, 10, 11)
    assert parse_placement("all", 4) == (1, 2, 3)
    assert parse_placement("7, 3", 12) == (3, 7)
    with pytest.raises(OptionError, match="needs an integer after 'last:'"):
        parse_placement("last:3:4", 12)  # not the first or last number of it
    assert parse_placement("last:1", 12) == (11,) and parse_placement("last:11", 12) == tuple(range(1, 12))  # both ends
    with pytest.raises(OptionError, match=r"block index -1 out of range \[1, 11\]"):
        parse_placement("3, -1", 12)  # a negative index is read as one, and refused as out of range
    with pytest.raises(OptionError, match="unknown scheme '3-'; use one of alternate, alternate-even, second-half, all, last:K or"):
        parse_placement("3-", 12)
    for k in ("last:0", "last:12"):
        with pytest.raises(OptionError, match=r"must name 1\.\.11 blocks"):
            parse_placement(k, 12)
    for empty in ([], "alternate-even"):  # a 2-block model has no even block after block 0
        with pytest.raises(OptionError, match=r"^placement: no block selected$"):
            parse_placement(empty, 2)


@pytest.mark.parametrize(
    "variant,options,named",
    [
        ("tosa", {"keep": 0.0}, "keep"),
        ("tosa", {"keep": -0.5}, "keep"),
        ("tosa", {"keep": 1.5}, "keep"),
        ("tosa", {"keep": float("nan")}, "keep"),
        ("evit", {"keep": float("nan")}, "keep"),
        ("random", {"keep": 2}, "keep"),
        ("tosa", {"placement": [0, 3]}, "placement"),
        ("tosa", {"placement": [12]}, "placement"),
        ("tosa", {"placement": "every-third"}, "placement"),
        ("random", {"placement": "3,99"}, "placement"),
        ("evit", {"locations": [12]}, "locations"),
        ("evit", {"locations": [-1]}, "locations"),
        ("evit", {"locations": []}, "locations"),
        ("tome", {"r": -1}, "r"),
        ("tome", {"r": 1.5}, "r"),
        ("tome", {"r": [1, 2]}, "r"),
        ("tome", {"keep": 0.5}, "keep"),
        ("tome", {"prop_attn": 1}, "prop_attn"),
        ("random", {"seed": 1.5}, "seed"),
        ("random", {"seed": True}, "seed"),
        ("evit", {"fuse": "yes"}, "fuse"),
        ("tosa", {"selector_kernel": 2}, "selector_kernel"),
        ("tosa", {"importance": "max"}, "importance"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(variant, options, named):
    """Each message starts with the option's own name (a one-line error the user can act on)."""
    with pytest.raises(ValueError, match=rf"^{named}\b"):
        build_model(MODEL, variant, **options)


def test_unknown_model_and_variant():
    with pytest.raises(ValueError, match="model"):
        build_model("deit_huge_patch3", "dense")
    with pytest.raises(ValueError, match="variant"):
        build_model(MODEL, "pruning")


def test_state_dict_keys_are_timm_names_plus_method_prefix():
    keys = set(built("tosa", keep=0.5).state_dict())
    backbone = {k for k in keys if not k.startswith("reducer.")}
    assert backbone == set(built().state_dict())
    assert {k.split(".")[0] for k in backbone} == {"cls_token", "pos_embed", "patch_embed", "blocks", "norm", "head"}
    assert all(k.startswith("reducer.selectors.") for k in keys - backbone)


@pytest.mark.parametrize(
    "variant,options",
    [("dense", {}), ("tosa", {"keep": 0.37, "placement": "3,4,9"}), ("random", {"keep": 0.5}), ("tome", {"r": 7}), ("tome", {"r": 5, "schedule": "decreasing"}), ("evit", {"keep": 0.6}), ("evit", {"keep": 0.9, "fuse": False, "locations": [1, 2]})],
)
def test_reported_counts_equal_the_schedule_derived_from_options(variant, options, images):
    from tosa_bench.methods.registry import expected_token_counts

    m = built(variant, **options)
    with torch.no_grad():
        m(images[:2])
    assert m.token_counts == expected_token_counts(m.reducer, N)


def test_cls_rule_runs_on_the_cls_row_only_and_matches_the_full_map(dense, images):
    """The selector treats rows independently, so the CLS-row fast path must choose what the
    full-map computation would choose (identity selectors: block 3's CLS attention)."""
    m = same_weights("tosa", dense, keep=0.25, placement=[4], importance="cls")
    with torch.no_grad():
        m(images)
        logits = dense.attention_logits(images, [3])[3]
    assert m.token_counts[4].selector_rows == 1
    received = logits[:, :, 0].softmax(-1).sum(1)[:, 1:]
    expect = received.topk(kept_count(0.25, N - 1), dim=1).indices.sort(dim=1).values + 1
    assert torch.equal(m.reducer.last_selection[4].index[:, 1:], expect)


def test_tosa_writes_bypassed_tokens_in_place_only_where_it_owns_x(dense, images):
    """Without a gradient ToSA writes a block's tokens back into x itself (no full copy of
    the token tensor per block), and gets bit-for-bit what the copying path gets; with a
    gradient, or where x is a collected intermediate, it copies."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Scatters(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.startswith("scatter"):
                self.ops.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    m = same_weights("tosa", dense, keep=0.5)  # blocks 1, 3, ..., 11 choose
    with torch.no_grad(), Scatters() as seen:
        fast = m(images)
    assert seen.ops == ["scatter_"] * 6
    with Scatters() as seen:
        copied = m(images)
    assert seen.ops == ["scatter"] * 6 and torch.equal(fast, copied.detach())
    with torch.no_grad(), Scatters() as seen:
        out = m.forward_tokens(images, collect=[2, 6])
    assert seen.ops == ["scatter_", "scatter", "scatter_", "scatter", "scatter_", "scatter_"]  # blocks 3 and 7 follow a collected x
    assert torch.equal(m.norm(out.tokens)[:, 0] @ m.head.weight.T + m.head.bias, fast)
