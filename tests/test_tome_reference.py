"""ToMe's merge checked against an independent, slow, loop-over-tokens reference."""

from __future__ import annotations

import pytest
import torch

from tosa_bench.methods.tome import bipartite_matching, merge_weighted


def slow_tome(x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor, r: int) -> tuple[list[list[float]], list[float]]:
    """One image. Returns the merged tokens and sizes as a multiset (order-free)."""
    n = x.shape[0]
    norm = [keys[i] / keys[i].norm() for i in range(n)]
    a_ids = [i for i in range(n) if i % 2 == 0]
    b_ids = [i for i in range(n) if i % 2 == 1]
    edges = []
    for i in a_ids:
        if i == 0:
            continue  # CLS is never merged
        sims = [float(norm[i] @ norm[j]) for j in b_ids]
        best = max(range(len(b_ids)), key=lambda t: (sims[t], -t))
        edges.append((sims[best], i, b_ids[best]))
    edges.sort(key=lambda e: -e[0])
    r = min(r, (n - 1) // 2)
    merged_into: dict[int, list[int]] = {j: [j] for j in b_ids}
    removed = set()
    for _, i, j in edges[:r]:
        merged_into[j].append(i)
        removed.add(i)
    groups = [[i] for i in a_ids if i not in removed] + [merged_into[j] for j in b_ids]
    feats, sizes = [], []
    for g in groups:
        w = sum(float(size[t]) for t in g)
        feats.append([sum(float(size[t]) * float(x[t, d]) for t in g) / w for d in range(x.shape[1])])
        sizes.append(w)
    return feats, sizes


@pytest.mark.parametrize("n,r,seed", [(17, 4, 0), (17, 8, 1), (16, 3, 2), (9, 20, 3), (25, 0, 4)])
def test_merge_matches_slow_reference(n, r, seed):
    g = torch.Generator().manual_seed(seed)
    B, D, C = 3, 5, 4
    x = torch.randn(B, n, D, generator=g, dtype=torch.float64)
    keys = torch.randn(B, n, C, generator=g, dtype=torch.float64)
    size = torch.randint(1, 4, (B, n, 1), generator=g).double()
    new_index, n_out = bipartite_matching(keys, r)
    merged, new_size = merge_weighted(x, size, new_index, n_out)
    assert merged.shape == (B, n - min(r, (n - 1) // 2), D)
    for b in range(B):
        feats, sizes = slow_tome(x[b], size[b], keys[b], r)
        got = sorted(zip(new_size[b, :, 0].tolist(), merged[b].tolist()))
        want = sorted(zip(sizes, feats))
        assert len(got) == len(want)
        for (gs, gf), (ws, wf) in zip(got, want):
            assert gs == pytest.approx(ws)
            assert gf == pytest.approx(wf, abs=1e-9)
        assert torch.allclose(merged[b, 0], x[b, 0], rtol=0, atol=1e-12), "CLS stays first, unmerged"
