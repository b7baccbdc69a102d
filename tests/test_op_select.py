"""Tests of LVTP selection (spec steps 2, 4, 5): torch.ops.lvtp.select / prune and python_ref.ops.

The selection is checked against ``spec_select``, an independent numpy / pure-python
float64 implementation written from the spec text (../shared/lvtp-spec.md), not from
python_ref. Its 1-D 2-means uses exact rational arithmetic (fractions.Fraction), so
"least total within-group sum of squares, ties to the smaller s" is applied exactly.
"""

from __future__ import annotations

import itertools
import math
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch

import lvtp_kernels  # noqa: F401  (registers torch.ops.lvtp.*)
from python_ref import ops as ref

QS = [0.5, 1.0, 2.0, 3.0]


# --------------------------------------------------------------------------- independent spec model
def spec_two_means_split(values) -> int:
    """Exact 1-D 2-means of ascending values: the start of the upper (salient) group.

    Total SSE of every split s = 1..m-1 in exact rationals, least cost, ties to smaller s;
    a single value is salient (returns 0).
    """
    m = len(values)
    if m == 1:
        return 0
    fr = [Fraction(float(v)) for v in values]
    tot1, tot2 = sum(fr), sum(v * v for v in fr)
    lo1 = lo2 = Fraction(0)
    best_s, best_cost = None, None
    for s in range(1, m):
        lo1 += fr[s - 1]
        lo2 += fr[s - 1] * fr[s - 1]
        hi1, hi2 = tot1 - lo1, tot2 - lo2
        cost = (lo2 - lo1 * lo1 / s) + (hi2 - hi1 * hi1 / (m - s))
        if best_cost is None or cost < best_cost:
            best_s, best_cost = s, cost
    return best_s


def spec_fused_importance(ent, edge, p, alpha, mode):
    """Steps 2 and 4 for one image. ent (N, Q), edge (N,) or None -> u (N,) float64."""
    ent = np.asarray(ent, dtype=np.float64)
    n_tok, nq = ent.shape
    m = n_tok - p
    sigma = []
    for q in range(nq):
        col = ent[p:, q]
        mean = sum(col.tolist()) / m
        sigma.append(math.sqrt(sum((v - mean) ** 2 for v in col.tolist()) / m))  # population std
    total = sum(sigma)
    w = [s / total for s in sigma] if total > 0 else [1.0 / nq] * nq
    e = np.zeros(n_tok, dtype=np.float64)
    for q in range(nq):
        e = e + w[q] * ent[:, q]
    h = 1.0 - e if mode == "low" else e
    if edge is None:
        return h
    return alpha * h + (1.0 - alpha) * np.asarray(edge, dtype=np.float64)


def spec_select_one(tokens, u, p, keep_ratio, clusters, iters):
    """Step 5 for one image. tokens (N, C), u (N,) float64 -> keep_idx, prune_idx, cluster_id (lists)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    n_tok = tokens.shape[0]
    n = n_tok - p
    feats = tokens[p:]
    uu = [float(v) for v in u[p:]]
    # 5.1 semantic k-means on L2-normalised features
    norms = np.sqrt((feats * feats).sum(axis=1, keepdims=True))
    x = feats / np.maximum(norms, 1e-12)
    k = min(clusters, n)
    ranked = sorted(range(n), key=lambda i: (-uu[i], i))  # u descending, ties by lower index
    cent = x[[ranked[(r * n) // k] for r in range(k)]].copy()

    def assign_all(c):
        d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1)  # (n, k) squared distances
        return d.argmin(axis=1)  # first minimum: ties to the lower cluster index

    for _ in range(iters):
        a = assign_all(cent)
        for j in range(k):
            sel = a == j
            if sel.any():  # an emptied cluster keeps its centroid
                cent[j] = x[sel].mean(axis=0)
    assign = assign_all(cent)

    # 5.2 per cluster: representative and exact 2-means salient / plain split
    reps, salient, plain = [], [], []
    for c in range(k):
        members = [i for i in range(n) if assign[i] == c]
        if not members:
            continue
        reps.append(min(members, key=lambda i: (-uu[i], i)))
        asc = sorted(members, key=lambda i: (uu[i], i))
        s = spec_two_means_split([uu[i] for i in asc])
        salient += asc[s:]
        plain += asc[:s]

    # 5.3 budget and selection order
    kk = max(1, math.floor(keep_ratio * (n_tok - p) + 0.5))
    desc = lambda idx: sorted(idx, key=lambda i: (-uu[i], i))  # noqa: E731
    rep_set = set(reps)
    order = desc(reps) + desc([i for i in salient if i not in rep_set]) + desc([i for i in plain if i not in rep_set])
    assert sorted(order) == list(range(n))
    kept = set(order[:kk])
    keep_idx = list(range(p)) + [i + p for i in range(n) if i in kept]
    prune_idx = [i + p for i in range(n) if i not in kept]
    cluster_id = [-1] * p + [int(a) for a in assign]
    return keep_idx, prune_idx, cluster_id


def spec_select(tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters):
    outs = []
    for b in range(tokens.shape[0]):
        u = spec_fused_importance(ent[b].double().numpy(), None if edge is None else edge[b].double().numpy(), p, alpha, mode)
        outs.append(spec_select_one(tokens[b].double().numpy(), u, p, keep_ratio, clusters, iters))
    return tuple(torch.tensor([o[j] for o in outs], dtype=torch.int64) for j in range(3))


def spec_budget(n, p, keep_ratio):
    return max(1, math.floor(keep_ratio * (n - p) + 0.5))


# --------------------------------------------------------------------------- helpers
def random_inputs(seed, b, n, c, nq=4, with_edge=True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, n, c, generator=g)
    ent = torch.rand(b, n, nq, generator=g)
    edge = torch.rand(b, n, generator=g) if with_edge else None
    return tokens, ent, edge


def random_attn(seed, b, h, n):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2.0 * torch.randn(b, h, n, n, generator=g), dim=-1)


def check_invariants(keep, prune, cid, n, p, keep_ratio, clusters):
    b = keep.shape[0]
    kk = spec_budget(n, p, keep_ratio)
    assert keep.dtype == torch.int64 and prune.dtype == torch.int64
    assert cid.dtype == torch.int32
    assert keep.shape == (b, p + kk)
    assert prune.shape == (b, n - p - kk)
    assert cid.shape == (b, n)
    k = min(clusters, n - p)
    for i in range(b):
        kl, pl, cl = keep[i].tolist(), prune[i].tolist(), cid[i].tolist()
        assert kl[:p] == list(range(p)), "protected tokens must be kept, first"
        assert kl == sorted(kl) and len(set(kl)) == len(kl), "keep_idx must be strictly ascending"
        assert pl == sorted(pl) and len(set(pl)) == len(pl), "prune_idx must be strictly ascending"
        assert not set(kl) & set(pl)
        assert sorted(kl + pl) == list(range(n))
        assert cl[:p] == [-1] * p
        assert all(0 <= c < k for c in cl[p:]), cl
        nonempty = set(cl[p:])
        kept_clusters = [cl[j] for j in kl[p:]]
        if len(nonempty) <= kk:
            assert set(kept_clusters) == nonempty, "every non-empty cluster must have its representative kept"
        else:
            # only the K best representatives: one token per cluster, K distinct clusters
            assert len(set(kept_clusters)) == kk


def run_both(tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters):
    op = torch.ops.lvtp.select(tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters)
    py = ref.select(tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters)
    return op, py


# --------------------------------------------------------------------------- vs independent spec model
_VARIANTS = list(itertools.product([True, False], ["low", "high"], [16, 192]))  # edge, mode, C
_GRID = []
for _n, _p, _cl, _kr in itertools.product([2, 3, 50, 197], [0, 1, 2], [1, 2, 8, 32], [0.05, 0.3, 0.7, 1.0]):
    if _p > _n - 1:
        continue
    _GRID.append((_n, _p, _cl, _kr) + _VARIANTS[len(_GRID) % len(_VARIANTS)])
# every (edge, mode, C) variant on the largest token count at least with clusters 8 and 32
_GRID += [(197, 1, cl, 0.3) + v for cl in (8, 32) for v in _VARIANTS]


@pytest.mark.parametrize("n,p,clusters,keep_ratio,with_edge,mode,c", _GRID)
def test_select_matches_spec_model(n, p, clusters, keep_ratio, with_edge, mode, c):
    seed = zlib.crc32(repr((n, p, clusters, keep_ratio, with_edge, mode, c)).encode())
    b = 2
    tokens, ent, edge = random_inputs(seed, b, n, c, with_edge=with_edge)
    alpha, iters = 0.5, 10
    want = spec_select(tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters)
    op, py = run_both(tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters)
    for name, got in (("torch.ops.lvtp.select", op), ("python_ref.ops.select", py)):
        for what, g, w in zip(("keep_idx", "prune_idx", "cluster_id"), got, want):
            assert torch.equal(g.long(), w), f"{name} {what} differs from the spec model:\n{g}\n{w}"
    check_invariants(*op, n, p, keep_ratio, clusters)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_select_alpha_and_iters_match_spec_model(alpha):
    tokens, ent, edge = random_inputs(7, 2, 60, 24)
    for iters in (1, 3):
        want = spec_select(tokens, ent, edge, 0.4, 1, alpha, "low", 6, iters)
        got = torch.ops.lvtp.select(tokens, ent, edge, 0.4, 1, alpha, "low", 6, iters)
        for g, w in zip(got, want):
            assert torch.equal(g.long(), w)


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize(
    "n,p,keep_ratio,clusters",
    [(2, 1, 0.05, 8), (3, 2, 1.0, 8), (10, 0, 0.05, 8), (40, 1, 0.1, 32), (40, 1, 0.3, 8), (97, 2, 0.7, 8), (64, 1, 1.0, 4)],
)
def test_select_invariants(n, p, keep_ratio, clusters):
    tokens, ent, edge = random_inputs(n * 31 + p, 3, n, 16)
    out = torch.ops.lvtp.select(tokens, ent, edge, keep_ratio, p, 0.5, "low", clusters, 10)
    check_invariants(*out, n, p, keep_ratio, clusters)


def test_select_many_clusters_keeps_best_representatives():
    # clusters > K: exactly the K best representatives (by u) are kept, one per cluster
    n, p, clusters, keep_ratio = 80, 1, 32, 0.05
    tokens, ent, edge = random_inputs(11, 2, n, 16)
    keep, _, cid = torch.ops.lvtp.select(tokens, ent, edge, keep_ratio, p, 0.5, "low", clusters, 10)
    kk = spec_budget(n, p, keep_ratio)
    for b in range(2):
        u = spec_fused_importance(ent[b].double().numpy(), edge[b].double().numpy(), p, 0.5, "low")
        cl = cid[b].tolist()
        best = {}
        for i in range(p, n):
            if cl[i] not in best or (-u[i], i) < (-u[best[cl[i]]], best[cl[i]]):
                best[cl[i]] = i
        assert len(best) > kk
        reps = sorted(best.values(), key=lambda i: (-u[i], i))[:kk]
        assert keep[b, p:].tolist() == sorted(reps)


@pytest.mark.parametrize("n,p,keep_ratio", [(50, 1, 0.3), (197, 1, 0.7), (9, 0, 0.5), (3, 2, 0.05)])
def test_select_output_shapes_depend_only_on_n_p_keep_ratio(n, p, keep_ratio):
    a = random_inputs(1, 2, n, 16)
    b_in = random_inputs(2, 2, n, 32, with_edge=False)
    out_a = torch.ops.lvtp.select(*a, keep_ratio, p, 0.5, "low", 8, 10)
    out_b = torch.ops.lvtp.select(*b_in, keep_ratio, p, 0.9, "high", 3, 2)
    kk = spec_budget(n, p, keep_ratio)
    want = [(2, p + kk), (2, n - p - kk), (2, n)]
    assert [tuple(t.shape) for t in out_a] == want
    assert [tuple(t.shape) for t in out_b] == want


def test_select_deterministic():
    tokens, ent, edge = random_inputs(3, 2, 120, 32)
    first = torch.ops.lvtp.select(tokens, ent, edge, 0.3, 1, 0.5, "low", 8, 10)
    second = torch.ops.lvtp.select(tokens.clone(), ent.clone(), edge.clone(), 0.3, 1, 0.5, "low", 8, 10)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_select_batch_independence():
    tokens, ent, edge = random_inputs(5, 4, 60, 16)
    args = (0.3, 1, 0.5, "low", 8, 10)
    full = torch.ops.lvtp.select(tokens, ent, edge, *args)
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = torch.ops.lvtp.select(tokens[perm], ent[perm], edge[perm], *args)
    for a, b in zip(full, shuffled):
        assert torch.equal(a[perm], b)
    for i in range(4):
        alone = torch.ops.lvtp.select(tokens[i : i + 1], ent[i : i + 1], edge[i : i + 1], *args)
        for a, b in zip(full, alone):
            assert torch.equal(a[i : i + 1], b)


def test_select_non_contiguous_inputs():
    tokens, ent, edge = random_inputs(8, 2, 40, 16)
    want = torch.ops.lvtp.select(tokens, ent, edge, 0.5, 1, 0.5, "low", 4, 5)
    t_nc = tokens.transpose(1, 2).contiguous().transpose(1, 2)
    e_nc = ent.transpose(0, 2).contiguous().transpose(0, 2)
    assert not t_nc.is_contiguous() and not e_nc.is_contiguous()
    got = torch.ops.lvtp.select(t_nc, e_nc, edge, 0.5, 1, 0.5, "low", 4, 5)
    for a, b in zip(want, got):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- hand-made ties
@pytest.mark.parametrize("u_value", [0.5, 0.1])
@pytest.mark.parametrize("n,p,keep_ratio", [(13, 1, 2 / 12), (13, 1, 0.5), (33, 2, 0.3), (8, 0, 0.5), (4, 1, 2 / 3)])
def test_identical_tokens_lower_indices_win(u_value, n, p, keep_ratio):
    # identical features, identical entropies, constant edge and alpha = 0: u is exactly
    # u_value for every token, so every choice is a tie broken by the lower index
    tokens = torch.ones(2, n, 8)
    ent = torch.full((2, n, 4), 0.3)
    edge = torch.full((2, n), u_value, dtype=torch.float64)
    kk = spec_budget(n, p, keep_ratio)
    want_keep = list(range(p + kk))
    for name, fn in (("op", torch.ops.lvtp.select), ("ref", ref.select)):
        keep, prune, cid = fn(tokens, ent, edge, keep_ratio, p, 0.0, "low", 8, 10)
        for b in range(2):
            assert cid[b].tolist() == [-1] * p + [0] * (n - p), f"{name}: identical tokens form cluster 0"
            assert keep[b].tolist() == want_keep, f"{name}: lower indices must win the ties"
            assert prune[b].tolist() == list(range(p + kk, n))


def test_identical_tokens_without_edge_lower_indices_win():
    n, p = 21, 1
    tokens = torch.full((1, n, 4), -2.0)
    ent = torch.full((1, n, 4), 0.7)
    for mode in ("low", "high"):
        keep, prune, cid = torch.ops.lvtp.select(tokens, ent, None, 0.25, p, 0.5, mode, 8, 10)
        kk = spec_budget(n, p, 0.25)
        assert keep[0].tolist() == list(range(p + kk))
        assert cid[0].tolist() == [-1] + [0] * (n - 1)


def test_emptied_cluster_keeps_its_centroid():
    # 2-D features, P = 0, alpha = 0 so u = edge: u order t0 > t1 > t2 > t3, and the
    # k = 3 initial centroids are the tokens at ranks 0, 1, 2: t0, t1 (the same direction
    # as t0) and t2. Iteration 1: t0, t1, t3 -> cluster 0 (ties to the lower index),
    # cluster 1 is emptied and keeps its centroid (1, 0); cluster 0 moves to about
    # 13 degrees. Iteration 2: t0 and t1 sit exactly on cluster 1's kept centroid.
    a = math.radians(40.0)
    tokens = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [math.cos(a), math.sin(a)]]])
    ent = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    edge = torch.tensor([[0.9, 0.8, 0.7, 0.6]], dtype=torch.float64)
    want_cid = [1, 1, 2, 0]
    want_keep = [0, 2, 3]  # K = 3: the three representatives t0, t2, t3
    assert spec_select(tokens, ent, edge, 0.75, 0, 0.0, "low", 3, 10)[2].tolist() == [want_cid]
    for fn in (torch.ops.lvtp.select, ref.select):
        keep, prune, cid = fn(tokens, ent, edge, 0.75, 0, 0.0, "low", 3, 10)
        assert cid.tolist() == [want_cid]
        assert keep.tolist() == [want_keep] and prune.tolist() == [[1]]


def test_two_means_split_hand_made():
    f = lambda v: ref.two_means_split(torch.tensor(v, dtype=torch.float64))  # noqa: E731
    assert f([0.0, 0.0, 1.0, 1.0]) == 2
    assert f([3.0]) == 0  # a single value is salient
    assert f([2.0, 2.0, 2.0, 2.0]) == 1  # all splits cost 0: the smallest s
    assert f([0.0, 1.0, 2.0]) == 1  # s=1 and s=2 both cost 0.5: the smaller s
    # [0, 1, 2, 3] is NOT a tie: SSE(s=1) = 2, SSE(s=2) = 0.5 + 0.5 = 1, SSE(s=3) = 2
    assert f([0.0, 1.0, 2.0, 3.0]) == 2
    assert f([0.0, 0.1, 0.9, 1.0]) == 2
    assert f([0.0, 0.1, 0.2, 5.0]) == 3
    # the spec model agrees on all of these
    for v in ([0.0, 0.0, 1.0, 1.0], [3.0], [2.0] * 4, [0.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0], [0.0, 0.1, 0.2, 5.0]):
        assert spec_two_means_split(v) == f(v)


@pytest.mark.parametrize("value", [0.1, 0.3, 0.7, 1.0 / 3.0, 0.123456])
def test_two_means_split_constant_values_is_one(value):
    # every split of a constant cluster costs exactly 0: ties go to the smallest s = 1
    for m in range(2, 40):
        got = ref.two_means_split(torch.full((m,), value, dtype=torch.float64))
        assert got == 1, f"two_means_split([{value}] * {m}) = {got}, want 1"


def test_two_means_split_symmetric_tie():
    # [0, 1, 1, 2]: SSE(s=1) = SSE(s=3) = 2/3 exactly, SSE(s=2) = 1 -> the smaller s, 1
    assert spec_two_means_split([0.0, 1.0, 1.0, 2.0]) == 1
    assert ref.two_means_split(torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=torch.float64)) == 1


def test_dynamic_weights_and_fused_importance():
    ent = torch.rand(2, 30, 4, generator=torch.Generator().manual_seed(4))
    edge = torch.rand(2, 30, generator=torch.Generator().manual_seed(5))
    w = ref.dynamic_weights(ent, 2)
    assert w.dtype == torch.float64 and w.shape == (2, 4)
    for b in range(2):
        sig = ent[b, 2:].double().std(dim=0, unbiased=False)
        assert torch.allclose(w[b], sig / sig.sum(), rtol=1e-12, atol=0)
        for mode in ("low", "high"):
            for e in (edge, None):
                got = ref.fused_importance(ent, e, 2, 0.3, mode)
                want = spec_fused_importance(ent[b].numpy(), None if e is None else e[b].numpy(), 2, 0.3, mode)
                np.testing.assert_allclose(got[b].numpy(), want, rtol=0, atol=1e-14)
    # every sigma 0 (protected rows differ, they are ignored): uniform weights
    const = torch.full((1, 10, 3), 0.5)
    const[0, 0] = torch.tensor([0.0, 1.0, 0.2])
    assert torch.equal(ref.dynamic_weights(const, 1), torch.full((1, 3), 1.0 / 3.0, dtype=torch.float64))
    # one order separates tokens, the others are constant: it takes all the weight
    one = torch.full((1, 6, 3), 0.25)
    one[0, :, 1] = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert torch.equal(ref.dynamic_weights(one, 0), torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))


def test_budget():
    assert ref.budget(197, 1, 0.7) == 137  # floor(137.2 + 0.5)
    assert ref.budget(197, 1, 0.05) == 10  # floor(9.8 + 0.5)
    assert ref.budget(2, 1, 0.05) == 1  # never below 1
    assert ref.budget(11, 1, 0.25) == 3  # 2.5 + 0.5 = 3: halves round up
    assert ref.budget(50, 2, 1.0) == 48
    for n, p, r in itertools.product([2, 3, 50, 197], [0, 1, 2], [0.05, 0.3, 0.7, 1.0]):
        if p <= n - 1:
            assert ref.budget(n, p, r) == spec_budget(n, p, r)


# --------------------------------------------------------------------------- prune
@pytest.mark.parametrize("with_edge", [True, False])
@pytest.mark.parametrize("n,p,keep_ratio", [(50, 1, 0.3), (17, 0, 0.7), (26, 2, 0.05)])
def test_prune_equals_select_on_tsallis_entropy(n, p, keep_ratio, with_edge):
    tokens, _, edge = random_inputs(n + p, 2, n, 24, with_edge=with_edge)
    attn = random_attn(n, 2, 3, n)
    qs = [0.5, 1.0, 2.0, 3.0]
    kept, keep, prune, cid = torch.ops.lvtp.prune(tokens, attn, edge, keep_ratio, p, qs, 0.5, "low", 8, 10)
    ent = torch.ops.lvtp.tsallis_entropy(attn, qs)
    want = torch.ops.lvtp.select(tokens, ent, edge, keep_ratio, p, 0.5, "low", 8, 10)
    for a, b in zip((keep, prune, cid), want):
        assert torch.equal(a, b)
    assert torch.equal(kept, torch.stack([tokens[i, keep[i]] for i in range(2)]))
    assert kept.dtype == tokens.dtype
    # python_ref twin agrees, and matches the spec model
    r = ref.prune(tokens, attn, edge, keep_ratio, p, qs, 0.5, "low", 8, 10)
    for a, b in zip((kept, keep, prune, cid), r):
        assert torch.equal(a, b)
    spec = spec_select(tokens, ref.tsallis_entropy(attn, qs), edge, keep_ratio, p, 0.5, "low", 8, 10)
    for a, b in zip((keep, prune, cid), spec):
        assert torch.equal(a.long(), b)


def test_prune_defaults_and_other_orders():
    tokens, _, edge = random_inputs(21, 1, 30, 16)
    attn = random_attn(21, 1, 2, 30)
    default = torch.ops.lvtp.prune(tokens, attn)
    explicit = torch.ops.lvtp.prune(tokens, attn, None, 0.7, 1, [0.5, 1.0, 2.0, 3.0], 0.5, "low", 8, 10)
    for a, b in zip(default, explicit):
        assert torch.equal(a, b)
    qs = [1.5, 4.0]
    got = torch.ops.lvtp.prune(tokens, attn, edge, 0.4, 1, qs, 0.5, "high", 5, 4)
    want = torch.ops.lvtp.select(tokens, torch.ops.lvtp.tsallis_entropy(attn, qs), edge, 0.4, 1, 0.5, "high", 5, 4)
    for a, b in zip(got[1:], want):
        assert torch.equal(a, b)
    assert torch.equal(got[0], torch.ops.lvtp.gather_tokens(tokens, got[1]))


def test_select_tokens_alias_warns_and_is_select():
    """The 0.1 op select_tokens lives on one release as a deprecated Python alias."""
    import lvtp_kernels.ops as lops
    import python_ref

    g = torch.Generator().manual_seed(0)
    tokens, ent = torch.randn(2, 30, 8, generator=g), torch.rand(2, 30, 4, generator=g)
    args = (tokens, ent, None, 0.5, 1, 0.5, "low", 4, 3, "proportional")
    with pytest.warns(DeprecationWarning, match="select_tokens"):
        got = lops.select_tokens(*args)
    for a, b in zip(got, python_ref.select(*args)):
        assert torch.equal(a, b)
