"""The compiled selection (lvtp_kernels._C.select, the "cpp"/"cuda" backends of
torch.ops.lvtp.select) must be bit-identical to python_ref.select on CPU (torch.equal on
keep_idx, prune_idx and cluster_id) across sizes, cluster counts, feature widths,
protected tokens, edge / no edge, both entropy modes and budgets.
"""

from __future__ import annotations


import pytest
import torch

import lvtp_kernels  # noqa: F401  (registers torch.ops.lvtp.*)
from lvtp_kernels import registry
from python_ref import ops as ref

from ext_marks import HAVE_CPP, HAVE_CUDA, needs_cpp, needs_cuda, compiled_select, opcheck_compiled  # noqa: E402,F401


def _inputs(seed, b, n_tok, c, q=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, n_tok, c, generator=g).to(dtype)
    ent = torch.rand(b, n_tok, q, generator=g)
    edge = torch.rand(b, n_tok, generator=g)
    return tokens, ent, edge


def _args(tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters):
    return (tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters)


def assert_same(got, want):
    assert len(got) == 3
    for g, w, name in zip(got, want, ("keep_idx", "prune_idx", "cluster_id")):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
        assert torch.equal(g.cpu(), w.cpu()), name


def _grid():
    """Every (n, clusters, C) of the brief; the other settings rotate with the index."""
    cases = []
    i = 0
    for n_tok in (1, 2, 50, 196, 1024):
        for clusters in (1, 2, 8, 32):
            for c in (16, 192, 768):
                p = (0, 1, 5)[i % 3] if n_tok > 5 else (0 if n_tok == 1 else i % 2)
                keep = (0.7, 1.0, 0.001, 0.25)[i % 4]
                b = 1 if n_tok >= 1024 else 2
                cases.append((n_tok, clusters, c, b, p, keep, i % 2 == 0, ("low", "high")[(i // 2) % 2]))
                i += 1
    return cases


GRID = _grid()


@needs_cpp
@pytest.mark.parametrize("case", GRID, ids=lambda c: "n{}-k{}-C{}-B{}-P{}-r{}-{}-{}".format(
    c[0], c[1], c[2], c[3], c[4], c[5], "edge" if c[6] else "noedge", c[7]))
def test_select_bit_identical(case):
    n_tok, clusters, c, b, p, keep, with_edge, mode = case
    tokens, ent, edge = _inputs(n_tok * 1000 + clusters * 10 + c, b, n_tok, c)
    args = _args(tokens, ent, edge if with_edge else None, keep, p, 0.5, mode, clusters, 10)
    assert_same(compiled_select(*args), ref.select(*args))


@needs_cpp
@pytest.mark.parametrize("p", [0, 1, 5])
@pytest.mark.parametrize("mode", ["low", "high"])
@pytest.mark.parametrize("with_edge", [True, False])
@pytest.mark.parametrize("keep", [1.0, 0.5, 1e-3])
def test_select_settings(p, mode, with_edge, keep):
    tokens, ent, edge = _inputs(7 + p, 3, 65, 24)
    args = _args(tokens, ent, edge if with_edge else None, keep, p, 0.3, mode, 6, 5)
    assert_same(compiled_select(*args), ref.select(*args))


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_select_dtypes(dtype):
    tokens, ent, edge = _inputs(3, 2, 197, 64, dtype=dtype)
    for e, d in ((ent.to(dtype), edge.to(dtype)), (ent, edge)):
        args = _args(tokens, e, d, 0.6, 1, 0.5, "low", 8, 10)
        assert_same(compiled_select(*args), ref.select(*args))


@needs_cpp
def test_select_noncontiguous():
    g = torch.Generator().manual_seed(11)
    tokens = torch.randn(2, 48, 120, generator=g).transpose(1, 2)  # (B, N=120, C=48), permuted
    ent = torch.rand(2, 4, 120, generator=g).transpose(1, 2)
    edge = torch.rand(2, 240, generator=g)[:, ::2]
    assert not (tokens.is_contiguous() or ent.is_contiguous() or edge.is_contiguous())
    args = _args(tokens, ent, edge, 0.5, 1, 0.5, "low", 8, 10)
    assert_same(compiled_select(*args), ref.select(*args))
    t64 = tokens.double()  # float64 view-preserving path of the reference
    args = _args(t64, ent, edge, 0.5, 1, 0.5, "high", 8, 10)
    assert_same(compiled_select(*args), ref.select(*args))


@needs_cpp
def test_select_ties():
    """Duplicate tokens, constant importance (all sigma 0: uniform weights), zero tokens."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1, 6, 32, generator=g)
    tokens = base.repeat(2, 10, 1)  # (2, 60, 32): every token repeated 10 times
    ent = torch.full((2, 60, 4), 0.25)
    for edge in (None, torch.full((2, 60), 0.5), torch.rand(2, 6, generator=g).repeat(1, 10)):
        for keep in (0.1, 0.5, 1.0):
            args = _args(tokens, ent, edge, keep, 1, 0.5, "low", 8, 10)
            assert_same(compiled_select(*args), ref.select(*args))
    tokens = torch.zeros(2, 20, 8)  # zero norm: clamp_min(1e-12)
    tokens[:, ::3] = 1.0
    args = _args(tokens, torch.rand(2, 20, 4, generator=g), None, 0.5, 0, 0.5, "high", 4, 3)
    assert_same(compiled_select(*args), ref.select(*args))


@needs_cpp
def test_select_public_op_uses_cpp(monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "cpp")
    assert registry.choose_backend("select", "cpu") == "cpp"
    tokens, ent, edge = _inputs(1, 2, 197, 96)
    args = _args(tokens, ent, edge, 0.7, 1, 0.5, "low", 8, 10)
    assert_same(torch.ops.lvtp.select(*args), ref.select(*args))
    monkeypatch.setenv("LVTP_IMPL", "auto")
    assert registry.choose_backend("select", "cpu") == "cpp"
    assert_same(torch.ops.lvtp.select(*args), ref.select(*args))


@needs_cpp
def test_select_opcheck_cpu():
    tokens, ent, edge = _inputs(2, 2, 40, 16)
    opcheck_compiled("select", _args(tokens, ent, edge, 0.5, 1, 0.5, "low", 4, 3))
    opcheck_compiled("select", _args(tokens, ent, None, 1.0, 0, 0.5, "high", 8, 2))


@needs_cpp
def test_select_rejects_bad_args():
    tokens, ent, edge = _inputs(2, 1, 10, 4)
    with pytest.raises(RuntimeError, match="keep_ratio"):
        compiled_select(tokens, ent, edge, 0.0, 1, 0.5, "low", 4, 3)
    with pytest.raises(RuntimeError, match="entropy_mode"):
        compiled_select(tokens, ent, edge, 0.5, 1, 0.5, "mid", 4, 3)
    with pytest.raises(RuntimeError, match="num_protected"):
        compiled_select(tokens, ent, edge, 0.5, 10, 0.5, "low", 4, 3)


# --------------------------------------------------------------------------- CUDA
def _cuda_agrees(args, n_tok):
    """The CUDA select on ``args``: on the GPU, equal to the C++ one, to python_ref (up to
    N = 1025; the reference is slow beyond) and to itself run again (deterministic)."""
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    got = compiled_select(*cuda_args)
    assert all(t.is_cuda for t in got)
    assert_same(got, compiled_select(*args))
    if n_tok <= 1025:
        assert_same(got, ref.select(*cuda_args))
    assert_same(got, compiled_select(*cuda_args))  # deterministic
    return got


CUDA_CASES = [c for c in GRID if c[0] != 1024 or c[2] == 768] + [
    (1025, 8, 768, 8, 1, 0.7, True, "low"),
    (4097, 8, 64, 2, 1, 0.5, False, "high"),  # n > the rank kernel's tile
]


@needs_cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: "n{}-k{}-C{}-B{}-P{}".format(*c[:5]))
def test_select_cuda_matches_cpu_and_reference(case):
    """CUDA sums in other orders (norms, importance, distances): decisions agree away
    from ties at ~1e-15, which random data never hits."""
    n_tok, clusters, c, b, p, keep, with_edge, mode = case
    tokens, ent, edge = _inputs(n_tok * 1000 + clusters * 10 + c, b, n_tok, c)
    args = _args(tokens, ent, edge if with_edge else None, keep, p, 0.5, mode, clusters, 10)
    _cuda_agrees(args, n_tok)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_select_cuda_dtypes_and_ties(dtype):
    tokens, ent, edge = _inputs(3, 2, 197, 64, dtype=dtype)
    args = _args(tokens, ent.to(dtype), edge.to(dtype), 0.6, 1, 0.5, "low", 8, 10)
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    assert_same(compiled_select(*cuda_args), ref.select(*args))
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(1, 6, 32, generator=g).repeat(2, 10, 1).to(dtype)
    ent = torch.full((2, 60, 4), 0.25, dtype=dtype)
    args = _args(tokens, ent, None, 0.5, 1, 0.5, "low", 8, 10)
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    assert_same(compiled_select(*cuda_args), ref.select(*args))


# --------------------------------------------------------------------------- select_tokens
# allocation (the compiled select's last argument; torch.ops.lvtp.select's `allocation`):
# allocation "ranked" is select, "proportional" gives every cluster its
# python_ref.proportional_quotas share. Bit-identical to python_ref.select on CPU.
ALLOCS = ("ranked", "proportional")


def _tok_args(tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters, allocation):
    return (tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters, allocation)


def _tok_grid():
    """Every (n, clusters, C) of the brief for n <= 196; n = 1024 at C 16 / 192 for every
    cluster count and at C 768 for 8 clusters only (the reference is slow there).
    Protected tokens, keep ratio and edge rotate with the index."""
    cases = []
    i = 0
    for a, n_tok in enumerate((1, 2, 50, 196, 1024)):
        for b_, clusters in enumerate((1, 2, 8, 32)):
            for c_, c in enumerate((16, 192, 768)):
                if n_tok == 1024 and c == 768 and clusters != 8:
                    continue
                p = (0, 1, 5)[i % 3] if n_tok > 5 else (0 if n_tok == 1 else i % 2)
                keep = (1.0, 0.5, 0.001)[(a + b_ + c_ + 2) % 3]  # every keep along each axis
                cases.append((n_tok, clusters, c, 1 if n_tok >= 1024 else 2, p, keep, i % 2 == 0,
                              ("low", "high")[(i // 2) % 2]))
                i += 1
    return cases


TOK_GRID = _tok_grid()


def _tok_id(c):
    return "n{}-k{}-C{}-B{}-P{}-r{}-{}-{}".format(*c[:6], "edge" if c[6] else "noedge", c[7])


@pytest.fixture
def impl_cpp(monkeypatch):
    monkeypatch.setenv("LVTP_IMPL", "cpp")
    assert registry.choose_backend("select", "cpu") == "cpp"


def _cluster_counts(keep_idx, cluster_id, k):
    """(kept per cluster, size per cluster) of one image, non-protected tokens only."""
    cid = cluster_id.long()
    kept = cid[keep_idx]
    kept = kept[kept >= 0]
    return (torch.bincount(kept, minlength=k).tolist(), torch.bincount(cid[cid >= 0], minlength=k).tolist())


def assert_quotas(out, n_tok, p, keep, clusters):
    """Proportional: each cluster keeps exactly its proportional_quotas share, sum K."""
    keep_idx, _, cluster_id = out
    budget_k = ref.budget(n_tok, p, keep)
    k = min(clusters, n_tok - p)
    for i in range(keep_idx.shape[0]):
        assert torch.equal(keep_idx[i, :p].cpu(), torch.arange(p))
        kept, sizes = _cluster_counts(keep_idx[i].cpu(), cluster_id[i].cpu(), k)
        assert sum(kept) == budget_k
        assert kept == ref.proportional_quotas(sizes, budget_k), (kept, sizes)


@needs_cpp
@pytest.mark.parametrize("allocation", ALLOCS)
@pytest.mark.parametrize("case", TOK_GRID, ids=_tok_id)
def test_select_tokens_bit_identical(case, allocation, impl_cpp):
    n_tok, clusters, c, b, p, keep, with_edge, mode = case
    tokens, ent, edge = _inputs(n_tok * 1000 + clusters * 10 + c + 1, b, n_tok, c)
    args = _tok_args(tokens, ent, edge if with_edge else None, keep, p, 0.5, mode, clusters, 10, allocation)
    got = torch.ops.lvtp.select(*args)
    assert_same(got, ref.select(*args))
    if allocation == "proportional":
        assert_quotas(got, n_tok, p, keep, clusters)
    else:  # ranked is select
        assert_same(got, compiled_select(*args[:-1]))


@needs_cpp
@pytest.mark.parametrize("p", [0, 1, 5])
@pytest.mark.parametrize("with_edge", [True, False])
@pytest.mark.parametrize("keep", [1.0, 0.5, 1e-3])
def test_select_tokens_proportional_settings(p, with_edge, keep, impl_cpp):
    tokens, ent, edge = _inputs(17 + p, 3, 97, 24)
    for mode, clusters in (("low", 6), ("high", 13)):
        args = _tok_args(tokens, ent, edge if with_edge else None, keep, p, 0.3, mode, clusters, 5, "proportional")
        got = torch.ops.lvtp.select(*args)
        assert_same(got, ref.select(*args))
        assert_quotas(got, 97, p, keep, clusters)


@needs_cpp
def test_select_tokens_proportional_empty_clusters_and_ties(impl_cpp):
    """Duplicate tokens (6 distinct, 8 clusters: empty clusters), constant importance,
    zero-norm tokens, and float64 / bfloat16 inputs."""
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(1, 6, 32, generator=g).repeat(2, 10, 1)
    ent = torch.full((2, 60, 4), 0.25)
    for edge in (None, torch.rand(2, 6, generator=g).repeat(1, 10)):
        for keep in (0.1, 0.5, 1.0):
            args = _tok_args(tokens, ent, edge, keep, 1, 0.5, "low", 8, 10, "proportional")
            got = torch.ops.lvtp.select(*args)
            assert_same(got, ref.select(*args))
            assert_quotas(got, 60, 1, keep, 8)
            assert min(_cluster_counts(got[0][0], got[2][0], 8)[1]) == 0  # some cluster is empty
    zeros = torch.zeros(2, 20, 8)
    zeros[:, ::3] = 1.0
    args = _tok_args(zeros, torch.rand(2, 20, 4, generator=g), None, 0.5, 0, 0.5, "high", 4, 3, "proportional")
    assert_same(torch.ops.lvtp.select(*args), ref.select(*args))
    for dtype in (torch.float64, torch.bfloat16):
        tokens, ent, edge = _inputs(3, 2, 197, 64, dtype=dtype)
        args = _tok_args(tokens, ent.to(dtype), edge.to(dtype), 0.6, 1, 0.5, "low", 8, 10, "proportional")
        assert_same(torch.ops.lvtp.select(*args), ref.select(*args))


@needs_cpp
def test_select_tokens_opcheck_cpu():
    tokens, ent, edge = _inputs(2, 2, 40, 16)
    for allocation in ALLOCS:
        opcheck_compiled("select",
                              _tok_args(tokens, ent, edge, 0.5, 1, 0.5, "low", 4, 3, allocation))
        opcheck_compiled("select",
                              _tok_args(tokens, ent, None, 1.0, 0, 0.5, "high", 8, 2, allocation))


@needs_cpp
def test_select_tokens_rejects_unknown_allocation():
    tokens, ent, edge = _inputs(2, 1, 10, 4)
    with pytest.raises(RuntimeError, match="allocation"):
        compiled_select(tokens, ent, edge, 0.5, 1, 0.5, "low", 4, 3, "uniform")


TOK_CUDA_CASES = [c for c in TOK_GRID if c[0] != 1024 or c[2] != 16] + [
    (1025, 8, 768, 8, 1, 0.7, True, "low"),
    (4097, 8, 64, 2, 1, 0.5, False, "high"),  # n > the rank kernel's tile
    (3000, 40, 32, 2, 0, 0.3, True, "low"),  # more clusters than warps in the block
]


@needs_cuda
@pytest.mark.parametrize("allocation", ALLOCS)
@pytest.mark.parametrize("case", TOK_CUDA_CASES, ids=_tok_id)
def test_select_tokens_cuda_matches_cpu_and_reference(case, allocation):
    n_tok, clusters, c, b, p, keep, with_edge, mode = case
    tokens, ent, edge = _inputs(n_tok * 1000 + clusters * 10 + c + 1, b, n_tok, c)
    args = _tok_args(tokens, ent, edge if with_edge else None, keep, p, 0.5, mode, clusters, 10, allocation)
    got = _cuda_agrees(args, n_tok)
    if allocation == "proportional":
        assert_quotas(got, n_tok, p, keep, clusters)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_select_tokens_cuda_dtypes_and_ties(dtype):
    tokens, ent, edge = _inputs(3, 2, 197, 64, dtype=dtype)
    args = _tok_args(tokens, ent.to(dtype), edge.to(dtype), 0.6, 1, 0.5, "low", 8, 10, "proportional")
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    assert_same(compiled_select(*cuda_args), ref.select(*args))
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(1, 6, 32, generator=g).repeat(2, 10, 1).to(dtype)
    for keep in (0.1, 0.5, 1.0):
        args = _tok_args(tokens, torch.full((2, 60, 4), 0.25, dtype=dtype), None, keep, 1, 0.5, "low", 8, 10,
                         "proportional")
        cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
        assert_same(compiled_select(*cuda_args), ref.select(*args))


@needs_cuda
def test_select_cuda_public_op_and_opcheck(monkeypatch):  # both allocations
    monkeypatch.setenv("LVTP_IMPL", "cuda")
    assert registry.choose_backend("select", "cuda") == "cuda"
    tokens, ent, edge = _inputs(2, 2, 40, 16)
    for allocation in ALLOCS:
        args = _tok_args(tokens.cuda(), ent.cuda(), edge.cuda(), 0.5, 1, 0.5, "low", 4, 3, allocation)
        assert_same(torch.ops.lvtp.select(*args), ref.select(*args))
        opcheck_compiled("select", args)
    with pytest.raises(RuntimeError, match="allocation"):
        compiled_select(tokens.cuda(), ent.cuda(), None, 0.5, 1, 0.5, "low", 4, 3, "uniform")


@needs_cpp
@pytest.mark.parametrize("allocation", ALLOCS)
@pytest.mark.parametrize("n_tok,c", [(2, 16), (50, 192), (197, 64), (577, 32)])
def test_select_tokens_batch_smaller_than_threads(n_tok, c, allocation):
    """A batch smaller than the thread count spreads each image's k-means over the threads
    (kmeans_image_parallel): the same outputs as one task per image, as the reference, and
    for 1 or 2 threads."""
    tokens, ent, edge = _inputs(11, 2, n_tok, c)
    args = (0.5, 1, 0.3, "high", 8, 10, allocation)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pair = compiled_select(tokens, ent, edge, *args)  # B = 2 >= threads: per image
        outs = []
        for th in (2, 1):
            torch.set_num_threads(th)
            outs.append([compiled_select(tokens[i:i + 1], ent[i:i + 1], edge[i:i + 1], *args)
                         for i in range(2)])
    finally:
        torch.set_num_threads(threads)
    want = ref.select(tokens, ent, edge, *args)
    for one in outs:
        for t in range(3):
            got = torch.cat([one[0][t], one[1][t]])
            assert torch.equal(got, pair[t]) and torch.equal(got, want[t]), (t, allocation)


@needs_cpp
@pytest.mark.parametrize("allocation", ["ranked", "proportional"])
def test_select_nan_entropy_gives_well_formed_indices(allocation):
    """The C++ op ranks u in torch.sort's total order (NaN above every number): a NaN
    entropy gives meaningless but well-formed indices (std::stable_sort with `a > b` on NaN
    had no strict weak order: undefined behaviour). tests/test_cuda_simt.py checks that the
    CUDA kernels give the same indices."""
    tokens, ent, edge = _inputs(3, 2, 50, 12)
    ent[0, 5, 1] = float("nan")
    ent[1] = float("nan")
    keep_idx, prune_idx, cluster_id = compiled_select(tokens, ent, edge, 0.5, 1, 0.5, "low", 8, 3,
                                                                      allocation)
    for b in range(2):
        kept, pruned = keep_idx[b].tolist(), prune_idx[b].tolist()
        assert kept[0] == 0 and kept == sorted(set(kept)) and sorted(kept + pruned) == list(range(50))
        assert cluster_id[b, 0] == -1 and bool(((cluster_id[b, 1:] >= 0) & (cluster_id[b, 1:] < 8)).all())
