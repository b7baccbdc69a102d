"""Analytic FLOPs of a (pruned) plain ViT segmenter and schedules by target cost (spec step 8).

Convention: the one of ``torch.utils.flop_counter.FlopCounterMode``: a matmul or
convolution costs 2 FLOPs per multiply-add, bias adds and the dense layers' elementwise
work (norms, softmax, GELU) are not counted. The pruning machinery, which is mostly
elementwise, is counted op by op with the per-element costs below
(``prune_flops``, ``edge_flops``, ``reconstruct_flops``); ``lvtp_kernels`` registers
the same formulas with FlopCounterMode for its ops so both counts agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .ops import budget
from .pipeline import active_stages

# Per-element costs of the pruning overheads (FLOPs).
ENTROPY_FLOPS_PER_ELEMENT_PER_ORDER = 2  # p^q (or p ln p) and its accumulation
EDGE_FLOPS_PER_PIXEL = 32  # luminance 5, two Sobel taps 22, magnitude 4, patch mean 1
RECONSTRUCT_FLOPS_PER_VALUE = 2  # residual: subtract for kept, add the mean for pruned


@dataclass(frozen=True)
class ViTShape:
    """What the cost model needs to know about a plain ViT segmenter and its input."""

    depth: int
    embed_dim: int
    num_heads: int
    num_patches: int  # N0 - P: patch tokens of the input image
    mlp_ratio: float = 4.0
    num_protected: int = 1
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 0  # linear decoder on the patch tokens (0: none)
    image_hw: Tuple[int, int] = (0, 0)  # for the edge term (0: no edge term counted)
    stem_flops: Optional[float] = None  # overrides the patch-embedding conv's cost
    num_orders: int = 4  # len(qs)
    clusters: int = 8
    iters: int = 10
    use_edge: bool = True
    reconstruct: str = "residual"


def block_flops(n: int, dim: int, mlp_ratio: float) -> float:
    """One pre-norm transformer block on n tokens: qkv, q@k^T, p@v, proj, MLP."""
    hidden = int(dim * mlp_ratio)
    return 2 * n * dim * 3 * dim + 4 * n * n * dim + 2 * n * dim * dim + 4 * n * dim * hidden


def entropy_flops(batch: int, heads: int, n: int, num_orders: int) -> float:
    return ENTROPY_FLOPS_PER_ELEMENT_PER_ORDER * batch * heads * n * n * num_orders


def kmeans_flops(batch: int, n: int, k: int, d: int, iters: int) -> float:
    """(iters + 1) assignments of n points to k centroids, iters centroid updates."""
    return batch * ((iters + 1) * 3 * n * k * d + iters * n * d)


def prune_flops(batch: int, heads: int, n: int, dim: int, num_protected: int, num_orders: int, clusters: int, iters: int) -> float:
    """lvtp::prune on n tokens: entropy of the attention map plus the semantic k-means."""
    m = n - num_protected
    return entropy_flops(batch, heads, n, num_orders) + kmeans_flops(batch, m, min(clusters, m), dim, iters)


def edge_flops(batch: int, height: int, width: int) -> float:
    return EDGE_FLOPS_PER_PIXEL * batch * height * width


def reconstruct_flops(n_in: int, dim: int, mode: str = "residual", n_kept: int = 0, num_protected: int = 0) -> float:
    """Step 7 for one stage of n_in tokens (one image). "residual": a subtract per kept value
    and an add per pruned value; "nearest": the same plus the cosine similarities of every
    pruned token to every kept non-protected token; "frozen": nothing."""
    if mode == "frozen":
        return 0.0
    total = RECONSTRUCT_FLOPS_PER_VALUE * n_in * dim
    if mode == "nearest":
        total += 2.0 * (n_in - n_kept) * (n_kept - num_protected) * dim
    return total


def stage_token_counts(shape: ViTShape, schedule: Sequence[Tuple[int, float]]) -> List[int]:
    """Active tokens (protected included) seen by each block under ``schedule``."""
    stages = active_stages(schedule, shape.depth)
    n = shape.num_patches + shape.num_protected
    counts = []
    for i in range(shape.depth):
        counts.append(n)
        if i in stages:
            n = shape.num_protected + budget(n, shape.num_protected, stages[i])
    return counts


def vit_flops(shape: ViTShape, schedule: Sequence[Tuple[int, float]] = ()) -> float:
    """FLOPs of one image through the model under ``schedule`` (stages at 1.0 are skipped)."""
    dim, p = shape.embed_dim, shape.num_protected
    stages = active_stages(schedule, shape.depth)
    if shape.stem_flops is not None:
        total = float(shape.stem_flops)
    else:
        total = 2.0 * shape.num_patches * dim * shape.in_chans * shape.patch_size**2
    counts = stage_token_counts(shape, schedule)
    for i, n in enumerate(counts):
        total += block_flops(n, dim, shape.mlp_ratio)
        if i in stages:
            total += prune_flops(1, shape.num_heads, n, dim, p, shape.num_orders, shape.clusters, shape.iters)
            kept = p + budget(n, p, stages[i])
            total += reconstruct_flops(n, dim, shape.reconstruct, kept, p)
    if stages and shape.use_edge and shape.image_hw[0] > 0:
        total += edge_flops(1, *shape.image_hw)
    total += 2.0 * shape.num_patches * dim * shape.num_classes
    return total


def default_stage_layers(depth: int) -> List[int]:
    """depth * {1/4, 1/2, 3/4}, kept below the last block (pruning after it saves nothing)."""
    layers = sorted({min(depth * f // 4, depth - 2) for f in (1, 2, 3)})
    return [layer for layer in layers if layer >= 0]


def schedule_for_flops(
    shape: ViTShape, reduction: float, layers: Optional[Sequence[int]] = None, tol: float = 0.02
) -> List[Tuple[int, float]]:
    """Stages at ``layers`` with one keep ratio r (each stage keeps r of its non-protected
    tokens) whose FLOPs are within ``tol`` of ``(1 - reduction)`` of the unpruned model."""
    if not (0.0 <= reduction < 1.0) or math.isnan(reduction):
        raise ValueError(f"schedule_for_flops: reduction must be in [0, 1), got {reduction}")
    layers = default_stage_layers(shape.depth) if layers is None else [int(x) for x in layers]
    if any(not 0 <= layer < shape.depth for layer in layers):
        raise ValueError(f"schedule_for_flops: layers must be in [0, {shape.depth - 1}], got {layers}")
    if reduction == 0.0:
        return [(layer, 1.0) for layer in layers]
    base = vit_flops(shape)
    target = 1.0 - reduction

    def ratio(r: float) -> float:
        return vit_flops(shape, [(layer, r) for layer in layers]) / base

    lo, hi = 1e-9, 1.0
    if ratio(lo) > target + tol:
        raise ValueError(
            f"schedule_for_flops: reduction {reduction} is out of reach with stages after layers "
            f"{layers}: at most {1.0 - ratio(lo):.3f}"
        )
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if ratio(mid) > target:
            hi = mid
        else:
            lo = mid
    best = min((lo, hi), key=lambda r: abs(ratio(r) - target))
    if abs(ratio(best) - target) > tol:
        raise ValueError(
            f"schedule_for_flops: no keep ratio reaches {target:.3f} of the FLOPs within {tol} "
            f"(closest {ratio(best):.3f}); use more tokens or other layers"
        )
    return [(layer, float(best)) for layer in layers]
