"""Triton kernel of ``lvtp::tsallis_entropy`` (spec step 1).

One pass over the (B, H, N, N) attention probabilities: every element is read once and
feeds every order ``q`` (and the Shannon term for ``q == 1``) at the same time. The head
mean and the normalisation by the uniform row's entropy are fused, so the kernel writes
only the (B, N, Q) float32 result.

Per order the kernel accumulates, over heads and columns, a contribution ``c``:

* ``q == 1``           Shannon, ``c = -p ln p``                     (0 ln 0 = 0)
* ``|q - 1| < 0.25``   ``c = -p expm1((q - 1) ln p)``, plus the row deficit ``1 - sum p``
                       accumulated in float64 (the same form as ``python_ref``: it avoids
                       the catastrophic cancellation of ``1 - sum p^q`` near q = 1)
* ``q == 2, 3, 0.5``   ``c = -p*p``, ``-p*p*p``, ``-sqrt(p)`` (what ``torch.pow`` does)
* other ``q``          ``c = -exp(q ln p)`` for p > 0, 0 for p = 0

and the result is ``(base + sum c) / (H * S_max)`` with ``base`` = 0 (Shannon), ``H``
(power forms) or ``H - sum p`` (expm1 form), ``S_max = ln N`` or ``1 - N^(1-q)``
(``0/0 := 0`` when N = 1). The orders reach the kernel as a small cached device tensor
(q, q - 1, form and denominator per order) with a constexpr count, so a new list of orders
does not recompile the kernel; only the number of orders and whether any order is near
1 are compile-time constants.

Precision: fp16/bf16/fp32 inputs are upcast to fp32 right after the load and every sum
accumulates in fp32 (the deficit in fp64). fp64 inputs are computed entirely in fp64
(the expm1 series gets more terms), so their results are at least as accurate as the
fp32 path; the output is float32 either way. ``expm1`` is evaluated without libdevice:
a Taylor series (Horner) for |x| < 0.5, where its truncation error is below the
working precision, and ``exp(x) - 1`` elsewhere, where no cancellation occurs.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple

import torch
import triton
import triton.language as tl

from python_ref.ops import NEAR_ONE

from . import _common

__all__ = ["tsallis_entropy"]

# Per-order evaluation forms (stored as floats in the parameter tensor).
_SHANNON, _NEAR, _SQUARE, _CUBE, _SQRT, _POW = 0, 1, 2, 3, 4, 5

_FLT_MIN = 1.1754943508222875e-38  # smallest normal fp32: log() never sees a subnormal
_DBL_MIN = 2.2250738585072014e-308


@triton.jit
def _expm1(x, DEG: tl.constexpr):
    """exp(x) - 1 without cancellation: Taylor series of degree DEG for |x| < 0.5
    (truncation below 0.5^(DEG+1)/(DEG+1)! relative), exp(x) - 1 elsewhere."""
    small = tl.abs(x) < 0.5
    xs = tl.where(small, x, 0.0)
    t = xs * 0.0 + 1.0
    for i in tl.static_range(DEG - 1):
        # nested Horner form of x (1 + x/2 (1 + x/3 (1 + ... (1 + x/DEG))))
        t = 1.0 + xs * t * (1.0 / (DEG - i))
    return tl.where(small, xs * t, tl.exp(x) - 1.0)


@triton.jit
def _tsallis_kernel(
    attn_ptr,  # (B, H, N, N) probabilities, any strides
    par_ptr,  # (4, QPAD) ACC: q, q - 1 (rounded once, from fp64), evaluation form, H * S_max
    out_ptr,  # (B, N, NQ) float32, contiguous
    N,
    H,
    stride_b,
    stride_h,
    stride_i,
    stride_j,
    NQ: tl.constexpr,
    QPAD: tl.constexpr,
    HAS_NEAR: tl.constexpr,
    ACC: tl.constexpr,
    TINY: tl.constexpr,
    EXPM1_DEG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    H_LOOP: tl.constexpr,
    N_LOOP: tl.constexpr,
):
    """One program per (image b, block of BLOCK_M query rows): loops over heads and
    column tiles, accumulating every order's row sums, then writes the normalised
    head means of its rows.

    ``H_LOOP``/``N_LOOP`` are -1 on a GPU (the loops run to the runtime H and N); under
    the interpreter they repeat H and N as constexprs (see ``_common.loop_bound``)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    cols0 = tl.arange(0, BLOCK_N)
    qcol = tl.arange(0, QPAD)

    acc = tl.zeros([BLOCK_M, QPAD], dtype=ACC)  # sum over heads and columns of c, per order
    psum = tl.zeros([BLOCK_M], dtype=tl.float64)  # sum over heads and columns of p (deficit)
    head_off = pid_b * stride_b + rows.to(tl.int64) * stride_i  # int64 row offsets of head 0
    for _h in range(H if H_LOOP < 0 else H_LOOP):
        for j0 in range(0, N if N_LOOP < 0 else N_LOOP, BLOCK_N):
            cols = j0 + cols0
            mask = row_mask[:, None] & (cols < N)[None, :]
            ptrs = attn_ptr + head_off[:, None] + cols.to(tl.int64)[None, :] * stride_j
            p = tl.load(ptrs, mask=mask, other=0.0).to(ACC)
            # ln p, exact for subnormal p too: a subnormal is scaled by 2^24 (fp64: 2^54) into the
            # normal range first (clamping it to TINY instead made p^q wrong for small q,
            # e.g. p = 1e-44, q = 0.05: 0.0127 instead of 0.0064). Finite for p = 0, where
            # every form zeroes the term.
            # (2^-1074 * 2^54 and 2^-149 * 2^24 are normal).
            sub = p < TINY
            if ACC == tl.float64:
                lp = tl.log(tl.maximum(tl.where(sub, p * 18014398509481984.0, p), TINY))  # 2^54
                lp = lp - tl.where(sub, 37.42994775023705, 0.0)  # 54 ln 2
            else:
                lp = tl.log(tl.maximum(tl.where(sub, p * 16777216.0, p), TINY))  # 2^24
                lp = lp - tl.where(sub, 16.635532333438686, 0.0)  # 24 ln 2
            if HAS_NEAR:
                psum += tl.sum(p.to(tl.float64), axis=1)
            for k in tl.static_range(NQ):
                q = tl.load(par_ptr + k)
                qm1 = tl.load(par_ptr + QPAD + k)
                form = tl.load(par_ptr + 2 * QPAD + k)
                if form == 0:  # Shannon
                    c = -(p * lp)
                elif form == 1:  # near q = 1: p^q - p = p expm1((q - 1) ln p)
                    c = -(p * _expm1(qm1 * lp, EXPM1_DEG))
                elif form == 2:
                    c = -(p * p)
                elif form == 3:
                    c = -(p * p * p)
                elif form == 4:
                    if ACC == tl.float64:
                        c = -tl.sqrt(p)  # IEEE in fp64
                    else:
                        c = -tl.sqrt_rn(p)  # torch.pow(p, 0.5) is a correctly rounded sqrt
                else:
                    c = -tl.where(p > 0.0, tl.exp(q * lp), 0.0)
                part = tl.sum(c, axis=1)
                acc += tl.where(qcol[None, :] == k, part[:, None], 0.0)
        head_off += stride_h

    qmask = qcol < NQ
    form = tl.load(par_ptr + 2 * QPAD + qcol, mask=qmask, other=0.0)
    denom = tl.load(par_ptr + 3 * QPAD + qcol, mask=qmask, other=0.0)
    h_f = H * 1.0
    total = tl.where(form[None, :] == 0.0, acc, h_f + acc)
    if HAS_NEAR:
        deficit = (h_f - psum).to(ACC)  # sum over heads of 1 - sum_j p, cancellation in fp64
        total = tl.where(form[None, :] == 1.0, deficit[:, None] + acc, total)
    safe = tl.where(denom == 0.0, 1.0, denom)
    res = tl.where(denom[None, :] == 0.0, 0.0, total / safe[None, :])  # 0/0 := 0 when N == 1
    out_off = (pid_b * N + rows.to(tl.int64))[:, None] * NQ + qcol[None, :]
    tl.store(out_ptr + out_off, res.to(tl.float32), mask=row_mask[:, None] & qmask[None, :])




def _form(q: float) -> int:
    if q == 1.0:
        return _SHANNON
    if abs(q - 1.0) < NEAR_ONE:
        return _NEAR
    return {2.0: _SQUARE, 3.0: _CUBE, 0.5: _SQRT}.get(q, _POW)


def _s_max(n: int, q: float) -> float:
    """Entropy of the uniform row of length n (0 when n == 1), as python_ref.tsallis_max
    without the (q - 1) factor that cancels."""
    if q == 1.0:
        return math.log(n)
    return -math.expm1((1.0 - q) * math.log(n))


@functools.lru_cache(maxsize=64)
def _order_params(qs: Tuple[float, ...], n: int, h: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(4, QPAD) tensor: q, q - 1, evaluation form and denominator H * S_max per order,
    cached so that repeated calls cost no host-to-device copy. q - 1 is formed in fp64
    and rounded once: (fp32(q) - 1) would carry a relative error of eps / |q - 1|."""
    qpad = triton.next_power_of_2(len(qs))
    par = torch.zeros(4, qpad, dtype=torch.float64)
    for k, q in enumerate(qs):
        par[0, k] = q
        par[1, k] = q - 1.0
        par[2, k] = _form(q)
        par[3, k] = h * _s_max(n, q)
    return par.to(dtype=dtype, device=device)


def tsallis_entropy(attn: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """(B, H, N, N) softmax probabilities -> (B, N, len(qs)) float32 head-mean normalised
    Tsallis entropies (Shannon for q == 1), matching ``python_ref.tsallis_entropy``.

    Inputs are validated by the op registry; any strides are accepted (the big tensor is
    never copied). fp16/bf16/fp32 compute in fp32, fp64 in fp64.
    """
    b, h, n, _ = attn.shape
    qs_t = tuple(float(q) for q in qs)
    out = torch.empty((b, n, len(qs_t)), dtype=torch.float32, device=attn.device)
    if out.numel() == 0:
        return out
    f64 = attn.dtype == torch.float64
    acc = tl.float64 if f64 else tl.float32
    par = _order_params(qs_t, n, h, torch.float64 if f64 else torch.float32, attn.device)
    has_near = any(_form(q) == _NEAR for q in qs_t)
    block_m = min(_common.block_cap(16, 64), triton.next_power_of_2(n))
    block_n = min(_common.block_cap(128, 2048), triton.next_power_of_2(n))
    grid = (b, triton.cdiv(n, block_m))
    _tsallis_kernel[grid](
        attn,
        par,
        out,
        n,
        h,
        attn.stride(0),
        attn.stride(1),
        attn.stride(2),
        attn.stride(3),
        NQ=len(qs_t),
        QPAD=par.shape[1],
        HAS_NEAR=has_near,
        ACC=acc,
        TINY=_DBL_MIN if f64 else _FLT_MIN,
        EXPM1_DEG=16 if f64 else 9,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        H_LOOP=_common.loop_bound(h),
        N_LOOP=_common.loop_bound(n),
        num_warps=4,
    )
    return out


