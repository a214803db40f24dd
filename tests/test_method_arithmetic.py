"""Hand values for the small arithmetic every token count and every cost rests on.

The behaviour tests compute their own expectations with these same helpers (``kept_count``
for k, ``expected_token_counts`` for the schedule), so a bug in a helper would cancel out
there; here each is pinned to numbers worked out by hand.
"""

from __future__ import annotations

import pytest

from tosa_bench import build_model
from tosa_bench.errors import OptionError
from tosa_bench.methods.base import BlockTokens, kept_count, validate_block_indices, validate_keep
from tosa_bench.methods.evit import default_locations
from tosa_bench.methods.registry import expected_token_counts
from tosa_bench.methods.tome import max_merge, r_schedule, tome_r_for_keep
from tosa_bench.methods.tosa import selector_macs


@pytest.mark.parametrize(
    "keep,n,k",
    [
        (0.7, 196, 138),  # 137.20000000000002 in floats: ceil must not make it 139
        (0.3, 10, 3),  # 3.0000000000000004
        (0.5, 64, 32),
        (0.51, 64, 33),
        (1.0, 64, 64),
        (0.01, 64, 1),  # 0.64: never below one token
        (0.001, 5, 1),
    ],
)
def test_kept_count(keep, n, k):
    assert kept_count(keep, n) == k and type(kept_count(keep, n)) is int


def test_validate_keep_accepts_0_to_1_and_names_what_it_refuses():
    assert validate_keep(1) == 1.0 and type(validate_keep(1)) is float
    assert validate_keep(0.25) == 0.25 and validate_keep(1e-9) == 1e-9
    for bad, message in [
        (True, "keep must be a number in (0, 1], got True"),
        ("0.5", "keep must be a number in (0, 1], got '0.5'"),
        (None, "keep must be a number in (0, 1], got None"),
        (0.0, "keep must be in (0, 1], got 0.0"),
        (-0.5, "keep must be in (0, 1], got -0.5"),
        (1.0000001, "keep must be in (0, 1], got 1.0000001"),
        (float("nan"), "keep must be in (0, 1], got nan"),
    ]:
        with pytest.raises(OptionError) as err:
            validate_keep(bad)
        assert str(err.value) == message


def test_validate_block_indices_sorts_and_names_what_it_refuses():
    assert validate_block_indices("where", [5, 0, 11], 12) == (0, 5, 11)
    assert validate_block_indices("where", (3,), 12, lowest=3) == (3,)
    for indices, lowest, message in [
        ([3.0], 0, "where: block index 3.0 is not an integer"),
        (["3"], 0, "where: block index '3' is not an integer"),
        ([False], 0, "where: block index False is not an integer"),
        ([12], 0, "where: block index 12 out of range [0, 11] for a 12-block model"),
        ([0], 1, "where: block index 0 out of range [1, 11] for a 12-block model"),
        ([4, 2, 4], 0, "where: repeated block index in [4, 2, 4]"),
    ]:
        with pytest.raises(OptionError) as err:
            validate_block_indices("where", indices, 12, lowest=lowest)
        assert str(err.value) == message


def test_max_merge():
    assert [max_merge(n) for n in (17, 16, 3, 2, 1)] == [8, 7, 1, 0, 0]  # CLS protected: half the rest, rounded down
    assert max_merge(16, protect_cls=False) == 8 and max_merge(17, protect_cls=False) == 8
    assert type(max_merge(17)) is int


def test_tome_r_for_keep():
    # r = round((1 - keep)(N - 1) / L); DeiT-S/224: N = 197, L = 12
    assert tome_r_for_keep(0.5, 197, 12) == 8  # 8.17
    assert tome_r_for_keep(0.7, 197, 12) == 5  # 4.9
    assert tome_r_for_keep(1.0, 197, 12) == 0
    assert tome_r_for_keep(0.5, 17, 6) == 1  # 1.33
    assert tome_r_for_keep(0.4, 6, 1) == 3  # 0.6 x 5 patches: 3.6 with N, 2.4 with N - 2


def test_r_schedule():
    assert r_schedule(8, 12) == (8,) * 12
    # linear from 2r to 0, rounded: same total as constant
    assert r_schedule(2, 12, "decreasing") == (4, 4, 3, 3, 3, 2, 2, 1, 1, 1, 0, 0)
    assert r_schedule(3, 6, "decreasing") == (6, 5, 4, 2, 1, 0)
    assert r_schedule(3, 2, "decreasing") == (6, 0)
    assert r_schedule(3, 1, "decreasing") == (0,)
    assert r_schedule([1, 0, 2], 3) == (1, 0, 2)
    assert r_schedule(0, 3) == (0, 0, 0)


@pytest.mark.parametrize("r,schedule", [([1, 1.5], "constant"), ([1, -1], "constant"), ([True, 1], "constant"), ([1], "constant"),
                                        (1.5, "constant"), (-1, "decreasing"), (True, "constant"), (2, "cosine")])
def test_r_schedule_refuses(r, schedule):
    with pytest.raises(OptionError, match="schedule" if schedule == "cosine" else "r"):
        r_schedule(r, 2, schedule)


def test_default_evit_locations():
    assert default_locations(12) == (3, 6, 9)  # EViT's 4th, 7th and 10th
    assert default_locations(24) == (6, 12, 18)
    assert default_locations(6) == (1, 3, 4)
    assert default_locations(4) == (1, 2, 3)
    assert default_locations(2) == (1,)  # never block 0, duplicates merged


def test_selector_macs():
    # conv1 H -> C and conv2 C -> H, kernel k, at every (row, key): 2 rows n C H k
    assert selector_macs(num_heads=3, hidden=6, kernel=3, n=17, rows=17) == 2 * 17 * 17 * 6 * 3 * 3
    assert selector_macs(num_heads=6, hidden=12, kernel=5, n=197, rows=1) == 2 * 197 * 12 * 6 * 5


def _counts(variant, **options):
    return expected_token_counts(build_model("test_deep", variant, **options).reducer, 65)


def test_token_schedules_by_hand():
    """test_deep: 64 patches + CLS = 65 tokens, 12 blocks."""
    full, ran = BlockTokens(65, 65), BlockTokens(33, 33, 65, 65)
    assert _counts("tosa", keep=0.5) == [ran if i % 2 else full for i in range(12)]  # alternate: 1, 3, ... 11
    assert _counts("tosa", keep=0.5, importance="cls", placement=[4])[4] == BlockTokens(33, 33, 65, 1)
    assert _counts("tosa", keep=1.0) == [full] * 12  # nothing dropped: no selector runs
    assert _counts("tosa", keep=0.98)[1] == BlockTokens(64, 64, 65, 65)  # 63 of 64 patches: one dropped still counts
    assert _counts("random", keep=0.5, placement=[5])[5] == BlockTokens(33, 33)
    # EViT at 3, 6, 9: ceil(0.5 (n - 1)) kept, + CLS, + the fused token
    evit = [(65, 65)] * 3 + [(65, 34)] + [(34, 34)] * 2 + [(34, 19)] + [(19, 19)] * 2 + [(19, 11)] + [(11, 11)] * 2
    assert _counts("evit", keep=0.5) == [BlockTokens(a, m) for a, m in evit]
    assert [t.mlp for t in _counts("evit", keep=0.5, fuse=False)][3::3] == [33, 17, 9]
    assert _counts("evit", keep=1.0) == [full] * 12
    # 63 of 64 patches kept: one dropped (with fusing, one dropped and one fused token cost the same)
    assert _counts("evit", keep=0.98, fuse=False)[3] == BlockTokens(65, 64)
    # ToMe r = 8 until the bipartite cap (half of the non-CLS tokens) takes over
    tome = [65, 57, 49, 41, 33, 25, 17, 9, 5, 3, 2, 2, 2]
    assert _counts("tome", r=8) == [BlockTokens(a, m) for a, m in zip(tome, tome[1:])]


# ----------------------------------------------------------------------------- --match gmacs
def _match(method, keep, target, cost, knobs=None):
    from tosa_bench.methods.registry import Knobs, get
    from tosa_bench.models.configs import get_config

    return get(method).match_gmacs(keep, get_config("test_tiny"), knobs or Knobs(), target, cost)


def test_evit_match_searches_keep_001_to_100_and_breaks_ties_by_the_grid_keep():
    """The search itself, on made-up cost functions: the candidates are exactly keep 0.01 ..
    1.00 in steps of 0.01 (both ends reachable), a cost is read at the keep it reports,
    and among equal costs the keep nearest the grid's keep wins, then the smaller."""
    assert _match("evit", 0.5, 0.0, lambda o: o["keep"]) == [({"keep": 0.01, "fuse": True}, 0.01)]
    assert _match("evit", 0.5, 2.0, lambda o: o["keep"]) == [({"keep": 1.0, "fuse": True}, 1.0)]
    exact = _match("evit", 0.9, 0.0, lambda o: 0.0 if o["keep"] == 0.37 else 1.0)
    assert exact == [({"keep": 0.37, "fuse": True}, 0.0)]
    flat = lambda o: 0.0 if 0.40 <= o["keep"] <= 0.60 else 1.0  # noqa: E731
    assert _match("evit", 0.55, 0.0, flat)[0][0]["keep"] == 0.55
    assert _match("evit", 0.9, 0.0, flat)[0][0]["keep"] == 0.6
    assert _match("evit", 0.1, 0.0, flat)[0][0]["keep"] == 0.4
    assert _match("evit", 0.505, 0.0, flat)[0][0]["keep"] == 0.5  # 0.50 and 0.51 equally near: the smaller


def test_evit_match_keeps_each_location_list_and_fuse():
    from tosa_bench.methods.registry import Knobs

    knobs = Knobs(evit_locations=((1, 3), (2,)), fuse=False)
    got = _match("evit", 0.5, 0.0, lambda o: abs(o["keep"] - 0.25 * len(o["locations"])), knobs)
    assert got == [({"keep": 0.5, "fuse": False, "locations": [1, 3]}, 0.0), ({"keep": 0.25, "fuse": False, "locations": [2]}, 0.0)]


def test_tome_match_searches_r_0_to_half_and_breaks_ties_to_the_smaller_r():
    # test_tiny: N = 17 tokens, so r = 0 .. 8
    assert _match("tome", 0.5, -1.0, lambda o: o["r"]) == [({"r": 0}, 0)]
    assert _match("tome", 0.5, 99.0, lambda o: o["r"]) == [({"r": 8}, 8)]
    assert _match("tome", 0.5, 0.0, lambda o: 0.0 if o["r"] in (3, 4, 5) else 1.0) == [({"r": 3}, 0.0)]
    assert _match("tome", 0.5, 4.4, lambda o: o["r"]) == [({"r": 4}, 4)]


def test_bipartite_matching_clips_r_by_its_own_cls_rule():
    """Without a protected CLS every token may merge: 6 tokens allow r = 3 (3 pairs), with
    CLS protected only 2; r beyond that is clipped, and every token keeps a target."""
    import torch

    from tosa_bench.methods.tome import bipartite_matching

    metric = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(0))
    index, n_out = bipartite_matching(metric, r=10, protect_cls=False)
    assert n_out == 3 and int(index.max()) == 2 and len(set(index[0].tolist())) == 3
    index, n_out = bipartite_matching(metric, r=10, protect_cls=True)
    assert n_out == 4 and int(index[0, 0]) == 0  # CLS kept in place
