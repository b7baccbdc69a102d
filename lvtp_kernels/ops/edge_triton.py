"""Triton kernels of ``lvtp::patch_edge_energy`` (spec step 3).

``_edge_kernel`` fuses luminance, the 3x3 Sobel filter with replicate padding, the
gradient magnitude and the per-patch mean: one program per (image, patch row, block of
patches) walks down the patch row's pixel rows with a sliding window of three luminance
rows, so each pixel of the image is loaded from memory once (its neighbours come from
the cache). Replicate padding is a clamp of the neighbour indices to the image, and
pixels past the patch grid are never accumulated (they still serve as neighbours, as in
a convolution over the whole image followed by a crop). ``_edge_normalize_kernel``
then divides each image's energies by (max + 1e-6).

Precision: fp16/bf16/fp32 images compute in fp32, fp64 images in fp64 (like the
reference); the result is float32. The magnitude is evaluated as
``m * sqrt(1 + (n/m)^2)`` with m = max(|gx|, |gy|), n = min(...), so it does not
overflow where ``gx^2 + gy^2`` would.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from python_ref.ops import LUMA

from . import _common
from ._common import loop_bound

__all__ = ["patch_edge_energy"]


@triton.jit
def _luma3(row_ptr, col_l, col_c, col_r, stride_c, stride_w, mask, ACC: tl.constexpr):
    """Luminance of one image row at three column sets (left, centre, right neighbours)."""
    r = row_ptr
    g = row_ptr + stride_c
    b = g + stride_c  # not row_ptr + 2 * stride_c: that product is int32 and overflows past 2^31
    y_l = (
        0.299 * tl.load(r + col_l * stride_w, mask=mask, other=0.0).to(ACC)
        + 0.587 * tl.load(g + col_l * stride_w, mask=mask, other=0.0).to(ACC)
        + 0.114 * tl.load(b + col_l * stride_w, mask=mask, other=0.0).to(ACC)
    )
    y_c = (
        0.299 * tl.load(r + col_c * stride_w, mask=mask, other=0.0).to(ACC)
        + 0.587 * tl.load(g + col_c * stride_w, mask=mask, other=0.0).to(ACC)
        + 0.114 * tl.load(b + col_c * stride_w, mask=mask, other=0.0).to(ACC)
    )
    y_r = (
        0.299 * tl.load(r + col_r * stride_w, mask=mask, other=0.0).to(ACC)
        + 0.587 * tl.load(g + col_r * stride_w, mask=mask, other=0.0).to(ACC)
        + 0.114 * tl.load(b + col_r * stride_w, mask=mask, other=0.0).to(ACC)
    )
    return y_l, y_c, y_r


@triton.jit
def _edge_kernel(
    img_ptr,  # (B, 3, H, W), any strides
    e_ptr,  # (B, h * w) ACC, un-normalised patch energies
    H,
    W,
    w_grid,
    patch,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    ACC: tl.constexpr,
    PPAD: tl.constexpr,
    BLOCK_PW: tl.constexpr,
    P_LOOP: tl.constexpr,
):
    """One program per (image b, patch row ph, block of BLOCK_PW patches): the tile is
    [BLOCK_PW patches, PPAD >= patch pixel columns]; the loop runs over the patch's pixel
    rows with the luminance of rows r-1, r, r+1 kept in registers.

    ``P_LOOP`` is -1 on a GPU (loop to the runtime ``patch``), ``patch`` under the
    interpreter (see ``_common.loop_bound``)."""
    pid_b = tl.program_id(0).to(tl.int64)
    ph = tl.program_id(1)
    pw = tl.program_id(2) * BLOCK_PW + tl.arange(0, BLOCK_PW)
    j = tl.arange(0, PPAD)
    valid = (pw < w_grid)[:, None] & (j < patch)[None, :]
    col = pw[:, None] * patch + j[None, :]
    col_c = tl.minimum(col, W - 1).to(tl.int64)  # masked lanes stay inside the image too
    col_l = tl.maximum(col_c - 1, 0)
    col_r = tl.minimum(col_c + 1, W - 1)
    img = img_ptr + pid_b * stride_b

    r0 = ph * patch
    prev = img + tl.maximum(r0 - 1, 0).to(tl.int64) * stride_h
    cur = img + r0.to(tl.int64) * stride_h
    p_l, p_c, p_r = _luma3(prev, col_l, col_c, col_r, stride_c, stride_w, valid, ACC)
    c_l, c_c, c_r = _luma3(cur, col_l, col_c, col_r, stride_c, stride_w, valid, ACC)
    acc = tl.zeros([BLOCK_PW, PPAD], dtype=ACC)
    for dr in range(patch if P_LOOP < 0 else P_LOOP):
        nxt = img + tl.minimum(r0 + dr + 1, H - 1).to(tl.int64) * stride_h
        n_l, n_c, n_r = _luma3(nxt, col_l, col_c, col_r, stride_c, stride_w, valid, ACC)
        gx = (p_r - p_l) + 2.0 * (c_r - c_l) + (n_r - n_l)
        gy = (n_l + 2.0 * n_c + n_r) - (p_l + 2.0 * p_c + p_r)
        ax = tl.abs(gx)
        ay = tl.abs(gy)
        big = tl.maximum(ax, ay)
        small = tl.minimum(ax, ay)
        ratio = small / tl.where(big > 0.0, big, 1.0)
        mag = big * tl.sqrt(1.0 + ratio * ratio)
        acc += tl.where(valid, mag, 0.0)
        p_l, p_c, p_r = c_l, c_c, c_r
        c_l, c_c, c_r = n_l, n_c, n_r

    energy = tl.sum(acc, axis=1) / (patch * patch * 1.0)
    out = e_ptr + (pid_b * (tl.num_programs(1) * w_grid) + ph * w_grid) + pw
    tl.store(out, energy, mask=pw < w_grid)


@triton.jit
def _edge_normalize_kernel(e_ptr, out_ptr, L, ACC: tl.constexpr, BLOCK: tl.constexpr, L_LOOP: tl.constexpr):
    """One program per image: out = e / (max e + 1e-6) over the image's L patches."""
    base = tl.program_id(0).to(tl.int64) * L
    offs = tl.arange(0, BLOCK)
    vmax = tl.full([BLOCK], float("-inf"), dtype=ACC)
    for s in range(0, L if L_LOOP < 0 else L_LOOP, BLOCK):
        m = s + offs < L
        vmax = tl.maximum(vmax, tl.load(e_ptr + base + s + offs, mask=m, other=float("-inf")))
    denom = tl.max(vmax, axis=0) + 1e-6
    for s in range(0, L if L_LOOP < 0 else L_LOOP, BLOCK):
        m = s + offs < L
        e = tl.load(e_ptr + base + s + offs, mask=m, other=0.0)
        if ACC == tl.float64:
            ratio = e / denom  # IEEE in fp64
        else:
            ratio = tl.div_rn(e, denom)
        tl.store(out_ptr + base + s + offs, ratio.to(tl.float32), mask=m)


def patch_edge_energy(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) image -> (B, h*w) float32 normalised Sobel patch energies, matching
    ``python_ref.patch_edge_energy`` (h = H // patch, w = W // patch, row-major).

    Inputs are validated by the op registry; any strides (channels-last included).
    """
    assert LUMA == (0.299, 0.587, 0.114), "the kernel hard-codes the luminance weights"
    b, _, height, width = image.shape
    patch = int(patch)
    h, w = height // patch, width // patch
    out = torch.empty((b, h * w), dtype=torch.float32, device=image.device)
    if out.numel() == 0:
        return out
    f64 = image.dtype == torch.float64
    energy = torch.empty((b, h * w), dtype=torch.float64 if f64 else torch.float32, device=image.device)
    ppad = triton.next_power_of_2(patch)
    block_pw = max(1, min(_common.block_cap(256, 4096) // ppad, triton.next_power_of_2(w)))
    grid = (b, h, triton.cdiv(w, block_pw))
    _edge_kernel[grid](
        image,
        energy,
        height,
        width,
        w,
        patch,
        image.stride(0),
        image.stride(1),
        image.stride(2),
        image.stride(3),
        ACC=tl.float64 if f64 else tl.float32,
        PPAD=ppad,
        BLOCK_PW=block_pw,
        P_LOOP=loop_bound(patch),
        num_warps=4,
    )
    block = min(_common.block_cap(1024, 8192), triton.next_power_of_2(h * w))
    _edge_normalize_kernel[(b,)](
        energy, out, h * w, ACC=tl.float64 if f64 else tl.float32, BLOCK=block, L_LOOP=loop_bound(h * w), num_warps=4
    )
    return out


