"""Fused softmax attention + multi-scale Tsallis entropy (``lvtp::attention_entropy``).

A FlashAttention-2-style forward: each program owns one (batch, head, query block),
streams the keys and values in blocks with an online softmax, and never materialises
the N x N attention map. Alongside the usual running max ``m`` and normaliser
``l = sum exp(s - m)`` it keeps, per query row and per entropy order, one more running
sum from which the spec's normalised entropy ``S_q / S_q_max`` (step 1) follows at the
end. Per-head values go to a small (B, H, N, Q) fp32 scratch and a second kernel takes
the head mean in a fixed order (deterministic, no atomics); with H == 1 the first kernel
writes ``ent`` directly.

Running statistics (natural units; ``x = s - m <= 0``, ``e^x`` the unnormalised
probability, ``p = e^x / l``; when the max grows by ``-d`` (``d = m_old - m_new <= 0``)
each statistic is rescaled exactly, without cancellation):

* ``|q - 1| >= NEAR_ONE`` ("pow"):  ``T = sum e^(q x)``;  rescale ``T *= e^(q d)``;
  ``sum p^q = T / l^q``.
* ``q == 1`` (Shannon):  ``U = sum e^x x``;  rescale ``U = e^d (U + d l_old)``;
  ``H_1 = ln l - U / l`` (a sum of two non-negative terms).
* ``0 < |q - 1| < NEAR_ONE`` ("near"), ``a = q - 1``: the literal ``1 - sum p^q`` cancels
  catastrophically (both ~1, the difference ~a). Instead accumulate the deviation
  ``D = sum e^x expm1(a x)`` (every term has the sign of -a, so the sum has relative
  accuracy); rescale ``D = e^(q d) D + e^d expm1(a d) l_old`` (both terms share that
  sign). With ``r = D / l`` and ``E = expm1(-a ln l)`` (also the sign of -a),
  ``1 - sum p^q = -(E (1 + r) + r)`` exactly, again a sum of same-sign terms, so the
  result has fp32 *relative* accuracy even as q -> 1.

Normalisation: ``S_q / S_q_max = (1 - sum p^q) / (1 - N^(1-q))`` with the denominator
``-expm1((1 - q) ln N)`` computed on the host in float64 (``ln N`` for Shannon); its
reciprocal is passed in and is 0 when N == 1 (the spec's 0/0 := 0).

Numerics: logits are kept in raw ``q.k`` units for the max and shifted *before* scaling,
``x2 = (s - m) * scale * log2(e)``, so huge logits (``scale * |s| ~ 1e4``) lose no
absolute accuracy to the scale multiply; ``exp2`` is used throughout. Integer (and, when
0.5 is among the orders, half-integer) orders reuse the one ``exp2`` per score by
repeated multiplication (``p^2``, ``p^3``, ``sqrt(p)`` via ``h = 2^(x2/2)``, ``p = h*h``),
so the default orders (0.5, 1, 2, 3) cost a single transcendental per score, like plain
attention. ``expm1`` is evaluated without libdevice: a degree-8 Taylor polynomial on
|y| < 0.5 (truncation < 2e-8 relative) and ``exp(y) - 1`` elsewhere.

Dtypes: fp16/bf16 run ``tl.dot`` in the input dtype with fp32 accumulation (P is rounded
to the input dtype for P @ V, as FlashAttention does); fp32 runs the dots in full IEEE
fp32 (no TF32); float64 inputs are accepted and computed in fp32 (out is returned in
float64 with fp32 accuracy). Every statistic accumulates in fp32.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import block_cap, interpreting

__all__ = ["attention_entropy", "NEAR_ONE", "tuned_config", "check_config"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Orders with 0 < |q - 1| < NEAR_ONE use the deviation ("near") statistic; farther
# orders the cheaper power sum, whose fp32 error after normalisation is
# O(eps / (1 - N^-|q-1|)) <= ~3e-6 at |q - 1| = 0.25, N = 2.
NEAR_ONE = 0.25
KIND_POW, KIND_SHANNON, KIND_NEAR = 0, 1, 2
MAX_GPU_HEAD_DIM = 256
_DOT_MIN = 16  # tl.dot needs every block dim >= 16


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _expm1_taylor(y):
    """expm1(y) for |y| <= 0.5: degree-8 Taylor polynomial (Horner), relative error < 2e-8."""
    r = 1.0 / 40320.0
    r = r * y + 1.0 / 5040.0
    r = r * y + 1.0 / 720.0
    r = r * y + 1.0 / 120.0
    r = r * y + 1.0 / 24.0
    r = r * y + 1.0 / 6.0
    r = r * y + 0.5
    r = r * y + 1.0
    return r * y


@triton.jit
def _expm1(y):
    """expm1(y) in fp32 without libdevice: Taylor for |y| < 0.5, exp(y) - 1 beyond
    (where that difference loses at most ~2 bits)."""
    small = _expm1_taylor(tl.minimum(tl.maximum(y, -0.5), 0.5))
    return tl.where(tl.abs(y) < 0.5, small, tl.exp(y) - 1.0)


@triton.jit
def _power(base, x2, q: tl.constexpr, reps: tl.constexpr):
    """e^(q x) for x = x2 ln 2: ``base ** reps`` by multiplication when ``reps > 0``
    (base = e^x, or e^(x/2) when half-integer orders are in play), else exp2(q * x2)."""
    if reps > 0:
        r = base
        for _ in tl.static_range(reps - 1):
            r = r * base
    else:
        r = tl.exp2(q * x2)
    return r


@triton.jit
def _attn_entropy_block(
    acc, m_i, l_i, st,
    q, k_ptrs, v_ptrs, start_n, N,
    offs_n, offs_d, offs_dv, cols, qcol, acol, kcol, qk_scale,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    QS: tl.constexpr, KINDS: tl.constexpr, REPS: tl.constexpr, NQ: tl.constexpr,
    HALF: tl.constexpr, MASK_N: tl.constexpr, UPCAST: tl.constexpr, LOW_P: tl.constexpr,
    IEEE: tl.constexpr, PV: tl.constexpr,
):
    """One key/value block of the online softmax + entropy statistics for a query block
    (and, with PV, of the output accumulator; without, V is never read)."""
    # ---- S = Q K^T (raw units), masked tail columns -> -inf
    if MASK_N:
        n_ok = (start_n + offs_n) < N
        if BLOCK_D == D:
            k = tl.load(k_ptrs, mask=n_ok[None, :], other=0.0)
        else:
            k = tl.load(k_ptrs, mask=n_ok[None, :] & (offs_d[:, None] < D), other=0.0)
    else:
        if BLOCK_D == D:
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=offs_d[:, None] < D, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
    if IEEE:
        s = tl.dot(q, k, input_precision="ieee")
    else:
        s = tl.dot(q, k)
    if MASK_N:
        s = tl.where(n_ok[None, :], s, float("-inf"))

    # ---- online max; shift in raw units, then scale (no absolute error from huge logits)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # All statistics are still 0 before the first block, so any finite factor keeps them 0.
    d2 = tl.where(m_i == float("-inf"), 0.0, (m_i - m_new) * qk_scale)  # <= 0, log2 units
    x2 = (s - m_new[:, None]) * qk_scale  # <= 0, log2 units
    if HALF:
        base = tl.exp2(0.5 * x2)
        p = base * base
    else:
        p = tl.exp2(x2)
        base = p
    alpha = tl.exp2(d2)
    l_old = l_i
    l_i = l_i * alpha + tl.sum(p, 1)

    # ---- rescale the entropy statistics to the new max (see the module docstring)
    d2c = d2[:, None]
    fq = tl.exp2(qcol[None, :] * d2c)  # e^(q d)
    y = acol[None, :] * (d2c * 0.6931471805599453)  # a d, natural units
    e1 = tl.where(
        tl.abs(y) < 0.5,
        alpha[:, None] * _expm1_taylor(tl.minimum(tl.maximum(y, -0.5), 0.5)),
        fq - alpha[:, None],
    )  # e^d expm1(a d)
    lo = l_old[:, None]
    st = tl.where(
        kcol[None, :] == 0,
        st * fq,
        tl.where(kcol[None, :] == 1, alpha[:, None] * (st + d2c * lo), fq * st + e1 * lo),
    )

    # ---- this block's contributions, one order at a time
    for j in tl.static_range(NQ):  # (constexpr locals cannot be rebound per iteration)
        if KINDS[j] == 1:
            if MASK_N:
                term = p * tl.where(n_ok[None, :], x2, 0.0)  # masked: p = 0, x2 = -inf
            else:
                term = p * x2
        elif KINDS[j] == 0:
            term = _power(base, x2, QS[j], REPS[j])
        else:
            pq = _power(base, x2, QS[j], REPS[j])
            yj = (QS[j] - 1.0) * 0.6931471805599453 * x2  # a x; -inf or +inf on masked columns
            small = p * _expm1_taylor(tl.minimum(tl.maximum(yj, -0.5), 0.5))
            term = tl.where(tl.abs(yj) < 0.5, small, pq - p)  # masked: 0 - 0
        st += tl.where(cols[None, :] == j, tl.sum(term, 1)[:, None], 0.0)

    # ---- O = O * alpha + P V
    if not PV:
        return acc, m_new, l_i, st
    if MASK_N:
        if BLOCK_DV == DV:
            v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs, mask=n_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    else:
        if BLOCK_DV == DV:
            v = tl.load(v_ptrs)
        else:
            v = tl.load(v_ptrs, mask=offs_dv[None, :] < DV, other=0.0)
    acc = acc * alpha[:, None]
    if UPCAST:
        v = v.to(tl.float32)
        if LOW_P:  # round P as the low-precision dot would (interpreter bf16 path)
            pv = p.to(v_ptrs.dtype.element_ty).to(tl.float32)
        else:
            pv = p
    else:
        pv = p.to(v.dtype)
    if IEEE:
        acc = tl.dot(pv, v, acc, input_precision="ieee")
    else:
        acc = tl.dot(pv, v, acc)
    return acc, m_new, l_i, st


@triton.jit(do_not_specialize=["stride_kn", "stride_vn"])
def _attn_entropy_fwd_kernel(
    Q, K, V, Out, Ent,
    N, H, NUM_M, qk_scale, INV_DEN,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_eb, stride_eh, stride_en,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QS: tl.constexpr, KINDS: tl.constexpr, REPS: tl.constexpr, NQ: tl.constexpr, QP: tl.constexpr,
    HALF: tl.constexpr, UPCAST: tl.constexpr, LOW_P: tl.constexpr, IEEE: tl.constexpr,
    INTERP: tl.constexpr, PV: tl.constexpr,
):
    """Program (query block, b * H + h): attention output rows and per-head normalised
    entropies ``S_q / S_q_max`` of those rows, streaming K/V in BLOCK_N blocks."""
    # 1-D grid, query blocks fastest (the programs of one head run together and share
    # its K/V in L2); no 65535 limit on B * H.
    pid = tl.program_id(0)
    pid_m = pid % NUM_M
    pid_bh = (pid // NUM_M).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    Out += b * stride_ob + h * stride_oh
    Ent += b * stride_eb + h * stride_eh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_m64 = offs_m.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    # int64: offs_d * stride_qd overflows int32 for a view whose head dim is outermost
    # in memory (stride_qd = B*H*N) once B*H*N*D > 2^31
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV).to(tl.int64)
    m_ok = offs_m < N

    q_ptrs = Q + offs_m64[:, None] * stride_qn + offs_d[None, :] * stride_qd
    if BLOCK_D == D:
        q = tl.load(q_ptrs, mask=m_ok[:, None], other=0.0)
    else:
        q = tl.load(q_ptrs, mask=m_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_ptrs = K + offs_n.to(tl.int64)[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = V + offs_n.to(tl.int64)[:, None] * stride_vn + offs_dv[None, :] * stride_vd
    k_step = BLOCK_N * stride_kn.to(tl.int64)
    v_step = BLOCK_N * stride_vn.to(tl.int64)

    # per-order constants laid out along the statistics' column axis
    cols = tl.arange(0, QP)
    qcol = tl.zeros([QP], dtype=tl.float32)
    acol = tl.zeros([QP], dtype=tl.float32)  # q - 1 from float64: fp32(q) - 1 would cancel
    kcol = tl.zeros([QP], dtype=tl.int32)
    inv_den = tl.zeros([QP], dtype=tl.float32)
    for j in tl.static_range(NQ):
        qcol = tl.where(cols == j, QS[j], qcol)
        acol = tl.where(cols == j, QS[j] - 1.0, acol)
        kcol = tl.where(cols == j, KINDS[j], kcol)
        inv_den = tl.where(cols == j, INV_DEN[j], inv_den)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    st = tl.zeros([BLOCK_M, QP], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    n_full = (N // BLOCK_N) * BLOCK_N
    if INTERP:
        # The interpreter cannot take a runtime loop bound in range() (numpy >= 2 refuses
        # int() of its 1-element scalars); a while loop runs the same blocks.
        start_n = 0
        while start_n < n_full:
            acc, m_i, l_i, st = _attn_entropy_block(
                acc, m_i, l_i, st, q, k_ptrs, v_ptrs, start_n, N,
                offs_n, offs_d, offs_dv, cols, qcol, acol, kcol, qk_scale,
                D, DV, BLOCK_D, BLOCK_DV, QS, KINDS, REPS, NQ, HALF, False, UPCAST, LOW_P, IEEE, PV,
            )
            k_ptrs += k_step
            v_ptrs += v_step
            start_n += BLOCK_N
    else:
        for start_n in range(0, n_full, BLOCK_N):  # scf.for: software-pipelined K/V loads
            acc, m_i, l_i, st = _attn_entropy_block(
                acc, m_i, l_i, st, q, k_ptrs, v_ptrs, start_n, N,
                offs_n, offs_d, offs_dv, cols, qcol, acol, kcol, qk_scale,
                D, DV, BLOCK_D, BLOCK_DV, QS, KINDS, REPS, NQ, HALF, False, UPCAST, LOW_P, IEEE, PV,
            )
            k_ptrs += k_step
            v_ptrs += v_step
    if n_full < N:
        acc, m_i, l_i, st = _attn_entropy_block(
            acc, m_i, l_i, st, q, k_ptrs, v_ptrs, n_full, N,
            offs_n, offs_d, offs_dv, cols, qcol, acol, kcol, qk_scale,
            D, DV, BLOCK_D, BLOCK_DV, QS, KINDS, REPS, NQ, HALF, True, UPCAST, LOW_P, IEEE, PV,
        )

    # ---- attention output
    inv_l = 1.0 / l_i
    if PV:
        out = acc * inv_l[:, None]
        o_ptrs = Out + offs_m64[:, None] * stride_on + offs_dv[None, :] * stride_od
        if BLOCK_DV == DV:
            tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None])
        else:
            tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None] & (offs_dv[None, :] < DV))

    # ---- normalised entropies of this head
    log2l = tl.log2(l_i)[:, None]
    r = st * inv_l[:, None]
    q2 = qcol[None, :]
    s_pow = 1.0 - st * tl.exp2(-q2 * log2l)  # 1 - T / l^q
    s_sha = 0.6931471805599453 * (log2l - r)  # ln l - U / l  (U kept in log2 units)
    e_l = _expm1(-acol[None, :] * (log2l * 0.6931471805599453))  # expm1(-a ln l)
    s_near = -(e_l * (1.0 + r) + r)
    s = tl.where(kcol[None, :] == 0, s_pow, tl.where(kcol[None, :] == 1, s_sha, s_near))
    ent = s * inv_den[None, :]
    e_ptrs = Ent + offs_m64[:, None] * stride_en + cols[None, :]
    tl.store(e_ptrs, ent, mask=m_ok[:, None] & (cols[None, :] < NQ))


@triton.jit
def _head_mean_kernel(Src, Dst, L, NUM_L, stride_sb, stride_sh, stride_db, H: tl.constexpr, BLOCK: tl.constexpr):
    """Dst[b, i] = mean over h of Src[b, h, i] for the flattened (N * Q) index i, summed
    in head order (deterministic). 1-D grid of B * NUM_L programs."""
    pid = tl.program_id(0) % NUM_L
    b = (tl.program_id(0) // NUM_L).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < L
    src = Src + b * stride_sb + offs
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for h in tl.static_range(H):
        total += tl.load(src + h * stride_sh, mask=ok, other=0.0)
    tl.store(Dst + b * stride_db + offs, total / H, mask=ok)


# --------------------------------------------------------------------------- host side
def _order_plan(qs: Sequence[float]) -> Tuple[Tuple[float, ...], Tuple[int, ...], Tuple[int, ...], bool]:
    """Per order: the statistic kind and, where possible, how many multiplications of the
    per-score base give e^(q x). Half-integer orders (0.5, 1.5, ...) switch the base to
    e^(x/2) so that sqrt(p) costs no extra transcendental."""
    qs = tuple(float(q) for q in qs)
    half = any(q == 0.5 for q in qs)
    kinds, reps = [], []
    for q in qs:
        if q == 1.0:
            kinds.append(KIND_SHANNON)
        elif abs(q - 1.0) < NEAR_ONE:
            kinds.append(KIND_NEAR)
        else:
            kinds.append(KIND_POW)
        mult = 2.0 * q if half else q
        reps.append(int(mult) if mult == int(mult) and 1 <= mult <= (6 if half else 4) else 0)
    return qs, tuple(kinds), tuple(reps), half


def _inv_denominators(qs: Sequence[float], n: int) -> Tuple[float, ...]:
    """1 / S_q_max(N) up to the (q - 1) factor that cancels: 1 / ln N for Shannon,
    1 / -expm1((1 - q) ln N) otherwise, in float64; 0 when N == 1 (0/0 := 0)."""
    ln_n = math.log(n)
    out: List[float] = []
    for q in qs:
        den = ln_n if q == 1.0 else -math.expm1((1.0 - q) * ln_n)
        out.append(0.0 if den == 0.0 else 1.0 / den)
    return tuple(out)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


# Tiles measured on a card by benchmarks/tune_attention.py (gpu_check.sh runs it): entries
# {"device" (the GPU family, gpu_family(): "sm_90"), "dtype", "block_d", "block_dv", "np2", "config": [BLOCK_M, BLOCK_N, warps,
# stages], ...}; np2 is the next power of two of N. A "16bit" entry serves fp16 and bf16.
# A missing, unreadable or malformed table (or entry) is ignored: the heuristic below runs.
TUNED_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                          "attention_tuned.json")
MAX_BLOCK = 512  # the interpreter's heuristic uses up to 512; GPU heuristics stay <= 128


def check_config(config) -> Tuple[int, int, int, int]:
    """A tile config as ints, or ValueError: (BLOCK_M, BLOCK_N) powers of two in
    [16, MAX_BLOCK], warps in {1, 2, 4, 8, 16}, stages in [1, 8]."""
    try:
        vals = tuple(config)
    except TypeError:
        vals = ()
    if len(vals) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"lvtp.attention_entropy (triton): bad config {config!r}: want 4 ints "
                         "(BLOCK_M, BLOCK_N, num_warps, num_stages)")
    bm, bn, warps, stages = vals
    if not (all(_DOT_MIN <= x <= MAX_BLOCK and x & (x - 1) == 0 for x in (bm, bn))
            and warps in (1, 2, 4, 8, 16) and 1 <= stages <= 8):
        raise ValueError(f"lvtp.attention_entropy (triton): bad config {vals}: BLOCK_M and BLOCK_N powers of "
                         f"two in [{_DOT_MIN}, {MAX_BLOCK}], num_warps in 1..16 (a power of two), num_stages in 1..8")
    return vals


def _valid_entry(e) -> bool:
    if not isinstance(e, dict):
        return False
    try:
        check_config(e.get("config"))
    except ValueError:
        return False
    return (isinstance(e.get("device"), str) and isinstance(e.get("dtype"), str)
            and all(isinstance(e.get(k), int) for k in ("block_d", "block_dv", "np2")))


@functools.lru_cache(maxsize=None)
def _tuned_entries(path: str) -> Tuple[dict, ...]:
    try:
        with open(path) as f:
            data = json.load(f)
        entries = data.get("entries") if isinstance(data, dict) else None
        return tuple(e for e in entries if _valid_entry(e)) if isinstance(entries, list) else ()
    except (OSError, ValueError):
        return ()


@functools.lru_cache(maxsize=None)
def gpu_family(index: Optional[int]) -> str:
    """The tile table's device key: the GPU family as its compute capability, "sm_90" for an
    H100 and an H200 alike (the same SMs, shared memory and instructions: tiles measured on
    one serve the other), not the marketing name of one card."""
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def dtype_class(dtype: torch.dtype) -> str:
    """The table's dtype key: "16bit" serves fp16 and bf16 (same tiles and instructions)."""
    return "16bit" if dtype in (torch.float16, torch.bfloat16) else str(dtype).replace("torch.", "")


def n_bucket(n: int) -> int:
    """The table's N key: the next power of two (at least the smallest dot block)."""
    return max(_DOT_MIN, _next_pow2(n))


def tuned_config(family: str, dtype: torch.dtype, n: int, block_d: int, block_dv: int,
                 path: Optional[str] = None) -> Optional[Tuple[int, int, int, int]]:
    """The measured tile config for this GPU family (``gpu_family``), dtype class and shape
    bucket, or None.
    ``path`` defaults to ``TUNED_PATH`` (read when called)."""
    key, np2 = dtype_class(dtype), n_bucket(n)
    for e in _tuned_entries(path or TUNED_PATH):
        if (e["device"] == family and e["dtype"] == key and e["block_d"] == block_d
                and e["block_dv"] == block_dv and e["np2"] == np2):
            bm, bn, warps, stages = check_config(e["config"])
            return min(bm, np2), min(bn, np2), warps, stages
    return None


def resolve_config(device: torch.device, dtype: torch.dtype, n: int, block_d: int, block_dv: int, ieee: bool,
                   config=None) -> Tuple[int, int, int, int]:
    """The launch config: a forced one (checked), else the measured entry of this card's
    family (compiled GPU code only), else the shape heuristic."""
    if config is not None:
        return check_config(config)
    if device.type == "cuda" and not interpreting():
        tuned = tuned_config(gpu_family(device.index), dtype, n, block_d, block_dv)
        if tuned is not None:
            return tuned
    return _launch_config(n, block_d, block_dv, ieee)


def _launch_config(n: int, block_d: int, block_dv: int, ieee: bool) -> Tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) from the shape: FlashAttention-2 tiles on a
    GPU, big tiles under the interpreter (each program costs ~4 ms there). A config
    measured on the same GPU family (``tuned_config``) takes precedence on a GPU.

    GPU tiles were sized offline with ptxas for sm_90 (qs = 0.5, 1, 2, 3, 0.9): no spills
    for fp16/bf16 up to D = 256 (~250 registers/thread at 8 warps, one CTA per SM); the fp32
    and fp64 paths (full-precision FMA dots) spill a few hundred bytes at 64x32.
    """
    widest = max(block_d, block_dv)
    if ieee:
        bm, bn, warps, stages = 64, 32, 8, 2
    elif widest <= 64:
        bm, bn, warps, stages = 128, 64, 8, 3
    elif widest <= 128:
        bm, bn, warps, stages = 128, 32, 8, 2
    else:
        bm, bn, warps, stages = 64, 32, 8, 2
    bm = block_cap(bm, 256)
    bn = block_cap(bn, 512)
    np2 = max(_DOT_MIN, _next_pow2(n))
    return min(bm, np2), min(bn, np2), warps, stages


def attention_entropy(q: Tensor, k: Tensor, v: Tensor, qs: Sequence[float], scale: float,
                      config: Optional[Tuple[int, int, int, int]] = None, bnhd: bool = False,
                      entropy_only: bool = False) -> Tuple[Optional[Tensor], Tensor]:
    """Softmax attention and its per-token head-mean normalised Tsallis entropies, fused.

    Args:
        q, k: (B, H, N, D) queries and keys, any strides. v: (B, H, N, Dv), Dv may differ.
        qs: positive entropy orders (1.0 = Shannon). scale: softmax scale (> 0).
        config: (BLOCK_M, BLOCK_N, num_warps, num_stages) to force (the tuner's knob; the
            op never passes it); see ``check_config``.

    Returns:
        out (B, H, N, Dv) contiguous, in q's dtype: ``softmax(q k^T * scale) v``; with
            ``bnhd=True`` stored as (B, N, H, Dv) (out.transpose(1, 2) contiguous), the
            layout the patched blocks need (ops.attention.for_block);
        ent (B, N, len(qs)) fp32: the head mean of ``S_q / S_q_max`` (spec step 1).
        With ``entropy_only=True`` out is None and V is never read: the entropy pass of the
        "SDPA + entropy-only" alternative ([H] item 3; benchmarks/bench_attention.py times
        it beside the fused kernel), with the same ``ent`` bit for bit.

    The op registry has validated the arguments. Raises ``RuntimeError`` when the Triton
    kernel cannot run these tensors (CPU tensors without ``TRITON_INTERPRET=1``, or a
    head dim above 256 on a GPU); there is no fallback.
    """
    if q.device.type != "cuda" and not (interpreting() and q.device.type == "cpu"):
        raise RuntimeError(
            f"lvtp.attention_entropy (triton): tensors on {q.device} need a CUDA device "
            "(or TRITON_INTERPRET=1 for CPU tensors)"
        )
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise RuntimeError(f"lvtp.attention_entropy (triton): unsupported dtype {q.dtype}")
    B, H, N, D = q.shape
    DV = v.shape[3]
    block_d, block_dv = max(_DOT_MIN, _next_pow2(D)), max(_DOT_MIN, _next_pow2(DV))
    if not interpreting() and max(D, DV) > MAX_GPU_HEAD_DIM:
        raise RuntimeError(
            f"lvtp.attention_entropy (triton): head dims up to {MAX_GPU_HEAD_DIM} are supported, "
            f"got D={D}, Dv={DV}"
        )
    qs_t, kinds, reps, half = _order_plan(qs)
    nq = len(qs_t)
    inv_den = _inv_denominators(qs_t, N)

    if entropy_only:  # a 1-element placeholder the kernel never writes (PV=False)
        out = torch.empty((1, 1, 1, 1), dtype=q.dtype, device=q.device).expand(B, H, N, DV)
    elif bnhd:  # the block's layout: out.transpose(1, 2).reshape(B, N, H * Dv) is then a view
        out = torch.empty((B, N, H, DV), dtype=q.dtype, device=q.device).transpose(1, 2)
    else:
        out = torch.empty((B, H, N, DV), dtype=q.dtype, device=q.device)
    ent = torch.empty((B, N, nq), dtype=torch.float32, device=q.device)
    if H == 1:
        scratch, s_strides = ent, (ent.stride(0), 0, ent.stride(1))
    else:
        scratch = torch.empty((B, H, N, nq), dtype=torch.float32, device=q.device)
        s_strides = (scratch.stride(0), scratch.stride(1), scratch.stride(2))

    low = q.dtype in (torch.float16, torch.bfloat16)
    # fp64 computes in fp32; the interpreter's dot cannot take bf16 operands (numpy has
    # no bf16), so there bf16 is upcast right after each load and P is rounded to bf16.
    upcast = q.dtype == torch.float64 or (interpreting() and q.dtype == torch.bfloat16)
    ieee = not low or upcast
    bm, bn, warps, stages = resolve_config(q.device, q.dtype, N, block_d, block_dv, ieee, config)
    num_m = triton.cdiv(N, bm)
    grid = (num_m * B * H,)
    with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
        _attn_entropy_fwd_kernel[grid](
            q, k, v, out, scratch,
            N, H, num_m, scale * LOG2E, inv_den,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *s_strides,
            D=D, DV=DV, BLOCK_D=block_d, BLOCK_DV=block_dv, BLOCK_M=bm, BLOCK_N=bn,
            QS=qs_t, KINDS=kinds, REPS=reps, NQ=nq, QP=max(2, _next_pow2(nq)),
            HALF=half, UPCAST=upcast, LOW_P=low, IEEE=ieee, INTERP=interpreting(), PV=not entropy_only,
            num_warps=warps, num_stages=stages,
        )
        if H > 1:
            length = N * nq
            block = min(block_cap(1024, 1 << 16), max(16, _next_pow2(length)))
            num_l = triton.cdiv(length, block)
            _head_mean_kernel[(num_l * B,)](
                scratch, ent, length, num_l, scratch.stride(0), scratch.stride(1), ent.stride(0),
                H=H, BLOCK=block, num_warps=4,
            )
    return (None if entropy_only else out), ent


