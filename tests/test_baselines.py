"""Baselines and ablations (lvtp_kernels.app.baselines): method parsing, the shared token
split / clustering pieces, ToMe's bipartite merge, and the runners on a tiny ViT."""

from __future__ import annotations

import pytest
import torch

import lvtp_kernels
from lvtp_kernels import flops as lflops
from lvtp_kernels.app.baselines import (
    METHODS,
    Method,
    bipartite_merge,
    make_runner,
    parse_method,
    release,
    semantic_clusters,
    tome_forward,
    topk_split,
)
from lvtp_kernels.models.vit import ViTSegmenter, vit_config
from python_ref import ops as ref_ops
from python_ref.flops import stage_token_counts

IMG = (96, 128)  # 6 x 8 = 48 patch tokens


@pytest.fixture(scope="module")
def model():
    cfg = vit_config("vit_ti", img_size=IMG, embed_dim=48, depth=6, num_heads=3, stem="conv")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = ViTSegmenter(cfg).eval()
    return m


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, *IMG, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def schedule30(model):
    return lflops.schedule_for_flops(model.vit_shape(), 0.3)


# --------------------------------------------------------------------------- parse_method
@pytest.mark.parametrize("name", list(METHODS))
def test_parse_method_every_known_name(name):
    m = parse_method(name)
    assert m is METHODS[name]
    assert m.name == name
    assert m.kind in ("lvtp", "evit", "random", "tome")
    assert m.help


def test_parse_method_known_kinds_and_ablation_options():
    assert {n: METHODS[n].kind for n in ("lvtp", "evit", "tome", "random")} == {
        "lvtp": "lvtp", "evit": "evit", "tome": "tome", "random": "random"}
    assert METHODS["lvtp-shannon"].options == {"qs": (1.0,)}
    assert METHODS["lvtp-no-edge"].options == {"use_edge": False}
    assert METHODS["lvtp-no-cluster"].options == {"clusters": 1}
    assert METHODS["lvtp-edge-only"].options == {"alpha": 0.0}


def test_parse_method_custom_lvtp_options():
    spec = "lvtp:alpha=0.3,entropy_mode=high,qs=1/2"
    m = parse_method(spec)
    assert isinstance(m, Method)
    assert m.name == spec and m.kind == "lvtp"
    assert m.options == {"alpha": 0.3, "entropy_mode": "high", "qs": (1.0, 2.0)}
    assert isinstance(m.options["alpha"], float)
    m2 = parse_method("lvtp:clusters=4,iters=3,use_edge=false,reconstruct=frozen")
    assert m2.options == {"clusters": 4, "iters": 3, "use_edge": False, "reconstruct": "frozen"}
    assert parse_method("lvtp:use_edge=Yes").options == {"use_edge": True}


@pytest.mark.parametrize("spec, pattern", [
    ("bogus", r"unknown method 'bogus'.*lvtp.*evit.*tome.*random"),
    ("LVTP", r"unknown method"),
    ("lvtp:alpha", r"expected key=value, got 'alpha'"),
    ("lvtp:alpha=0.3,,qs=1", r"expected key=value"),
    ("lvtp:alpha=abc", r"abc"),
    ("lvtp:clusters=2.5", r"2\.5"),
])
def test_parse_method_bad_spec_is_a_value_error(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_method(spec)


def test_parse_method_rejects_unknown_lvtp_option():
    with pytest.raises(ValueError):
        parse_method("lvtp:alpah=0.3")


# --------------------------------------------------------------------------- topk_split
def _brute_topk(score, p, k):
    keeps, prunes = [], []
    for row in score.tolist():
        cand = sorted(range(p, len(row)), key=lambda i: (-row[i], i))
        keeps.append(list(range(p)) + sorted(cand[:k]))
        prunes.append(sorted(cand[k:]))
    return torch.tensor(keeps), torch.tensor(prunes)


def test_topk_split_protected_first_ascending_and_ties_to_lower_index():
    score = torch.tensor([[9.0, 0.1, 0.5, 0.5, 0.2, 0.5, 0.9, 0.0],
                          [-1.0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]])
    keep, prune = topk_split(score, 1, 3)
    # row 0: 0.9 (6), then the three tied 0.5 at 2, 3, 5 -> 2 and 3 win
    assert keep.tolist()[0] == [0, 2, 3, 6]
    assert prune.tolist()[0] == [1, 4, 5, 7]
    # row 1: all tied -> the lowest indices; the protected token's score does not matter
    assert keep.tolist()[1] == [0, 1, 2, 3]
    assert prune.tolist()[1] == [4, 5, 6, 7]
    assert keep.dtype == torch.int64 and prune.dtype == torch.int64


@pytest.mark.parametrize("p, k", [(0, 5), (1, 1), (2, 7), (1, 18)])
def test_topk_split_is_a_partition_matching_brute_force(gen, p, k):
    n = 20
    score = torch.randint(0, 4, (3, n), generator=gen).float()  # many ties
    keep, prune = topk_split(score, p, min(k, n - p))
    k = min(k, n - p)
    assert keep.shape == (3, p + k) and prune.shape == (3, n - p - k)
    for b in range(3):
        allidx = torch.cat([keep[b], prune[b]]).sort().values
        assert torch.equal(allidx, torch.arange(n))
        assert torch.equal(keep[b, :p], torch.arange(p))
        assert bool((keep[b, 1:] > keep[b, :-1]).all()) and bool((prune[b, 1:] > prune[b, :-1]).all())
    bk, bp = _brute_topk(score, p, k)
    assert torch.equal(keep, bk) and torch.equal(prune, bp.reshape(prune.shape))


# --------------------------------------------------------------------------- semantic_clusters
@pytest.mark.parametrize("p, clusters", [(1, 4), (1, 30), (2, 1), (0, 8)])
def test_semantic_clusters_ids_and_protected(gen, p, clusters):
    n, d = 20, 8
    x = torch.randn(2, n, d, generator=gen)
    score = torch.rand(2, n, generator=gen)
    cid = semantic_clusters(x, score, p, clusters, iters=5)
    assert cid.shape == (2, n) and cid.dtype == torch.int32
    assert bool((cid[:, :p] == -1).all())
    k = min(clusters, n - p)
    assert int(cid[:, p:].min()) >= 0 and int(cid[:, p:].max()) < k


@pytest.mark.parametrize("k", [3, 4])
def test_semantic_clusters_initialised_at_evenly_spaced_score_ranks(gen, k):
    # k-means on the L2-normalised non-protected features, initialised at the tokens of
    # descending-score ranks (r * m) // k (ties by lower index): compare with python_ref
    n, p = 14, 1
    x = torch.randn(2, n, 6, generator=gen) * 3
    score = torch.randint(0, 5, (2, n), generator=gen).float()  # ties
    cid = semantic_clusters(x, score, p, k, iters=2)
    m = n - p
    for b in range(2):
        feats = x[b : b + 1, p:] / x[b : b + 1, p:].norm(dim=-1, keepdim=True)
        order = sorted(range(m), key=lambda i: (-float(score[b, p + i]), i))
        init = feats[:, [order[(r * m) // k] for r in range(k)]]
        _, assign = ref_ops.kmeans(feats, init, 2)
        assert cid[b, p:].tolist() == assign[0].tolist()
    # another initialisation (ascending ranks) gives other clusters for this input
    feats = x[:1, p:] / x[:1, p:].norm(dim=-1, keepdim=True)
    asc = sorted(range(m), key=lambda i: (float(score[0, p + i]), i))
    _, other = ref_ops.kmeans(feats, feats[:, [asc[(r * m) // k] for r in range(k)]], 2)
    assert cid[0, p:].tolist() != other[0].tolist()


# --------------------------------------------------------------------------- bipartite_merge
def _brute_merge(x, metric, size, r, p):
    """ToMe's bipartite matching, one loop per image, in float64."""
    bsz, n, c = x.shape
    outs, sizes, srcs = [], [], []
    for b in range(bsz):
        a_ids, b_ids = list(range(p, n, 2)), list(range(p + 1, n, 2))
        rr = min(r, len(a_ids))
        m = metric[b].double()
        m = m / m.norm(dim=-1, keepdim=True)
        best = []
        for a in a_ids:
            sims = [float(m[a] @ m[bb]) for bb in b_ids]
            j = max(range(len(sims)), key=lambda t: (sims[t], -t))
            best.append((sims[j], j))
        order = sorted(range(len(a_ids)), key=lambda t: -best[t][0])
        merged = set(order[:rr])
        outputs = list(range(p)) + [a for t, a in enumerate(a_ids) if t not in merged] + b_ids
        groups = {tok: [tok] for tok in outputs}
        for t in merged:
            groups[b_ids[best[t][1]]].append(a_ids[t])
        src = [None] * n
        xo, so = [], []
        for j, tok in enumerate(outputs):
            for i in groups[tok]:
                src[i] = j
            s = sum(float(size[b, i]) for i in groups[tok])
            xo.append(sum(x[b, i].double() * float(size[b, i]) for i in groups[tok]) / s)
            so.append(s)
        outs.append(torch.stack(xo))
        sizes.append(torch.tensor(so, dtype=torch.float64))
        srcs.append(torch.tensor(src))
    return torch.stack(outs), torch.stack(sizes), torch.stack(srcs)


@pytest.mark.parametrize("n, p, r", [(17, 1, 5), (17, 1, 8), (16, 1, 3), (12, 0, 4), (11, 2, 100)])
def test_bipartite_merge_matches_brute_force(gen, n, p, r):
    bsz, c = 2, 6
    x = torch.randn(bsz, n, c, generator=gen)
    metric = torch.randn(bsz, n, 5, generator=gen)
    size = torch.randint(1, 4, (bsz, n), generator=gen).float()  # already-merged sizes
    out, new_size, src, holders = bipartite_merge(x, metric, size, r, p)
    assert torch.equal(src.gather(1, holders), torch.arange(holders.shape[1]).expand_as(holders))
    rr = min(r, len(range(p, n, 2)))
    assert out.shape == (bsz, n - rr, c) and out.dtype == x.dtype
    assert new_size.shape == (bsz, n - rr)
    # sizes are conserved and every input maps to a valid output
    torch.testing.assert_close(new_size.sum(1), size.sum(1))
    assert src.shape == (bsz, n) and int(src.min()) >= 0 and int(src.max()) < n - rr
    for b in range(bsz):
        assert set(src[b].tolist()) == set(range(n - rr))  # every output has a source
        assert src[b, :p].tolist() == list(range(p))  # protected tokens untouched
    # a merged token is the size-weighted mean of its sources
    for b in range(bsz):
        for j in range(n - rr):
            members = (src[b] == j).nonzero().flatten()
            w = size[b, members]
            expect = (x[b, members] * w[:, None]).sum(0) / w.sum()
            torch.testing.assert_close(out[b, j], expect, rtol=1e-5, atol=1e-6)
            assert float(new_size[b, j]) == float(w.sum())
    bx, bs, bsrc = _brute_merge(x, metric, size, r, p)
    assert torch.equal(src, bsrc)
    torch.testing.assert_close(out.double(), bx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new_size.double(), bs)


def test_bipartite_merge_unit_sizes_start(gen):
    x = torch.randn(1, 9, 4, generator=gen)
    out, size, src, _ = bipartite_merge(x, x, torch.ones(1, 9), 4, 1)
    assert out.shape == (1, 5, 4)
    assert size.tolist() == [[1.0] + [2.0] * 4]  # each B token absorbed exactly one A token
    assert torch.equal(out[0, 0], x[0, 0])


# --------------------------------------------------------------------------- ToMe forward
def test_tome_forward_without_active_stage_equals_the_model(model, images):
    with torch.no_grad():
        ref = model(images)
        out = tome_forward(model, images, [(1, 1.0), (3, 1.0), (4, 1.0)])
    assert out.shape == ref.shape == (2, 11, *IMG)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_tome_forward_prunes_to_full_resolution_logits(model, images, schedule30):
    with torch.no_grad():
        ref = model(images)
        out = tome_forward(model, images, schedule30)
    assert out.shape == (2, 11, *IMG)
    assert bool(torch.isfinite(out).all())
    assert float((out - ref).abs().max()) > 1e-3  # merging changed something


def _token_counts(model, fn):
    """Tokens each block's attention sees (a hook on every qkv projection)."""
    seen = []
    hooks = [blk.attn.qkv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
             for blk in model.blocks]
    try:
        with torch.no_grad():
            out = fn()
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def test_tome_forward_merges_in_several_rounds_to_the_stage_count(model, images):
    schedule = [(1, 0.2)]  # 48 -> 10 patch tokens: more than half, needs several rounds
    seen, out = _token_counts(model, lambda: tome_forward(model, images, schedule))
    expected = stage_token_counts(model.vit_shape(), schedule)
    assert expected[2] == 11
    assert seen == expected
    assert out.shape == (2, 11, *IMG)


# --------------------------------------------------------------------------- runners
def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["lvtp", "evit", "tome", "random", "lvtp-equal-weights", "lvtp-frozen",
                                  "lvtp:alpha=0.3,entropy_mode=high,qs=1/2"])
def test_make_runner_logits_and_release(model, images, schedule30, name):
    before = _state(model)
    with torch.no_grad():
        ref = model(images)
    method = parse_method(name)
    runner = make_runner(model, method, schedule30)
    try:
        assert lvtp_kernels.is_patched(model) == (method.kind == "lvtp")
        with torch.no_grad():
            out = runner(images)
    finally:
        release(model)
    assert out.shape == (2, 11, *IMG)
    assert bool(torch.isfinite(out).all())
    assert float((out - ref).abs().max()) > 1e-4  # pruning did happen
    assert not lvtp_kernels.is_patched(model)
    assert type(model) is ViTSegmenter and not hasattr(model, "_lvtp")
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(images), ref)


def test_make_runner_rejects_layers_option(model, schedule30):
    with pytest.raises(ValueError, match="layers"):
        make_runner(model, parse_method("lvtp:layers=1/3"), schedule30)
    assert not lvtp_kernels.is_patched(model)
    with pytest.raises(ValueError, match="unknown method kind"):
        make_runner(model, Method("x", "nope"), schedule30)


def test_random_runner_is_seeded(model, images, schedule30):
    with torch.no_grad():
        a = make_runner(model, METHODS["random"], schedule30, seed=3)(images)
        b = make_runner(model, METHODS["random"], schedule30, seed=3)(images)
        c = make_runner(model, METHODS["random"], schedule30, seed=4)(images)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ["lvtp", "evit", "random", "tome"])
def test_runners_share_the_stage_token_counts(model, images, schedule30, name):
    expected = stage_token_counts(model.vit_shape(), schedule30)
    assert expected[0] == 49 and expected[-1] < expected[0]  # the schedule prunes
    runner = make_runner(model, parse_method(name), schedule30)
    try:
        seen, out = _token_counts(model, lambda: runner(images))
    finally:
        release(model)
    assert seen == expected
    assert out.shape == (2, 11, *IMG)
