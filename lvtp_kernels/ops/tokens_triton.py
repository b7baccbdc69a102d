"""Triton kernels of ``lvtp::gather_tokens``, ``lvtp::scatter_tokens`` and
``lvtp::reconstruct_stage`` (spec steps 5 and 7).

All three move whole token rows, so every kernel works on [rows, channels] tiles with
int64 offsets and any input strides, and writes a new contiguous output exactly once:

* ``gather_tokens``: ``out[b, k] = x[b, idx[b, k]]``, one pass.
* ``scatter_tokens``: a small kernel inverts ``idx`` (``inv[b, n] = k`` or -1), then one
  pass over the output reads each row from ``x`` or ``full``: no copy-then-overwrite.
* ``reconstruct_stage`` (``"residual"``): ``_slot_partition_kernel`` lists, per image
  and cluster slot, the slot's kept tokens in ``keep_idx`` order (a stable partition);
  ``_reconstruct_kept_kernel`` runs one program per (image, slot, channel block); it
  walks its slot's kept tokens, writes their rows to the output and sums
  ``full - x_stage`` over them *sequentially, in keep_idx order*, then stores the slot
  mean. The sums are therefore deterministic (no atomics) and bit-identical to the
  reference's ordered ``scatter_add_`` on CPU. ``_reconstruct_pruned_kernel`` then writes every pruned row once,
  ``x_stage + mean[slot]``. Protected tokens (cluster id -1) share the spare slot
  ``clusters``, exactly as the reference does. ``"frozen"`` skips the sums.
* ``reconstruct_stage`` (``"nearest"``): the nearest kept token of every pruned token is
  found with plain torch ops (:func:`nearest_keys`: normalise, batched matmul - cuBLAS on
  a GPU - mask the protected kept tokens, argmax), written as
  ``python_ref.pipeline.nearest_keys`` is, so the indices agree with the reference's; then
  ``_reconstruct_nearest_kernel`` writes every output row once: row r < K of the launch
  copies ``full[r]`` to ``keep_idx[r]``, row K + p writes pruned token ``prune_idx[p]`` as
  ``x_stage[prune_idx[p]] + (full[j] - x_stage[keep_idx[j]])`` with j its nearest key.

Casts follow PyTorch exactly: fp16/bf16 arithmetic is done in fp32 and rounded to the
storage dtype after each operation, as PyTorch's half kernels do; roundings to bf16 use
an explicit round-to-nearest-even on the bits (Triton's CPU interpreter truncates).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from ._common import loop_bound

__all__ = ["gather_tokens", "scatter_tokens", "reconstruct_stage", "nearest_keys", "reconstruct_nearest_fused"]

MODES = ("residual", "frozen", "nearest")

_TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


@triton.jit
def _round_to(x, DST: tl.constexpr):
    """``x.to(DST)`` with round-to-nearest-even, also for bf16 (bit-level rounding of the
    fp32 value; a fp64 ``x`` is first rounded to fp32)."""
    if DST == tl.bfloat16:
        u = x.to(tl.float32).to(tl.uint32, bitcast=True)
        u = u + (((u >> 16) & 1) + 0x7FFF)
        return (u >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DST)


def _tiles(rows: int, c: int):
    """(BLOCK_R, BLOCK_C) of a row-copy tile: 2K elements on a GPU, large when interpreting."""
    block_c = min(triton.next_power_of_2(max(c, 1)), _common.block_cap(512, 4096))
    block_r = max(1, min(_common.block_cap(2048, 1 << 16) // block_c, triton.next_power_of_2(max(rows, 1))))
    return block_r, block_c


def _grid(b: int, rows: int, c: int, block_r: int, block_c: int):
    return (b, triton.cdiv(rows, block_r), triton.cdiv(c, block_c))


@triton.jit
def _row_tile(R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's [BLOCK_R, BLOCK_C] tile of an (R, C) row launch (grid ``_grid``):
    image b, row and column indices, the row mask and the tile mask."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    rmask = rows < R
    return b, rows, cols, rmask, rmask[:, None] & (cols < C)[None, :]


# --------------------------------------------------------------------------- gather
@triton.jit
def _gather_kernel(
    x_ptr, idx_ptr, out_ptr, K, C,
    sx_b, sx_n, sx_c, si_b, si_k,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[b, r, :] = x[b, idx[b, r], :] for a [BLOCK_R, BLOCK_C] tile; out contiguous."""
    b, rows, cols, rmask, mask = _row_tile(K, C, BLOCK_R, BLOCK_C)
    src = tl.load(idx_ptr + b * si_b + rows.to(tl.int64) * si_k, mask=rmask, other=0).to(tl.int64)
    v = tl.load(x_ptr + b * sx_b + src[:, None] * sx_n + cols[None, :] * sx_c, mask=mask)
    dst = (b * K + rows.to(tl.int64))[:, None] * C + cols[None, :]
    tl.store(out_ptr + dst, v, mask=mask)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), idx (B, K) int32/int64 -> (B, K, C) contiguous, out[b, k] = x[b, idx[b, k]].

    Indices are range-checked by the op registry. Exact for every dtype (a copy).
    """
    b, _, c = x.shape
    k = idx.shape[1]
    out = torch.empty((b, k, c), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_r, block_c = _tiles(k, c)
    _gather_kernel[_grid(b, k, c, block_r, block_c)](
        x, idx, out, k, c, x.stride(0), x.stride(1), x.stride(2), idx.stride(0), idx.stride(1),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
    )
    return out


# --------------------------------------------------------------------------- scatter
@triton.jit
def _invert_index_kernel(idx_ptr, inv_ptr, K, N, si_b, si_k, BLOCK: tl.constexpr):
    """inv[b, idx[b, k]] = k (inv (B, N) int32, pre-filled with -1; indices are unique)."""
    b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = k < K
    pos = tl.load(idx_ptr + b * si_b + k.to(tl.int64) * si_k, mask=m, other=0).to(tl.int64)
    tl.store(inv_ptr + b * N + pos, k, mask=m)


@triton.jit
def _scatter_kernel(
    full_ptr, x_ptr, inv_ptr, out_ptr, N, C,
    sf_b, sf_n, sf_c, sx_b, sx_k, sx_c,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[b, n] = x[b, inv[b, n]] if inv[b, n] >= 0 else full[b, n]; each row read once."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    rmask = rows < N
    cmask = (cols < C)[None, :]
    rows64 = rows.to(tl.int64)
    src = tl.load(inv_ptr + b * N + rows64, mask=rmask, other=-1).to(tl.int64)
    from_x = (src >= 0)[:, None]
    mask = rmask[:, None] & cmask
    vx = tl.load(x_ptr + b * sx_b + src[:, None] * sx_k + cols[None, :] * sx_c, mask=mask & from_x)
    vf = tl.load(full_ptr + b * sf_b + rows64[:, None] * sf_n + cols[None, :] * sf_c, mask=mask & (~from_x))
    dst = out_ptr + (b * N + rows64)[:, None] * C + cols[None, :]
    tl.store(dst, vx, mask=mask & from_x)
    tl.store(dst, vf, mask=mask & (~from_x))


def scatter_tokens(full: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Out-of-place scatter: a new contiguous copy of full (B, N, C) with
    out[b, idx[b, k]] = x[b, k]. Indices are range- and duplicate-checked by the op
    registry. Exact for every dtype (a copy)."""
    b, n, c = full.shape
    k = idx.shape[1]
    out = torch.empty((b, n, c), dtype=full.dtype, device=full.device)
    if out.numel() == 0:
        return out
    inv = torch.full((b, n), -1, dtype=torch.int32, device=full.device)
    if k > 0:
        block = min(triton.next_power_of_2(k), _common.block_cap(1024, 1 << 16))
        _invert_index_kernel[(b, triton.cdiv(k, block))](
            idx, inv, k, n, idx.stride(0), idx.stride(1), BLOCK=block, num_warps=4
        )
    block_r, block_c = _tiles(n, c)
    _scatter_kernel[_grid(b, n, c, block_r, block_c)](
        full, x, inv, out, n, c,
        full.stride(0), full.stride(1), full.stride(2), x.stride(0), x.stride(1), x.stride(2),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
    )
    return out


# --------------------------------------------------------------------------- reconstruct_stage
@triton.jit
def _slot_partition_kernel(
    keep_ptr, cid_ptr, order_ptr, count_ptr,
    K, clusters, sk_b, sk_k, sc_b, sc_n,
    SPAD: tl.constexpr, BLOCK: tl.constexpr, K_LOOP: tl.constexpr, S_LOOP: tl.constexpr,
):
    """Program b: a stable partition of the kept tokens by slot (cluster id, or
    ``clusters`` for -1): order[b, s, :count[b, s]] lists, ascending, the k whose token
    keep_idx[b, k] is in slot s."""
    b = tl.program_id(0).to(tl.int64)
    slots = clusters + 1
    sidx = tl.arange(0, SPAD)
    counts = tl.zeros([SPAD], dtype=tl.int32)
    for k0 in range(0, K if K_LOOP < 0 else K_LOOP, BLOCK):
        kk = k0 + tl.arange(0, BLOCK)
        m = kk < K
        kid = tl.load(keep_ptr + b * sk_b + kk.to(tl.int64) * sk_k, mask=m, other=0).to(tl.int64)
        cid = tl.load(cid_ptr + b * sc_b + kid * sc_n, mask=m, other=0)
        slot = tl.where(m, tl.where(cid >= 0, cid, clusters), -1)
        for s in range(0, slots if S_LOOP < 0 else S_LOOP):
            ms = slot == s
            rank = tl.cumsum(ms.to(tl.int32), axis=0) - 1
            base = tl.sum(tl.where(sidx == s, counts, 0), axis=0)
            tl.store(order_ptr + (b * slots + s) * K + base + rank, kk, mask=ms)
            counts += tl.where(sidx == s, tl.sum(ms.to(tl.int32), axis=0), 0)
    tl.store(count_ptr + b * slots + sidx, counts, mask=sidx < slots)


@triton.jit
def _reconstruct_kept_kernel(
    full_ptr, xs_ptr, keep_ptr, order_ptr, count_ptr, out_ptr, mean_ptr,
    K, N, C, clusters,
    sf_b, sf_k, sf_c, sx_b, sx_n, sx_c, sk_b, sk_k,
    FDTYPE: tl.constexpr, ACC: tl.constexpr, UNROLL: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Program (b, slot s, channel block): for the kept tokens k of slot s, in keep_idx
    order, out[b, keep_idx[b, k]] = full[b, k] and sum += full[b, k] - x_stage[b, keep_idx[b, k]];
    then mean[b, s] = sum / max(count, 1).

    The slot's rows are visited in order, UNROLL per iteration (their loads are
    independent, so they are in flight together); each row's delta is added to the
    running sum before the next row's, so the result equals the reference's ordered
    scatter_add_ and does not depend on the block sizes."""
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    slots = clusters + 1
    cols = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    cmask = cols < C
    n_s = tl.load(count_ptr + b * slots + s)
    order = order_ptr + (b * slots + s) * K
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    i0 = n_s * 0
    while i0 < n_s:  # a data-dependent trip count
        for r in tl.static_range(UNROLL):
            live = i0 + r < n_s
            k = tl.load(order + i0 + r, mask=live, other=0).to(tl.int64)
            kid = tl.load(keep_ptr + b * sk_b + k * sk_k, mask=live, other=0).to(tl.int64)
            m = cmask & live
            f = tl.load(full_ptr + b * sf_b + k * sf_k + cols * sf_c, mask=m, other=0.0)
            xk = tl.load(xs_ptr + b * sx_b + kid * sx_n + cols * sx_c, mask=m, other=0.0)
            tl.store(out_ptr + (b * N + kid) * C + cols, f, mask=m)
            # delta in the storage dtype, as (full - x_stage.to(full.dtype)) is in PyTorch;
            # a row past the end gives 0, and acc + 0 == acc (acc is never -0.0)
            d = _round_to(f.to(ACC) - _round_to(xk, FDTYPE).to(ACC), FDTYPE).to(ACC)
            acc += d
        i0 += UNROLL
    denom = tl.maximum(n_s.to(ACC), 1.0)
    if ACC == tl.float64:
        mean = acc / denom  # IEEE in fp64
    else:
        mean = tl.div_rn(acc, denom)
    tl.store(mean_ptr + (b * slots + s) * C + cols, mean, mask=cmask)


@triton.jit
def _reconstruct_pruned_kernel(
    xs_ptr, prune_ptr, cid_ptr, mean_ptr, out_ptr,
    NP, N, C, clusters,
    sx_b, sx_n, sx_c, sp_b, sp_k, sc_b, sc_n,
    FDTYPE: tl.constexpr, ACC: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[b, prune_idx[b, j]] = x_stage[b, prune_idx[b, j]] (+ mean[b, slot] when RESIDUAL)."""
    b, rows, cols, rmask, mask = _row_tile(NP, C, BLOCK_R, BLOCK_C)
    pos = tl.load(prune_ptr + b * sp_b + rows.to(tl.int64) * sp_k, mask=rmask, other=0).to(tl.int64)
    xv = tl.load(xs_ptr + b * sx_b + pos[:, None] * sx_n + cols[None, :] * sx_c, mask=mask, other=0.0)
    v = _round_to(xv, FDTYPE)
    if RESIDUAL:
        cid = tl.load(cid_ptr + b * sc_b + pos * sc_n, mask=rmask, other=0)
        slot = tl.where(cid >= 0, cid, clusters).to(tl.int64)
        mean = tl.load(mean_ptr + (b * (clusters + 1) + slot)[:, None] * C + cols[None, :], mask=mask, other=0.0)
        v = _round_to(v.to(ACC) + mean, FDTYPE)
    tl.store(out_ptr + (b * N + pos)[:, None] * C + cols[None, :], v, mask=mask)


@triton.jit
def _scatter_rows_kernel(
    src_ptr, idx_ptr, out_ptr, K, N, C,
    ss_b, ss_k, ss_c, si_b, si_k,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[b, idx[b, r], :] = src[b, r, :] (out contiguous (B, N, C); indices unique)."""
    b, rows, cols, rmask, mask = _row_tile(K, C, BLOCK_R, BLOCK_C)
    rows64 = rows.to(tl.int64)
    pos = tl.load(idx_ptr + b * si_b + rows64 * si_k, mask=rmask, other=0).to(tl.int64)
    v = tl.load(src_ptr + b * ss_b + rows64[:, None] * ss_k + cols[None, :] * ss_c, mask=mask)
    tl.store(out_ptr + (b * N + pos)[:, None] * C + cols[None, :], v, mask=mask)


@triton.jit
def _reconstruct_nearest_kernel(
    full_ptr, xs_ptr, keep_ptr, prune_ptr, near_ptr, out_ptr,
    K, NP, N, C,
    sf_b, sf_k, sf_c, sx_b, sx_n, sx_c, sk_b, sk_k, sp_b, sp_k, sj_b, sj_k,
    FDTYPE: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Launch rows r in [0, K + NP), each written once to the output:
    r < K:       out[b, keep_idx[b, r]] = full[b, r]
    r = K + p:   out[b, prune_idx[b, p]] = x_stage[b, prune_idx[b, p]] + (full[b, j] - x_stage[b, keep_idx[b, j]])
                 with j = near[b, p], each operation rounded to full's dtype as PyTorch does."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    rows64 = rows.to(tl.int64)
    kept = rows < K
    pr = (rows >= K) & (rows < K + NP)
    p = tl.where(pr, rows64 - K, 0)
    cmask = (cols < C)[None, :]
    # kept launch rows: their own token; pruned ones: the token and its nearest key
    kid = tl.load(keep_ptr + b * sk_b + rows64 * sk_k, mask=kept, other=0).to(tl.int64)
    pos = tl.load(prune_ptr + b * sp_b + p * sp_k, mask=pr, other=0).to(tl.int64)
    j = tl.load(near_ptr + b * sj_b + p * sj_k, mask=pr, other=0).to(tl.int64)
    jid = tl.load(keep_ptr + b * sk_b + j * sk_k, mask=pr, other=0).to(tl.int64)
    # full row r (kept) or j (pruned): one load for both kinds of rows
    frow = tl.where(kept, rows64, j)
    live = (kept | pr)[:, None] & cmask
    f = tl.load(full_ptr + b * sf_b + frow[:, None] * sf_k + cols[None, :] * sf_c, mask=live, other=0.0)
    pm = pr[:, None] & cmask
    xp = tl.load(xs_ptr + b * sx_b + pos[:, None] * sx_n + cols[None, :] * sx_c, mask=pm, other=0.0)
    xj = tl.load(xs_ptr + b * sx_b + jid[:, None] * sx_n + cols[None, :] * sx_c, mask=pm, other=0.0)
    # PyTorch: xs = x_stage.to(full.dtype); residual = full[j] - xs[kid_j] (rounded to the
    # dtype); out = xs[pos] + residual (rounded again). fp16/bf16 are computed in fp32.
    d = _round_to(f.to(ACC) - _round_to(xj, FDTYPE).to(ACC), FDTYPE).to(ACC)
    v = _round_to(_round_to(xp, FDTYPE).to(ACC) + d, FDTYPE)
    dst = tl.where(kept, kid, pos)
    dst_ptr = out_ptr + (b * N + dst)[:, None] * C + cols[None, :]
    tl.store(dst_ptr, f, mask=kept[:, None] & cmask)
    tl.store(dst_ptr, v, mask=pm)


def nearest_keys(full_dtype: torch.dtype, x_stage: torch.Tensor, keep_idx: torch.Tensor, prune_idx: torch.Tensor,
                 cluster_id: torch.Tensor) -> torch.Tensor:
    """(B, N-K) int64: for each pruned token, the position in keep_idx of the most similar
    kept non-protected token (cosine similarity of the stage features cast to
    ``full_dtype``, in float32 or wider; ties to the earlier position, argmax's rule; if
    every kept token is protected, position 0). The same torch ops, in the same order, as
    ``python_ref.pipeline.nearest_keys`` on ``x_stage.to(full_dtype)``, so the indices are
    the reference's (on a GPU the matmul is cuBLAS, under PyTorch's matmul precision
    setting, as the reference's is). The features are made contiguous first, so the norms
    do not depend on the input layout."""
    acc = torch.promote_types(full_dtype, torch.float32)
    c = x_stage.shape[-1]
    xs = x_stage.to(full_dtype).to(acc).contiguous()
    xs = xs / xs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kept = torch.gather(xs, 1, keep_idx.long()[..., None].expand(-1, -1, c))
    pruned = torch.gather(xs, 1, prune_idx.long()[..., None].expand(-1, -1, c))
    sim = pruned @ kept.transpose(1, 2)  # (B, N-K, K)
    protected = cluster_id.gather(1, keep_idx.long()) < 0  # never a source
    sim.masked_fill_(protected[:, None, :], float("-inf"))  # in place: the same values, one buffer less
    return sim.argmax(dim=-1)


def reconstruct_stage(
    full: torch.Tensor,
    x_stage: torch.Tensor,
    keep_idx: torch.Tensor,
    prune_idx: torch.Tensor,
    cluster_id: torch.Tensor,
    clusters: int,
    mode: str,
) -> torch.Tensor:
    """Step 7 for one stage, matching ``python_ref.pipeline.reconstruct_stage`` bit for bit
    on CPU (the cluster sums run in keep_idx order, like the reference's scatter_add_).

    full (B, K, C): final features of the kept tokens (keep_idx order); x_stage (B, N, C)
    at the stage; keep_idx/prune_idx partition 0..N-1; cluster_id (B, N) in [-1, clusters).
    Returns a new contiguous (B, N, C) tensor of full's dtype. Deterministic: no atomics.
    A bf16 ``full`` with a fp64 ``x_stage`` rounds x_stage through fp32 (double rounding,
    at most 1 ulp apart from PyTorch's direct fp64 -> bf16 cast); every other pairing is
    exact.

    ``"nearest"``: pruned token i gets ``x_stage[i] + (full[j] - x_stage[keep_idx[j]])``
    with j from :func:`nearest_keys` (torch ops, the reference's arithmetic). As in the
    reference, x_stage is first cast to full's dtype and the subtraction and the addition
    are each rounded to full's dtype (fp16/bf16 computed in fp32, like PyTorch's half
    kernels): bit-identical to the reference, fp16/bf16 included. With no kept token
    (K = 0) and pruned tokens it raises, as the reference's argmax does.
    """
    if mode not in MODES:
        raise ValueError(f"reconstruct_stage: mode must be one of {MODES}, got {mode!r}")
    b, k, c = full.shape
    n = x_stage.shape[1]
    n_pruned = prune_idx.shape[1]
    if mode == "nearest" and k == 0 and n_pruned > 0:
        # the reference's argmax over zero kept tokens fails too
        raise ValueError("reconstruct_stage: mode 'nearest' needs at least one kept token when tokens are pruned")
    out = torch.empty((b, n, c), dtype=full.dtype, device=full.device)
    if out.numel() == 0:
        return out
    fdtype = _TL_DTYPES[full.dtype]
    f64 = full.dtype == torch.float64
    acc = tl.float64 if f64 else tl.float32
    if mode == "nearest":
        near = nearest_keys(full.dtype, x_stage, keep_idx, prune_idx, cluster_id) if n_pruned > 0 else \
            torch.zeros((b, 0), dtype=torch.int64, device=full.device)
        block_r, block_c = _tiles(n, c)
        _reconstruct_nearest_kernel[_grid(b, n, c, block_r, block_c)](
            full, x_stage, keep_idx, prune_idx, near, out,
            k, n_pruned, n, c,
            full.stride(0), full.stride(1), full.stride(2),
            x_stage.stride(0), x_stage.stride(1), x_stage.stride(2),
            keep_idx.stride(0), keep_idx.stride(1), prune_idx.stride(0), prune_idx.stride(1),
            near.stride(0), near.stride(1),
            FDTYPE=fdtype, ACC=acc, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
        )
        return out
    residual = mode == "residual"
    slots = clusters + 1
    # per-(image, slot) means of full - x_stage over the slot's kept tokens (residual mode)
    mean = torch.empty((b, slots, c) if residual else (0,), dtype=torch.float64 if f64 else torch.float32,
                       device=full.device)
    if residual:
        order = torch.empty((b, slots, k), dtype=torch.int32, device=full.device)
        counts = torch.empty((b, slots), dtype=torch.int32, device=full.device)
        block = min(triton.next_power_of_2(max(k, 1)), _common.block_cap(1024, 1 << 16))
        _slot_partition_kernel[(b,)](
            keep_idx, cluster_id, order, counts, k, clusters,
            keep_idx.stride(0), keep_idx.stride(1), cluster_id.stride(0), cluster_id.stride(1),
            SPAD=triton.next_power_of_2(slots), BLOCK=block, K_LOOP=loop_bound(k), S_LOOP=loop_bound(slots),
            num_warps=4,
        )
        block_c = min(triton.next_power_of_2(c), _common.block_cap(256, 4096))
        unroll = _common.block_cap(8, 4)
        _reconstruct_kept_kernel[(b, slots, triton.cdiv(c, block_c))](
            full, x_stage, keep_idx, order, counts, out, mean,
            k, n, c, clusters,
            full.stride(0), full.stride(1), full.stride(2),
            x_stage.stride(0), x_stage.stride(1), x_stage.stride(2),
            keep_idx.stride(0), keep_idx.stride(1),
            FDTYPE=fdtype, ACC=acc, UNROLL=unroll, BLOCK_C=block_c, num_warps=4,
        )
    elif k > 0:
        block_r, block_c = _tiles(k, c)
        _scatter_rows_kernel[_grid(b, k, c, block_r, block_c)](
            full, keep_idx, out, k, n, c,
            full.stride(0), full.stride(1), full.stride(2), keep_idx.stride(0), keep_idx.stride(1),
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
        )
    if n_pruned > 0:
        block_r, block_c = _tiles(n_pruned, c)
        _reconstruct_pruned_kernel[_grid(b, n_pruned, c, block_r, block_c)](
            x_stage, prune_idx, cluster_id, mean, out,
            n_pruned, n, c, clusters,
            x_stage.stride(0), x_stage.stride(1), x_stage.stride(2),
            prune_idx.stride(0), prune_idx.stride(1), cluster_id.stride(0), cluster_id.stride(1),
            FDTYPE=fdtype, ACC=acc, RESIDUAL=residual, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
        )
    return out


# --------------------------------------------------------------------------- nearest, fused ([H] item 4)
@triton.jit
def _reconstruct_nearest_fused_kernel(
    full_ptr, xs_ptr, keep_ptr, prune_ptr, cid_ptr, out_ptr, near_ptr,
    K, NP, N, C, n_pblocks,
    sf_b, sf_k, sf_c, sx_b, sx_n, sx_c, sk_b, sk_k, sp_b, sp_k, sc_b, sc_n,
    FDTYPE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    K_LOOP: tl.constexpr, C_LOOP: tl.constexpr, WRITE_NEAR: tl.constexpr,
):
    """One launch for a whole "nearest" reconstruction stage. Programs (b, blk):
    blk < n_pblocks: BLOCK_P pruned tokens. The cosine similarity to every kept token is
      dot(x_p, x_j) / (|x_p| |x_j|) (float32 dots of the features cast to full's dtype,
      tiles of [BLOCK_P, BLOCK_C] x [BLOCK_C, BLOCK_K]); protected kept tokens are -inf; a
      running maximum over the kept tiles in ascending order, strict, keeps the first
      maximum (ties to the earlier position, as argmax). Then the pruned rows are written:
      x_stage[p] + (full[j] - x_stage[keep_idx[j]]), rounded as PyTorch does.
    blk >= n_pblocks: BLOCK_P kept rows, out[keep_idx[r]] = full[r].
    The similarity's rounding differs from python_ref.pipeline.nearest_keys (normalise,
    then a matmul): the keys agree except where two kept tokens are within float32
    rounding of equally similar (tests/test_reconstruct_fused.py certifies each)."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    if blk < n_pblocks:
        rows = blk * BLOCK_P + tl.arange(0, BLOCK_P)
        pr = rows < NP
        pos = tl.load(prune_ptr + b * sp_b + rows.to(tl.int64) * sp_k, mask=pr, other=0).to(tl.int64)
        ss = tl.zeros([BLOCK_P], dtype=tl.float32)
        for c0 in range(0, C if C_LOOP < 0 else C_LOOP, BLOCK_C):
            cols = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            m = pr[:, None] & (cols < C)[None, :]
            x = tl.load(xs_ptr + b * sx_b + pos[:, None] * sx_n + cols[None, :] * sx_c, mask=m, other=0.0)
            x = _round_to(x, FDTYPE).to(tl.float32)
            ss += tl.sum(x * x, axis=1)
        pn = tl.maximum(tl.sqrt(ss), 1e-12)
        best = tl.full([BLOCK_P], float("-inf"), dtype=tl.float32)
        arg = tl.zeros([BLOCK_P], dtype=tl.int64)
        for k0 in range(0, K if K_LOOP < 0 else K_LOOP, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            km = ks < K
            kid = tl.load(keep_ptr + b * sk_b + ks.to(tl.int64) * sk_k, mask=km, other=0).to(tl.int64)
            source = km & (tl.load(cid_ptr + b * sc_b + kid * sc_n, mask=km, other=-1) >= 0)
            dot = tl.zeros([BLOCK_P, BLOCK_K], dtype=tl.float32)
            kss = tl.zeros([BLOCK_K], dtype=tl.float32)
            for c0 in range(0, C if C_LOOP < 0 else C_LOOP, BLOCK_C):
                cols = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                cm = (cols < C)[None, :]
                x = tl.load(xs_ptr + b * sx_b + pos[:, None] * sx_n + cols[None, :] * sx_c, mask=pr[:, None] & cm,
                            other=0.0)
                y = tl.load(xs_ptr + b * sx_b + kid[:, None] * sx_n + cols[None, :] * sx_c, mask=km[:, None] & cm,
                            other=0.0)
                x = _round_to(x, FDTYPE).to(tl.float32)
                y = _round_to(y, FDTYPE).to(tl.float32)
                dot += tl.dot(x, tl.trans(y), input_precision="ieee")
                kss += tl.sum(y * y, axis=1)
            kn = tl.maximum(tl.sqrt(kss), 1e-12)
            sim = dot / pn[:, None] / kn[None, :]
            sim = tl.where(source[None, :], sim, float("-inf"))
            tmax = tl.max(sim, axis=1)
            targ = tl.argmax(sim, axis=1).to(tl.int64)
            upd = tmax > best
            best = tl.where(upd, tmax, best)
            arg = tl.where(upd, k0 + targ, arg)
        if WRITE_NEAR:
            tl.store(near_ptr + b * NP + rows.to(tl.int64), arg, mask=pr)
        jid = tl.load(keep_ptr + b * sk_b + arg * sk_k, mask=pr, other=0).to(tl.int64)
        for c0 in range(0, C if C_LOOP < 0 else C_LOOP, BLOCK_C):
            cols = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            m = pr[:, None] & (cols < C)[None, :]
            f = tl.load(full_ptr + b * sf_b + arg[:, None] * sf_k + cols[None, :] * sf_c, mask=m, other=0.0)
            xp = tl.load(xs_ptr + b * sx_b + pos[:, None] * sx_n + cols[None, :] * sx_c, mask=m, other=0.0)
            xj = tl.load(xs_ptr + b * sx_b + jid[:, None] * sx_n + cols[None, :] * sx_c, mask=m, other=0.0)
            d = _round_to(f.to(tl.float32) - _round_to(xj, FDTYPE).to(tl.float32), FDTYPE).to(tl.float32)
            v = _round_to(_round_to(xp, FDTYPE).to(tl.float32) + d, FDTYPE)
            tl.store(out_ptr + (b * N + pos)[:, None] * C + cols[None, :], v, mask=m)
    else:
        rows = (blk - n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)
        km = rows < K
        kid = tl.load(keep_ptr + b * sk_b + rows.to(tl.int64) * sk_k, mask=km, other=0).to(tl.int64)
        for c0 in range(0, C if C_LOOP < 0 else C_LOOP, BLOCK_C):
            cols = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            m = km[:, None] & (cols < C)[None, :]
            f = tl.load(full_ptr + b * sf_b + rows.to(tl.int64)[:, None] * sf_k + cols[None, :] * sf_c, mask=m)
            tl.store(out_ptr + (b * N + kid)[:, None] * C + cols[None, :], f, mask=m)


def reconstruct_nearest_fused(full: torch.Tensor, x_stage: torch.Tensor, keep_idx: torch.Tensor,
                              prune_idx: torch.Tensor, cluster_id: torch.Tensor, clusters: int = 0,
                              mode: str = "nearest", return_keys: bool = False):
    """``reconstruct_stage(..., mode="nearest")`` in ONE launch: the nearest-key search
    (a fused GEMM + running argmax) and every output row. For the patched forward at
    precision "fast" on the Triton backend (``registry.Kernels.variant``); fp16 / bf16 /
    fp32 ``full`` (fp64 and the other modes go to :func:`reconstruct_stage`). The keys may
    differ from the reference's at float32 near-ties of the cosine similarity; everything
    else is computed as :func:`reconstruct_stage` does. ``return_keys``: also the (B, N-K)
    int64 keys (for the tests' certificate)."""
    b, k, c = full.shape
    n = x_stage.shape[1]
    n_pruned = prune_idx.shape[1]
    if mode != "nearest" or full.dtype == torch.float64:
        out = reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode)
        if return_keys:
            near = nearest_keys(full.dtype, x_stage, keep_idx, prune_idx, cluster_id) if n_pruned and k else \
                torch.zeros((b, n_pruned), dtype=torch.int64, device=full.device)
            return out, near
        return out
    if k == 0 and n_pruned > 0:
        raise ValueError("reconstruct_stage: mode 'nearest' needs at least one kept token when tokens are pruned")
    out = torch.empty((b, n, c), dtype=full.dtype, device=full.device)
    near = torch.empty((b, n_pruned) if return_keys else (1,), dtype=torch.int64, device=full.device)
    if out.numel() == 0:
        return (out, near) if return_keys else out
    # GPU tiles: 32 pruned x 64 kept x 64 channels (tl.dot needs >= 16 each); one program
    # per image and kind of row under the interpreter
    p2 = lambda v: triton.next_power_of_2(max(v, 16))  # noqa: E731
    block_p = min(p2(max(n_pruned, k)), _common.block_cap(32, 2048))
    block_k = min(p2(k), _common.block_cap(64, 2048))
    block_c = min(p2(c), _common.block_cap(64, 1024))
    n_pblocks = triton.cdiv(n_pruned, block_p)
    grid = (b, n_pblocks + triton.cdiv(k, block_p))
    _reconstruct_nearest_fused_kernel[grid](
        full, x_stage, keep_idx, prune_idx, cluster_id, out, near,
        k, n_pruned, n, c, n_pblocks,
        full.stride(0), full.stride(1), full.stride(2),
        x_stage.stride(0), x_stage.stride(1), x_stage.stride(2),
        keep_idx.stride(0), keep_idx.stride(1), prune_idx.stride(0), prune_idx.stride(1),
        cluster_id.stride(0), cluster_id.stride(1),
        FDTYPE=_TL_DTYPES[full.dtype], BLOCK_P=block_p, BLOCK_K=block_k, BLOCK_C=block_c,
        K_LOOP=loop_bound(k), C_LOOP=loop_bound(c), WRITE_NEAR=return_keys, num_warps=4,
    )
    return (out, near) if return_keys else out
