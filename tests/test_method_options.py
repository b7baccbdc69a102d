"""The method's non-spec options, measured better on CamVid val and selectable beside the
spec's choices: proportional budget allocation and nearest-token residual reconstruction.
Each is checked against an independent brute-force model of its definition."""

from fractions import Fraction

import pytest
import torch

import lvtp_kernels
import python_ref
from python_ref.ops import budget, fused_importance, proportional_quotas
from python_ref.pipeline import StageRecord, reconstruct, reconstruct_stage

from lvtp_kernels.models import build_model
from lvtp_kernels.models.patching import DEFAULTS


@pytest.fixture(autouse=True)
def _ref(monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "ref")


@pytest.mark.parametrize("sizes, k", [([5, 3, 2], 4), ([1, 1, 1, 1], 2), ([10, 0, 7, 3], 11), ([4], 1), ([2, 2], 4),
                                      ([3, 3, 3], 1), ([6, 1, 1, 1, 1], 5)])
def test_proportional_quotas_largest_remainder(sizes, k):
    q = proportional_quotas(sizes, k)
    m = sum(sizes)
    assert sum(q) == k
    exact = [Fraction(k * s, m) for s in sizes]
    for qc, e, s in zip(q, exact, sizes):
        assert qc <= s and e - 1 < qc < e + 1  # within one of the exact share
    # the rounded-up clusters are those with the largest remainders (ties: lower index)
    up = [c for c in range(len(sizes)) if q[c] > (k * sizes[c]) // m]
    order = sorted(range(len(sizes)), key=lambda c: (-(exact[c] - int(exact[c])), c))
    assert up == sorted(order[: len(up)])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n, p, keep_ratio, clusters", [(50, 1, 0.5, 8), (197, 1, 0.3, 8), (30, 0, 0.9, 4), (12, 2, 0.1, 8)])
def test_proportional_selection_keeps_each_clusters_share_of_its_best_tokens(seed, n, p, keep_ratio, clusters):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(2, n, 24, generator=g)
    ent = torch.rand(2, n, 4, generator=g)
    edge = torch.rand(2, n, generator=g)
    keep, prune, cid = torch.ops.lvtp.select(tokens, ent, edge, keep_ratio, p, 0.5, "high", clusters, 5,
                                                    "proportional")
    ranked = torch.ops.lvtp.select(tokens, ent, edge, keep_ratio, p, 0.5, "high", clusters, 5)
    assert torch.equal(cid, ranked[2])  # the same semantic clusters
    u = fused_importance(ent, edge, p, 0.5, "high")
    k_budget = budget(n, p, keep_ratio)
    for b in range(2):
        kept = set(keep[b].tolist())
        assert kept >= set(range(p)) and len(kept) == p + k_budget
        assert sorted(kept | set(prune[b].tolist())) == list(range(n))
        ids = sorted(set(cid[b, p:].tolist()))
        sizes = [int((cid[b] == c).sum()) for c in range(max(ids) + 1)]
        quotas = proportional_quotas(sizes, k_budget)
        for c in ids:
            members = [i for i in range(p, n) if int(cid[b, i]) == c]
            best = sorted(members, key=lambda i: (-float(u[b, i]), i))[: quotas[c]]
            assert {i for i in members if i in kept} == set(best), (b, c)


def test_ranked_allocation_is_select():
    g = torch.Generator().manual_seed(3)
    tokens, ent = torch.randn(2, 40, 16, generator=g), torch.rand(2, 40, 4, generator=g)
    a = torch.ops.lvtp.select(tokens, ent, None, 0.4, 1, 0.5, "low", 8, 10, "ranked")
    b = torch.ops.lvtp.select(tokens, ent, None, 0.4, 1, 0.5, "low", 8, 10)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _brute_nearest(full, xs, keep, prune, cid):
    out = torch.empty_like(xs)
    for b in range(xs.shape[0]):
        out[b, keep[b]] = full[b]
        for i in prune[b].tolist():
            best, best_j = -float("inf"), None
            for j_pos, j in enumerate(keep[b].tolist()):
                if int(cid[b, j]) < 0:
                    continue
                sim = float(torch.nn.functional.cosine_similarity(xs[b, i].double(), xs[b, j].double(), dim=0, eps=0))
                if sim > best + 1e-6:
                    best, best_j = sim, j_pos
            j = keep[b, best_j]
            out[b, i] = xs[b, i] + full[b, best_j] - xs[b, j]
    return out


@pytest.mark.parametrize("seed", range(4))
def test_nearest_reconstruction_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n, c = 30, 8
    xs = torch.randn(2, n, c, generator=g)
    keep, prune, cid = python_ref.select(xs, torch.rand(2, n, 4, generator=g), None, 0.5, 1, 0.5, "low", 4, 3)
    full = torch.randn(2, keep.shape[1], c, generator=g)
    got = torch.ops.lvtp.reconstruct_stage(full, xs, keep, prune, cid, 4, "nearest")
    torch.testing.assert_close(got, _brute_nearest(full, xs, keep, prune, cid), rtol=1e-5, atol=1e-5)
    # kept positions hold their final features exactly, the class token is never a source
    for b in range(2):
        assert torch.equal(got[b, keep[b]], full[b])


def test_nearest_reconstruction_loop_reference_matches_vectorised():
    g = torch.Generator().manual_seed(9)
    model = build_model("vit_ti", seed=0, img_size=(64, 96), depth=5)
    x = torch.randn(2, 3, 64, 96, generator=g)
    with torch.no_grad():
        tokens, _ = model.embed(x)
        recs = []
        cur = tokens
        for layer, r in [(1, 0.6), (3, 0.5)]:
            keep, prune, cid = python_ref.select(cur, torch.rand(2, cur.shape[1], 4, generator=g), None, r, 1, 0.5,
                                                 "low", 4, 3)
            recs.append(StageRecord(layer, cur, keep, prune, cid))
            cur = python_ref.gather_tokens(cur, keep) + 0.1 * torch.randn(2, keep.shape[1], cur.shape[-1], generator=g)
        loop = reconstruct(cur, recs, "nearest")
        vec = lvtp_kernels.models.patching.reconstruct(cur, recs, "nearest", 4)
    torch.testing.assert_close(vec, loop, rtol=1e-6, atol=1e-6)


def test_patch_accepts_the_new_options_and_reports_them_in_flops():
    model = build_model("vit_ti", seed=0, img_size=(96, 128), depth=6)
    x = torch.randn(1, 3, 96, 128)
    for alloc in ("ranked", "proportional"):
        for mode in ("residual", "nearest", "frozen"):
            lvtp_kernels.patch(model, schedule=[(1, 0.5), (3, 0.5)], allocation=alloc, reconstruct=mode)
            with torch.no_grad():
                out = model(x)
            assert out.shape == (1, 11, 96, 128) and torch.isfinite(out).all()
            shape = model.vit_shape(reconstruct=mode, iters=DEFAULTS["iters"])  # patch's default, not the spec's
            with torch.no_grad():
                counted = lvtp_kernels.flops.count_flops(model, x)
            analytic = lvtp_kernels.flops.vit_flops(shape, [(1, 0.5), (3, 0.5)])
            assert abs(counted - analytic) / analytic < 1e-3, (alloc, mode, counted, analytic)
    with pytest.raises(ValueError, match="allocation"):
        lvtp_kernels.patch(model, schedule=[(1, 0.5)], allocation="greedy")
    lvtp_kernels.unpatch(model)


def test_alpha_one_skips_the_edge_term_and_its_cost(monkeypatch):
    model = build_model("vit_ti", seed=0, img_size=(96, 128), depth=6)
    x = torch.randn(1, 3, 96, 128)
    calls = []
    real = lvtp_kernels.registry.kernels("cpu").patch_edge_energy  # what the patched forward calls
    monkeypatch.setattr(lvtp_kernels.registry.kernels("cpu"), "patch_edge_energy", lambda *a: calls.append(1) or real(*a))
    lvtp_kernels.patch(model, flops_reduction=0.3, alpha=1.0)
    with torch.no_grad():
        counted = lvtp_kernels.flops.count_flops(model, x)
    assert calls == []
    analytic = lvtp_kernels.flops.vit_flops(model.vit_shape(use_edge=False, reconstruct="nearest", iters=DEFAULTS["iters"]),
                                            model._lvtp.schedule)
    assert abs(counted - analytic) / analytic < 1e-3
    lvtp_kernels.patch(model, flops_reduction=0.3, alpha=0.3)
    with torch.no_grad():
        model(x)
    assert calls == [1]


def test_spatial_option_makes_clusters_spatially_coherent_and_defaults_off():
    """patch(spatial=w) clusters [x / |x|, w * position]: w = 0 is the default forward bit
    for bit; a large w gives clusters that are compact on the patch grid."""
    import lvtp_kernels
    from lvtp_kernels.models import build_model
    from lvtp_kernels.models.engine import token_positions

    model = build_model("vit_ti", seed=0, img_size=(64, 96)).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        lvtp_kernels.patch(model, flops_reduction=0.3)
        base = model(x)
        lvtp_kernels.patch(model, flops_reduction=0.3, spatial=0.0)
        assert torch.equal(model(x), base)
    spread = {}
    for w in (0.0, 10.0):
        lvtp_kernels.patch(model, flops_reduction=0.3, spatial=w, keep_records=True)
        with torch.inference_mode():
            model(x)
        rec = lvtp_kernels.last_records(model)[0]
        pos = token_positions(x, 16, 1, rec.x_at_stage)[0]
        cid = rec.cluster_id[0].long()
        var = [pos[cid == c].var(0).sum().item() for c in range(int(cid.max()) + 1) if (cid == c).sum() > 1]
        spread[w] = sum(var) / len(var)
    assert spread[10.0] < 0.5 * spread[0.0], spread
    with pytest.raises(ValueError, match="spatial"):
        lvtp_kernels.patch(model, flops_reduction=0.3, spatial=float("nan"))
