"""The fused CUDA kernel of the fast selection (csrc/select_fast_cuda.cu, one launch per call)
on the CPU under the simt emulator (tests/simt/): certified against float64 decision by
decision (tests/certify.py, from the kernel's own trace), close to the batched float32
reference, exact in structure, bitwise deterministic whatever order a block's threads run in
and under batch permutation, the same with the sort keys in shared or in global memory, on
every token dtype and stride, and refusing what it cannot take with an error code.
What it cannot show: speed (benchmarks/bench_select.py on a GPU)."""

from __future__ import annotations

import ctypes
import platform
import shutil

import pytest
import torch

from python_ref import rules
from python_ref.fast import select_fast

from certify import certify, jaccard
from test_cuda_simt import GUARD, INVALID_VALUE, SCHEDULES, Guarded, _check, _ptr, lib  # noqa: F401 (fixture)
from test_op_select_fast import _inputs as _select_inputs

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64" or platform.system() != "Linux" or shutil.which("g++") is None,
    reason="the simt emulator needs Linux x86-64 and g++",
)

I64, F64 = ctypes.c_int64, ctypes.c_double
KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
ALLOC = {"ranked": 0, "proportional": 1}


def run_fast(lib, tokens, ent, edge, keep_ratio, p, alpha, mode, clusters, iters, allocation, trace=True,
             expect_rc=0):
    """The kernel on host memory: (keep_idx, prune_idx, cluster_id) and the trace list of
    python_ref.fast.FastTrace's fields (u, init_idx, centroids, assign, split, rep)."""
    B, N, C = tokens.shape
    Q = ent.shape[2]
    n = N - p
    k = min(clusters, n)
    K = rules.budget(N, p, keep_ratio)
    storage = tokens
    if tokens.dtype in (torch.float16, torch.bfloat16):
        storage = tokens.view(torch.int16)  # the kernel reads the raw 16-bit patterns
    # the tokens in place: any strides; guards around the underlying storage
    base = torch.full((storage.untyped_storage().nbytes() // storage.element_size() + 2 * GUARD,), 0,
                      dtype=storage.dtype)
    flat = base[GUARD:GUARD + storage.untyped_storage().nbytes() // storage.element_size()]
    flat.copy_(storage.as_strided(flat.shape, (1,), 0))
    view = base.as_strided(storage.shape, storage.stride(), GUARD + storage.storage_offset())
    eg = Guarded(ent.shape, torch.float32, float("nan"), ent.float())
    dg = None if edge is None else Guarded(edge.shape, torch.float32, float("nan"), edge.float())
    ki = Guarded((B, p + K), torch.int64, -7)
    pi = Guarded((B, n - K), torch.int64, -7)
    ci = Guarded((B, N), torch.int32, -7)
    tr = [Guarded((B, n), torch.float32, float("nan")), Guarded((B, k), torch.int64, -7),
          Guarded((B, iters + 1, k, C), torch.float32, float("nan")), Guarded((B, iters + 1, n), torch.int64, -7),
          Guarded((B, k), torch.int64, -7), Guarded((B, k), torch.int64, -7)]
    tp = [_ptr(g.t) if trace else None for g in tr]
    rc = lib.simt_select_fast(
        KIND[tokens.dtype], _ptr(view), I64(view.stride(0)), I64(view.stride(1)), I64(view.stride(2)), _ptr(eg.t),
        _ptr(None if dg is None else dg.t), I64(B), I64(N), I64(C), I64(Q), I64(p), I64(K), I64(k), I64(iters),
        F64(alpha), int(mode == "low"), ALLOC[allocation], *tp, _ptr(ki.t), _ptr(pi.t), _ptr(ci.t))
    if expect_rc:
        assert rc == expect_rc, rc
        return None
    _check(lib, rc)
    assert (base[:GUARD] == 0).all() and (base[-GUARD:] == 0).all()
    for g in [ki, pi, ci] + (tr if trace else []):
        assert g.guards_intact(), "the kernel wrote outside an output"
    out = (ki.t, pi.t, ci.t)
    return (out, [g.t for g in tr]) if trace else (out, None)


def _inputs(b, n, c, seed, dtype=torch.float32, ties=None, q=4):
    """test_op_select_fast's inputs; q != 4 orders (the Q limit's case) from the same generator."""
    if q == 4:
        return _select_inputs(b, n, c, seed, dtype, ties)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=g).to(dtype), torch.rand(b, n, q, generator=g), torch.rand(b, n, generator=g)


CASES = [
    pytest.param(n, p, b, alloc, id=f"N{n}-P{p}-B{b}-{alloc}")
    for n in (1, 2, 50, 197, 577) for p in (0, 1) if p < n for b in (1, 3) for alloc in ("ranked", "proportional")
    if not (n == 577 and b == 3)
]


@pytest.mark.parametrize("n,p,b,alloc", CASES)
def test_fused_kernel_is_certified_against_exact(lib, n, p, b, alloc):
    c = 48
    tokens, ent, edge = _inputs(b, n, c, seed=n * 5 + p + b)
    for keep_ratio, mode, clusters, iters in [(0.3, "high", 8, 3), (0.7, "low", 3, 1)]:
        args = (tokens, ent, edge, keep_ratio, p, 0.3, mode, clusters, iters, alloc)
        out, tr = run_fast(lib, *args)
        certify(*args, out, tr)
        ref = select_fast(*args)
        assert jaccard(out[0], ref[0]) >= 0.98


def test_fused_kernel_at_vit_b_width(lib):
    """One ViT-B-sized image (1025 x 768): 16-cluster register chunks, 2048-key sorts."""
    tokens, ent, edge = _inputs(1, 1025, 768, seed=11, dtype=torch.float16)
    args = (tokens, ent, edge, 0.45, 1, 0.3, "high", 8, 3, "proportional")
    out, tr = run_fast(lib, *args)
    certify(*args, out, tr)
    assert jaccard(out[0], select_fast(*args)[0]) >= 0.98


@pytest.mark.parametrize("clusters", [1, 17, 40])
def test_fused_kernel_cluster_counts_beyond_one_register_chunk(lib, clusters):
    tokens, ent, edge = _inputs(2, 97, 40, seed=clusters)
    args = (tokens, ent, edge, 0.5, 1, 0.5, "low", clusters, 2, "proportional")
    out, tr = run_fast(lib, *args)
    certify(*args, out, tr)


@pytest.mark.parametrize("ties", ["rows", "u"])
@pytest.mark.parametrize("alloc", ["ranked", "proportional"])
def test_fused_kernel_is_certified_at_exact_ties(lib, ties, alloc):
    tokens, ent, edge = _inputs(2, 50, 16, seed=3, ties=ties)
    args = (tokens, ent, edge, 0.5, 1, 0.5, "low", 4, 3, alloc)
    out, tr = run_fast(lib, *args)
    certify(*args, out, tr)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_fused_kernel_reads_every_token_dtype_in_place(lib, dtype):
    tokens, ent, edge = _inputs(2, 197, 64, seed=5, dtype=dtype)
    tokens[0, 3, :5] = torch.tensor([0.0, -0.0, 6e-8, -3e-5, 65504.0]).to(dtype)  # fp16 subnormals, extremes
    args = (tokens, ent, edge, 0.4, 1, 0.3, "high", 8, 3, "ranked")
    out, tr = run_fast(lib, *args)
    certify(*args, out, tr)
    # the kernel's first centroids are the normalised rows of the float32 values it loaded
    x = tokens[:, 1:].float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    init = x.gather(1, tr[1][..., None].expand(-1, -1, 64))
    torch.testing.assert_close(tr[2][:, 0], init, rtol=2e-6, atol=1e-7)


def test_fused_kernel_strided_tokens_equal_contiguous(lib):
    tokens, ent, edge = _inputs(2, 50, 32, seed=8)
    strided = tokens.transpose(1, 2).contiguous().transpose(1, 2)  # (B, N, C) with C-stride N
    wide = torch.randn(2, 50, 80)
    wide[..., 10:42] = tokens
    args = (ent, edge, 0.5, 1, 0.3, "high", 5, 3, "proportional")
    want = run_fast(lib, tokens, *args)
    for t in (strided, wide[..., 10:42]):
        got = run_fast(lib, t, *args)
        for a, b in zip(want[0] + tuple(want[1]), got[0] + tuple(got[1])):
            assert torch.equal(a, b)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_fused_kernel_is_bitwise_deterministic_for_any_thread_order(lib, schedule):
    tokens, ent, edge = _inputs(2, 197, 48, seed=4)
    args = (tokens, ent, edge, 0.4, 1, 0.3, "high", 8, 3, "proportional")
    lib.simt_set_schedule(0, 1)
    want = run_fast(lib, *args)
    lib.simt_set_schedule(*SCHEDULES[schedule])
    try:
        got = run_fast(lib, *args)
    finally:
        lib.simt_set_schedule(0, 1)
    for a, b in zip(want[0] + tuple(want[1]), got[0] + tuple(got[1])):
        assert torch.equal(a, b)


def test_fused_kernel_batch_permutation(lib):
    tokens, ent, edge = _inputs(4, 120, 32, seed=6)
    args = (0.4, 1, 0.3, "high", 6, 3, "ranked")
    perm = torch.tensor([2, 0, 3, 1])
    a, _ = run_fast(lib, tokens, ent, edge, *args, trace=False)
    b, _ = run_fast(lib, tokens[perm], ent[perm], edge[perm], *args, trace=False)
    for x, y in zip(a, b):
        assert torch.equal(x[perm], y)


def test_fused_kernel_sort_keys_in_global_memory_give_the_same_result(lib):
    """C = 1000, k = 8: 32 KB of centroids; an opt-in limit just above them leaves no room for
    the sort keys, which then live in global scratch."""
    tokens, ent, edge = _inputs(1, 300, 1000, seed=2)
    args = (tokens, ent, edge, 0.4, 1, 0.3, "high", 8, 2, "proportional")
    want = run_fast(lib, *args)
    lib.simt_set_smem_optin(8 * 1000 * 4 + 8 * 16 + 512)
    try:
        got = run_fast(lib, *args)
    finally:
        lib.simt_set_smem_optin(227 * 1024)
    for a, b in zip(want[0] + tuple(want[1]), got[0] + tuple(got[1])):
        assert torch.equal(a, b)


def test_fused_kernel_no_edge(lib):
    tokens, ent, _ = _inputs(2, 60, 24, seed=9)
    args = (tokens, ent, None, 0.5, 1, 0.3, "low", 4, 3, "ranked")
    out, tr = run_fast(lib, *args)
    certify(*args, out, tr)


def test_fused_kernel_refuses_what_it_cannot_take(lib):
    tokens, ent, edge = _inputs(1, 50, 16, seed=1)
    args = (0.5, 1, 0.3, "high", 4, 3, "ranked")
    run_fast(lib, tokens, ent, edge, *args, expect_rc=0)
    # Q beyond 64 orders
    t2, e2, d2 = _inputs(1, 50, 16, seed=1, q=65)
    run_fast(lib, t2, e2, d2, *args, expect_rc=INVALID_VALUE)
    # centroids beyond the shared-memory opt-in limit
    lib.simt_set_smem_optin(4 * 16 * 4)
    try:
        run_fast(lib, tokens, ent, edge, *args, expect_rc=INVALID_VALUE)
    finally:
        lib.simt_set_smem_optin(227 * 1024)
    # n beyond the 16-bit index field of the sort keys: refused before any memory is touched
    fits = lib.simt_select_fast_fits
    fits.restype = ctypes.c_bool
    assert fits(I64(65535), I64(64), I64(8), 227 * 1024)
    assert not fits(I64(65536), I64(64), I64(8), 227 * 1024)
    assert not fits(I64(100), I64(8000), I64(8), 227 * 1024)
    assert fits(I64(4096), I64(1024), I64(8), 227 * 1024)  # ViT-L/16 at 1024 x 1024
