"""Triton ``gather_tokens``, ``scatter_tokens`` and ``reconstruct_stage``
(lvtp_kernels/ops/tokens_triton.py) against python_ref.

Runs the real kernels on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1,
set by conftest.py), called through ``torch.ops.lvtp`` with ``LVTP_IMPL=triton``. Every
result must be bit-identical to the reference (``torch.equal``) in every dtype: gather
and scatter are copies, and reconstruct_stage sums each cluster in keep_idx order, as
the reference's scatter_add_ does on CPU, and rounds like PyTorch.
"""

from __future__ import annotations


import pytest
import torch

import lvtp_kernels  # noqa: F401  (defines torch.ops.lvtp.*)
from python_ref import ops as ref
from python_ref import pipeline
from lvtp_kernels.ops._common import interpreting  # noqa: E402
from triton_compile import compile_for_hopper  # noqa: E402
from ext_marks import use_triton  # noqa: E402

# CPU tensors through the Triton interpreter; on a GPU machine tests/test_gpu_kernels.py runs
# the compiled kernels against the reference instead.
pytestmark = pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (CPU interpreter tests)")

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
OPS = ("gather_tokens", "scatter_tokens", "reconstruct_stage")


_triton_backend = pytest.fixture(autouse=True, name="_triton_backend")(lambda monkeypatch: use_triton(monkeypatch, *OPS))


def assert_same(got, want):
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.is_contiguous()
    assert torch.equal(got, want), f"max |diff| {(got.double() - want.double()).abs().max().item():.3g}"


def rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def subsets(gen, b, n, k):
    """(B, K) int64: per row K distinct indices of 0..n-1 in random order."""
    return torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(b)])


def strided(t):
    """The same values in a (B, N, C) view with the channel dim outermost in memory and a
    step and a storage offset on the token dim."""
    b, n, c = t.shape
    buf = torch.zeros(c, b, 2 * n + 1, dtype=t.dtype)
    view = buf[:, :, 1::2].permute(1, 2, 0)
    view.copy_(t)
    assert not view.is_contiguous() and torch.equal(view, t)
    return view


# --------------------------------------------------------------------------- gather
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idx_dtype", (torch.int64, torch.int32))
def test_gather(gen, dtype, idx_dtype):
    x = rand(gen, 2, 197, 37, dtype=dtype)
    idx = torch.randint(0, 197, (2, 140), generator=gen).to(idx_dtype)  # duplicates allowed
    assert_same(torch.ops.lvtp.gather_tokens(x, idx), ref.gather_tokens(x, idx))


@pytest.mark.parametrize("b,n,k,c", [(1, 1, 1, 1), (2, 2, 3, 5), (2, 50, 35, 129), (1, 1025, 717, 33)])
def test_gather_sizes(gen, b, n, k, c):
    x = rand(gen, b, n, c)
    idx = torch.randint(0, n, (b, k), generator=gen)
    assert_same(torch.ops.lvtp.gather_tokens(x, idx), ref.gather_tokens(x, idx))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_gather_non_contiguous(gen, dtype):
    x = rand(gen, 2, 77, 45, dtype=dtype)
    idx_buf = torch.randint(0, 77, (2, 2 * 50), generator=gen, dtype=torch.int32)
    idx = idx_buf[:, ::2]  # stepped index rows
    assert not idx.is_contiguous()
    assert_same(torch.ops.lvtp.gather_tokens(strided(x), idx), ref.gather_tokens(x, idx))


def test_gather_empty(gen):
    x = rand(gen, 2, 9, 5)
    empty_idx = torch.zeros(2, 0, dtype=torch.int64)
    assert_same(torch.ops.lvtp.gather_tokens(x, empty_idx), ref.gather_tokens(x, empty_idx))
    no_channels = x[..., :0]
    idx = torch.randint(0, 9, (2, 4), generator=gen)
    assert_same(torch.ops.lvtp.gather_tokens(no_channels, idx), ref.gather_tokens(no_channels, idx))


# --------------------------------------------------------------------------- scatter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idx_dtype", (torch.int64, torch.int32))
def test_scatter(gen, dtype, idx_dtype):
    full = rand(gen, 2, 197, 37, dtype=dtype)
    x = rand(gen, 2, 140, 37, dtype=dtype)
    idx = subsets(gen, 2, 197, 140).to(idx_dtype)
    got = torch.ops.lvtp.scatter_tokens(full, x, idx)
    assert_same(got, ref.scatter_tokens(full, x, idx))
    assert got.data_ptr() != full.data_ptr()


@pytest.mark.parametrize("b,n,k,c", [(1, 1, 1, 1), (2, 2, 2, 5), (2, 50, 0, 7), (2, 50, 35, 129), (1, 1025, 717, 33)])
def test_scatter_sizes(gen, b, n, k, c):
    full = rand(gen, b, n, c)
    x = rand(gen, b, k, c)
    idx = subsets(gen, b, n, k)
    assert_same(torch.ops.lvtp.scatter_tokens(full, x, idx), ref.scatter_tokens(full, x, idx))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
def test_scatter_non_contiguous(gen, dtype):
    full = rand(gen, 2, 97, 19, dtype=dtype)
    x = rand(gen, 2, 40, 19, dtype=dtype)
    idx = subsets(gen, 2, 97, 80)[:, ::2]  # stepped, still distinct
    got = torch.ops.lvtp.scatter_tokens(strided(full), strided(x), idx)
    assert_same(got, ref.scatter_tokens(full, x, idx))


def test_scatter_then_gather_roundtrip(gen):
    full = rand(gen, 3, 101, 23)
    x = rand(gen, 3, 64, 23)
    idx = subsets(gen, 3, 101, 64)
    out = torch.ops.lvtp.scatter_tokens(full, x, idx)
    assert torch.equal(torch.ops.lvtp.gather_tokens(out, idx), x)
    untouched = torch.ones(3, 101, dtype=torch.bool)
    untouched.scatter_(1, idx, False)
    assert torch.equal(out[untouched], full[untouched])


# --------------------------------------------------------------------------- reconstruct_stage
def stage_inputs(gen, b, n, c, n_kept, protected, clusters, dtype=torch.float32, xs_dtype=None):
    """A pruning stage as the pipeline stores it: keep_idx = protected tokens then the kept
    ones ascending, prune_idx ascending, cluster ids -1 on protected tokens. The last
    cluster is given to pruned tokens only (a cluster without a kept token)."""
    keep, prune, cid = [], [], []
    for _ in range(b):
        rest = torch.randperm(n - protected, generator=gen) + protected
        kept = rest[: n_kept - protected].sort().values
        pruned = rest[n_kept - protected :].sort().values
        keep.append(torch.cat([torch.arange(protected), kept]))
        prune.append(pruned)
        row = torch.randint(0, max(clusters - 1, 1), (n,), generator=gen, dtype=torch.int32)
        if clusters > 1 and pruned.numel():
            row[pruned[torch.rand(pruned.numel(), generator=gen) < 0.2]] = clusters - 1
        row[:protected] = -1
        cid.append(row)
    keep_idx, prune_idx, cluster_id = torch.stack(keep), torch.stack(prune), torch.stack(cid)
    x_stage = rand(gen, b, n, c, dtype=xs_dtype or dtype)
    kept_feats = torch.gather(x_stage.to(torch.float64), 1, keep_idx[..., None].expand(-1, -1, c))
    full = (kept_feats + 0.3 * rand(gen, b, n_kept, c, dtype=torch.float64)).to(dtype)
    return full, x_stage, keep_idx, prune_idx, cluster_id


def _check_reconstruct(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode):
    got = torch.ops.lvtp.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode)
    want = pipeline.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode)
    assert_same(got, want)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ("residual", "frozen"))
def test_reconstruct(gen, dtype, mode):
    args = stage_inputs(gen, 2, 197, 37, n_kept=139, protected=1, clusters=8, dtype=dtype)
    _check_reconstruct(*args, 8, mode)


@pytest.mark.parametrize(
    "b,n,c,n_kept,protected,clusters",
    [
        (1, 2, 3, 1, 1, 1),  # one protected kept, one pruned in the spare cluster
        (2, 50, 129, 36, 1, 1),  # a single cluster, C past a power of two
        (2, 50, 7, 20, 5, 12),  # more clusters than some images use, register tokens
        (1, 577, 65, 404, 1, 8),
        (2, 30, 11, 30, 1, 8),  # everything kept: nothing pruned
    ],
)
def test_reconstruct_sizes(gen, b, n, c, n_kept, protected, clusters):
    args = stage_inputs(gen, b, n, c, n_kept, protected, clusters)
    _check_reconstruct(*args, clusters, "residual")


def test_reconstruct_nothing_kept_is_frozen(gen):
    """K = 0: every cluster is empty of kept tokens, so the result is x_stage itself."""
    x_stage = rand(gen, 2, 13, 9)
    full = x_stage[:, :0]
    keep_idx = torch.zeros(2, 0, dtype=torch.int64)
    prune_idx = torch.arange(13).repeat(2, 1)
    cid = torch.randint(0, 3, (2, 13), generator=gen, dtype=torch.int32)
    got = _check_reconstruct(full, x_stage, keep_idx, prune_idx, cid, 3, "residual")
    assert torch.equal(got, x_stage)


def test_reconstruct_pruned_protected_id_uses_spare_slot(gen):
    """Pruned tokens with cluster id -1 get the mean over kept tokens with id -1, like the
    reference (its spare slot): only reachable with hand-made inputs."""
    full, x_stage, keep_idx, prune_idx, cid = stage_inputs(gen, 2, 40, 6, n_kept=25, protected=3, clusters=4)
    cid.scatter_(1, prune_idx[:, :4].to(torch.int64), -1)
    _check_reconstruct(full, x_stage, keep_idx, prune_idx, cid, 4, "residual")


@pytest.mark.parametrize(
    "dtype,xs_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16), (torch.float16, torch.bfloat16)]
)
def test_reconstruct_mixed_dtypes(gen, dtype, xs_dtype):
    args = stage_inputs(gen, 2, 64, 21, n_kept=45, protected=1, clusters=6, dtype=dtype, xs_dtype=xs_dtype)
    for mode in ("residual", "frozen"):
        _check_reconstruct(*args, 6, mode)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_reconstruct_non_contiguous_and_int32(gen, dtype):
    full, x_stage, keep_idx, prune_idx, cid = stage_inputs(
        gen, 2, 75, 17, n_kept=52, protected=1, clusters=5, dtype=dtype
    )
    keep32 = torch.zeros(2, 2 * 52, dtype=torch.int32)[:, ::2]
    keep32.copy_(keep_idx)
    cid64 = cid.to(torch.int64).t().contiguous().t()
    for mode in ("residual", "frozen"):
        got = torch.ops.lvtp.reconstruct_stage(
            strided(full), strided(x_stage), keep32, prune_idx.to(torch.int32), cid64, 5, mode
        )
        assert_same(got, pipeline.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cid, 5, mode))


def test_reconstruct_two_stages_match_pipeline_reference(gen):
    """Rebuilding two stages, last to first, with the op gives the vectorised reference's
    result (the same call chain as python_ref.pipeline.reconstruct uses per stage)."""
    full1, x1, keep1, prune1, cid1 = stage_inputs(gen, 2, 60, 13, n_kept=42, protected=1, clusters=4)
    full2, x2, keep2, prune2, cid2 = stage_inputs(gen, 2, 42, 13, n_kept=29, protected=1, clusters=3)
    got = torch.ops.lvtp.reconstruct_stage(full2, x2, keep2, prune2, cid2, 3, "residual")
    got = torch.ops.lvtp.reconstruct_stage(got, x1, keep1, prune1, cid1, 4, "residual")
    want = pipeline.reconstruct_stage(full2, x2, keep2, prune2, cid2, 3, "residual")
    want = pipeline.reconstruct_stage(want, x1, keep1, prune1, cid1, 4, "residual")
    assert_same(got, want)


# --------------------------------------------------------------------------- reconstruct_stage, "nearest"
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "b,n,c,n_kept,protected",
    [
        (1, 2, 3, 1, 0),  # one kept token, one pruned
        (2, 50, 33, 36, 1),
        (2, 197, 37, 139, 1),
        (1, 577, 65, 404, 0),
    ],
)
def test_reconstruct_nearest(gen, dtype, b, n, c, n_kept, protected):
    args = stage_inputs(gen, b, n, c, n_kept, protected, clusters=6, dtype=dtype)
    got = _check_reconstruct(*args, 6, "nearest")
    full, x_stage, keep_idx, prune_idx, cid = args
    # kept rows are full's, unchanged; the pruned rows do differ from "frozen"
    assert torch.equal(got.gather(1, keep_idx[..., None].expand(-1, -1, c)), full)
    frozen = pipeline.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cid, 6, "frozen")
    assert not torch.equal(got, frozen)


def test_reconstruct_nearest_small_tiles(gen, monkeypatch):
    """GPU-sized tiles (many programs, tiles mixing kept and pruned launch rows, partial
    channel blocks) give the same result as the interpreter's large ones."""
    from lvtp_kernels.ops import tokens_triton as gs

    monkeypatch.setattr(gs, "_tiles", lambda rows, c: (4, 8))
    args = stage_inputs(gen, 2, 50, 19, n_kept=35, protected=1, clusters=4, dtype=torch.bfloat16)
    _check_reconstruct(*args, 4, "nearest")


def test_reconstruct_nearest_picks_nearest_non_protected(gen):
    """Hand-made: pruned tokens equal (up to scale) to a kept token take its residual;
    a protected kept token is never a source, even when it is the most similar."""
    c = 5
    x_stage = torch.tensor([[[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0], [0, 0, 1.0, 0, 0],
                             [2.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0], [0, 0.5, 0, 0, 0]]])
    keep_idx = torch.tensor([[0, 1, 2]])
    prune_idx = torch.tensor([[3, 4, 5]])
    cid = torch.tensor([[-1, 0, 1, 0, 1, 0]], dtype=torch.int32)
    full = torch.arange(3 * c, dtype=torch.float32).reshape(1, 3, c) + 10.0
    got = _check_reconstruct(full, x_stage, keep_idx, prune_idx, cid, 2, "nearest")
    res = full[0] - x_stage[0, :3]
    # token 3 is parallel to protected token 0: the best non-protected one is a tie
    # (cosine 0 with tokens 1 and 2), which goes to the earlier position, token 1
    assert torch.equal(got[0, 3], x_stage[0, 3] + res[1])
    assert torch.equal(got[0, 4], x_stage[0, 4] + res[2])
    assert torch.equal(got[0, 5], x_stage[0, 5] + res[1])


def test_reconstruct_nearest_all_kept_protected(gen):
    """Every kept token protected: every similarity is -inf and argmax takes position 0,
    in the reference and here."""
    args = stage_inputs(gen, 2, 40, 9, n_kept=3, protected=3, clusters=4)
    _check_reconstruct(*args, 4, "nearest")


def test_reconstruct_nearest_ties_and_edge_cases(gen):
    """Duplicate kept features (exact ties go to the earlier keep_idx position), a zero
    row, nothing pruned, and K = 0 (raises, as the reference does)."""
    full, x_stage, keep_idx, prune_idx, cid = stage_inputs(gen, 2, 30, 7, n_kept=20, protected=1, clusters=3)
    x_stage[:, keep_idx[0, 5]] = x_stage[:, keep_idx[0, 9]]  # same features at two kept positions (image 0)
    x_stage[:, prune_idx[0, 0]] = x_stage[:, keep_idx[0, 9]]
    x_stage[:, prune_idx[0, 1]] = 0.0  # zero norm: similarity 0 with everything
    want_j = pipeline.nearest_keys(x_stage, keep_idx, prune_idx, cid)
    assert want_j[0, 0].item() == min(5, 9)
    _check_reconstruct(full, x_stage, keep_idx, prune_idx, cid, 3, "nearest")
    # everything kept
    _check_reconstruct(*stage_inputs(gen, 2, 12, 5, n_kept=12, protected=1, clusters=2), 2, "nearest")
    # nothing kept
    xs = rand(gen, 2, 13, 9)
    with pytest.raises(Exception):
        pipeline.reconstruct_stage(xs[:, :0], xs, torch.zeros(2, 0, dtype=torch.int64), torch.arange(13).repeat(2, 1),
                                   torch.zeros(2, 13, dtype=torch.int32), 3, "nearest")
    with pytest.raises((ValueError, RuntimeError)):
        torch.ops.lvtp.reconstruct_stage(xs[:, :0], xs, torch.zeros(2, 0, dtype=torch.int64),
                                         torch.arange(13).repeat(2, 1), torch.zeros(2, 13, dtype=torch.int32), 3,
                                         "nearest")


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("idx_dtype", (torch.int32, torch.int64))
def test_reconstruct_nearest_non_contiguous(gen, dtype, idx_dtype):
    full, x_stage, keep_idx, prune_idx, cid = stage_inputs(
        gen, 2, 75, 17, n_kept=52, protected=1, clusters=5, dtype=dtype
    )
    keep_s = torch.zeros(2, 2 * 52, dtype=idx_dtype)[:, ::2]
    keep_s.copy_(keep_idx)
    prune_s = prune_idx.to(idx_dtype).t().contiguous().t()
    cid_s = cid.to(torch.int64).t().contiguous().t()
    assert not (keep_s.is_contiguous() or prune_s.is_contiguous() or cid_s.is_contiguous())
    got = torch.ops.lvtp.reconstruct_stage(strided(full), strided(x_stage), keep_s, prune_s, cid_s, 5, "nearest")
    assert_same(got, pipeline.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cid, 5, "nearest"))


@pytest.mark.parametrize(
    "dtype,xs_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16), (torch.float16, torch.bfloat16)]
)
def test_reconstruct_nearest_mixed_dtypes(gen, dtype, xs_dtype):
    args = stage_inputs(gen, 2, 64, 21, n_kept=45, protected=1, clusters=6, dtype=dtype, xs_dtype=xs_dtype)
    _check_reconstruct(*args, 6, "nearest")


def test_reconstruct_nearest_rounds_like_pytorch(gen):
    """fp16/bf16: the reference rounds full[j] - x_stage[kid_j] to the dtype, then the sum
    again; a single rounding of the exact fp32 value would differ on some elements. Checks
    that the inputs do reach such elements (so the bit-exact comparison is meaningful)."""
    for dtype in (torch.float16, torch.bfloat16):
        full, x_stage, keep_idx, prune_idx, cid = stage_inputs(gen, 2, 197, 37, 139, 1, 6, dtype=dtype)
        want = pipeline.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cid, 6, "nearest")
        c = full.shape[-1]
        j = pipeline.nearest_keys(x_stage, keep_idx, prune_idx, cid)[..., None].expand(-1, -1, c)
        xk = torch.gather(x_stage, 1, keep_idx[..., None].expand(-1, -1, c)).float()
        once = (torch.gather(x_stage, 1, prune_idx[..., None].expand(-1, -1, c)).float()
                + torch.gather(full.float(), 1, j) - torch.gather(xk, 1, j)).to(dtype)
        assert not torch.equal(once, want.gather(1, prune_idx[..., None].expand(-1, -1, c)))
        got = torch.ops.lvtp.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cid, 6, "nearest")
        assert_same(got, want)


def test_reconstruct_nearest_two_stages_match_pipeline_reference(gen):
    _full1, x1, keep1, prune1, cid1 = stage_inputs(gen, 2, 60, 13, n_kept=42, protected=1, clusters=4)
    full2, x2, keep2, prune2, cid2 = stage_inputs(gen, 2, 42, 13, n_kept=29, protected=1, clusters=3)
    got = torch.ops.lvtp.reconstruct_stage(full2, x2, keep2, prune2, cid2, 3, "nearest")
    got = torch.ops.lvtp.reconstruct_stage(got, x1, keep1, prune1, cid1, 4, "nearest")
    want = pipeline.reconstruct_stage(full2, x2, keep2, prune2, cid2, 3, "nearest")
    want = pipeline.reconstruct_stage(want, x1, keep1, prune1, cid1, 4, "nearest")
    assert_same(got, want)


def test_compiles_for_hopper():
    """The kernels compile for sm_90 (offline: Triton's own ptxas, no GPU needed)."""
    pytest.importorskip("triton.backends.nvidia")
    compile_for_hopper(
        """
        from lvtp_kernels.ops import tokens_triton as G


        i32 = lambda *names: {n: "i32" for n in names}
        comp(G._gather_kernel, dict(x_ptr="*bf16", idx_ptr="*i32", out_ptr="*bf16", **i32("K", "C", "sx_b", "sx_n",
             "sx_c", "si_b", "si_k")), dict(BLOCK_R=8, BLOCK_C=512))
        comp(G._invert_index_kernel, dict(idx_ptr="*i64", inv_ptr="*i32", **i32("K", "N", "si_b", "si_k")),
             dict(BLOCK=1024))
        comp(G._scatter_kernel, dict(full_ptr="*fp16", x_ptr="*fp16", inv_ptr="*i32", out_ptr="*fp16", **i32("N", "C",
             "sf_b", "sf_n", "sf_c", "sx_b", "sx_k", "sx_c")), dict(BLOCK_R=8, BLOCK_C=512))
        comp(G._scatter_rows_kernel, dict(src_ptr="*fp32", idx_ptr="*i64", out_ptr="*fp32", **i32("K", "N", "C",
             "ss_b", "ss_k", "ss_c", "si_b", "si_k")), dict(BLOCK_R=8, BLOCK_C=512))
        comp(G._slot_partition_kernel, dict(keep_ptr="*i64", cid_ptr="*i32", order_ptr="*i32", count_ptr="*i32",
             **i32("K", "clusters", "sk_b", "sk_k", "sc_b", "sc_n")), dict(SPAD=16, BLOCK=1024, K_LOOP=-1, S_LOOP=-1))
        for dt, fd, acc in (("bf16", tl.bfloat16, tl.float32), ("fp64", tl.float64, tl.float64)):
            m = "*fp64" if dt == "fp64" else "*fp32"
            comp(G._reconstruct_kept_kernel, dict(full_ptr="*" + dt, xs_ptr="*" + dt, keep_ptr="*i64", order_ptr="*i32",
                 count_ptr="*i32", out_ptr="*" + dt, mean_ptr=m, **i32("K", "N", "C", "clusters", "sf_b", "sf_k",
                 "sf_c", "sx_b", "sx_n", "sx_c", "sk_b", "sk_k")), dict(FDTYPE=fd, ACC=acc, UNROLL=8, BLOCK_C=256))
            comp(G._reconstruct_pruned_kernel, dict(xs_ptr="*fp32", prune_ptr="*i64", cid_ptr="*i32", mean_ptr=m,
                 out_ptr="*" + dt, **i32("NP", "N", "C", "clusters", "sx_b", "sx_n", "sx_c", "sp_b", "sp_k", "sc_b",
                 "sc_n")), dict(FDTYPE=fd, ACC=acc, RESIDUAL=True, BLOCK_R=8, BLOCK_C=512))
            comp(G._reconstruct_nearest_kernel, dict(full_ptr="*" + dt, xs_ptr="*fp32", keep_ptr="*i32",
                 prune_ptr="*i64", near_ptr="*i64", out_ptr="*" + dt, **i32("K", "NP", "N", "C", "sf_b", "sf_k",
                 "sf_c", "sx_b", "sx_n", "sx_c", "sk_b", "sk_k", "sp_b", "sp_k", "sj_b", "sj_k")),
                 dict(FDTYPE=fd, ACC=acc, BLOCK_R=4, BLOCK_C=512))
        comp(G._reconstruct_nearest_kernel, dict(full_ptr="*fp16", xs_ptr="*bf16", keep_ptr="*i64",
             prune_ptr="*i32", near_ptr="*i64", out_ptr="*fp16", **i32("K", "NP", "N", "C", "sf_b", "sf_k",
             "sf_c", "sx_b", "sx_n", "sx_c", "sk_b", "sk_k", "sp_b", "sp_k", "sj_b", "sj_k")),
             dict(FDTYPE=tl.float16, ACC=tl.float32, BLOCK_R=4, BLOCK_C=512))
        """
    )
