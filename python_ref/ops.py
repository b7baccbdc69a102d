"""Pure-PyTorch reference of every ``torch.ops.lvtp`` op (see ../shared/lvtp-spec.md).

Written for clarity, not speed. Every function has the signature of its op and is the
numerical reference the kernels are tested against. No input validation happens here:
the op registry in ``lvtp_kernels`` validates before calling these functions.

Precision: every reduction runs in float32 (float64 when the input is float64).
Selection (steps 2, 4, 5 inside ``select``) runs in float64, so that every backend
agrees on its discrete outputs.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .rules import TIE_RTOL, budget  # noqa: F401 (part of this module's API)

__all__ = [
    "tsallis_entropy",
    "attention_entropy",
    "patch_edge_energy",
    "kmeans",
    "select",
    "prune",
    "gather_tokens",
    "scatter_tokens",
    "dynamic_weights",
    "fused_importance",
    "budget",
    "two_means_split",
]

LUMA = (0.299, 0.587, 0.114)
DEFAULT_QS = (0.5, 1.0, 2.0, 3.0)  # the spec's default orders
NEAR_ONE = 0.25  # tsallis_entropy: orders closer than this to 1 use the expm1 form
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- step 1
def tsallis_max(n: int, q: float) -> float:
    """Tsallis (or Shannon for q == 1) entropy of the uniform row of length ``n``,
    (1 - n^(1-q)) / (q - 1)."""
    if q == 1.0:
        return math.log(n)
    return -math.expm1((1.0 - q) * math.log(n)) / (q - 1.0)


def tsallis_entropy(attn: Tensor, qs: Sequence[float]) -> Tensor:
    """(B, H, N, N) attention probabilities -> (B, N, len(qs)) head-mean normalised entropy.

    For q != 1 the (q - 1) factors of S_q and S_q_max cancel:
    S_q / S_q_max = (1 - sum p^q) / (1 - N^(1-q)), with 1 - N^(1-q) = -expm1((1 - q) ln N).
    For orders near 1 (|q - 1| < NEAR_ONE) the literal 1 - sum p^q cancels
    catastrophically in fp32; there it is evaluated as the identical
    (1 - sum p) - sum p * expm1((q - 1) ln p), with the row deficit 1 - sum p in fp64.
    """
    p = attn.to(_acc_dtype(attn))
    n = p.shape[-1]
    per_order = []
    for q in qs:
        q = float(q)
        if q == 1.0:
            s, s_max = -torch.xlogy(p, p).sum(-1), math.log(n)  # 0 ln 0 = 0
        else:
            s_max = -math.expm1((1.0 - q) * math.log(n))
            if abs(q - 1.0) >= NEAR_ONE:
                s = 1.0 - p.pow(q).sum(-1)  # 0^q = 0 for q > 0
            else:
                deficit = (1.0 - p.sum(-1, dtype=torch.float64)).to(p.dtype)  # ~0 for a softmax row
                t = torch.where(p > 0, p * torch.expm1((q - 1.0) * torch.log(p)), torch.zeros_like(p))
                s = deficit - t.sum(-1)  # = 1 - sum p^q; p = 0 contributes 0
        s_hat = s / s_max if s_max != 0.0 else torch.zeros_like(s)  # 0/0 := 0 when N == 1
        per_order.append(s_hat.mean(dim=1))  # head mean -> (B, N)
    return torch.stack(per_order, dim=-1).to(torch.float32)


def attention_entropy(
    q: Tensor, k: Tensor, v: Tensor, qs: Sequence[float], scale: float
) -> Tuple[Tensor, Tensor]:
    """Softmax attention output (B, H, N, Dv) in q's dtype plus the (B, N, len(qs)) entropies.

    The reference materialises the N x N map; the fused kernels never do.
    """
    acc = _acc_dtype(q)
    logits = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    p = torch.softmax(logits, dim=-1)
    out = torch.matmul(p, v.to(acc)).to(q.dtype)
    return out, tsallis_entropy(p, qs)


# --------------------------------------------------------------------------- step 3
def patch_edge_energy(image: Tensor, patch: int) -> Tensor:
    """(B, 3, H, W) image -> (B, h*w) Sobel edge energy per patch, normalised per image."""
    img = image.to(_acc_dtype(image))
    b, _, height, width = img.shape
    y = LUMA[0] * img[:, 0] + LUMA[1] * img[:, 1] + LUMA[2] * img[:, 2]  # (B, H, W)
    y = torch.nn.functional.pad(y[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]  # (B, H+2, W+2)
    # The 3x3 Sobel cross-correlation (Gx = SOBEL_X, Gy = Gx^T) written as differences of
    # shifted views, not conv2d: conv2d's CPU algorithms (e.g. Winograd) are not exact on a
    # flat region, and the ~1e-8 they leave there became ~1e-2 after the normalisation by
    # max e + 1e-6 (a 1x1 image gave 0.0147 instead of 0; found by tests/test_fuzz.py).
    # Differences of equal values are exactly 0; the grouping is the Triton kernel's.
    top, mid, bot = y[:, :-2], y[:, 1:-1], y[:, 2:]
    gx = (top[..., 2:] - top[..., :-2]) + 2.0 * (mid[..., 2:] - mid[..., :-2]) + (bot[..., 2:] - bot[..., :-2])
    gy = (bot[..., :-2] + 2.0 * bot[..., 1:-1] + bot[..., 2:]) - (top[..., :-2] + 2.0 * top[..., 1:-1] + top[..., 2:])
    mag = torch.hypot(gx, gy)  # sqrt(Gx^2 + Gy^2) without overflow, (B, H, W)
    h, w = height // patch, width // patch
    mag = mag[:, : h * patch, : w * patch]  # pixels past the grid are ignored
    e = mag.reshape(b, h, patch, w, patch).mean(dim=(2, 4)).reshape(b, h * w)
    e = e / (e.amax(dim=1, keepdim=True) + 1e-6)
    return e.to(torch.float32)


# --------------------------------------------------------------------------- step 5.1
def _sq_distances(x: Tensor, c: Tensor) -> Tensor:
    """Squared Euclidean distances (B, n, k), computed directly as sum_d (x - c)^2."""
    cols = [((x - c[:, j : j + 1, :]) ** 2).sum(-1) for j in range(c.shape[1])]
    return torch.stack(cols, dim=-1)


def kmeans(x: Tensor, init: Tensor, iters: int) -> Tuple[Tensor, Tensor]:
    """Batched Lloyd k-means: x (B, n, d), init (B, k, d) -> centroids (B, k, d), assign (B, n) int64.

    Centroids are float32 (float64 when x is float64).

    One iteration is an assignment (ties to the lower cluster index: ``argmin`` returns
    the first minimum) then a centroid update (an empty cluster keeps its centroid).
    After the last iteration a final assignment against the final centroids is returned.
    """
    acc = _acc_dtype(x)
    x = x.to(acc)
    c = init.to(acc).clone(memory_format=torch.contiguous_format)
    k = c.shape[1]
    for _ in range(iters):
        assign = _sq_distances(x, c).argmin(dim=-1)
        for j in range(k):
            member = (assign == j).to(acc)[..., None]  # (B, n, 1)
            count = member.sum(dim=1)  # (B, 1)
            total = (x * member).sum(dim=1)  # (B, d)
            c[:, j] = torch.where(count > 0, total / count.clamp_min(1), c[:, j])
    assign = _sq_distances(x, c).argmin(dim=-1)
    return c, assign


# --------------------------------------------------------------------------- steps 2, 4
# Selection (steps 2, 4, 5) computes in float64: its outputs are discrete (indices and
# cluster ids), and float64 makes every backend agree on them except at exact ties,
# which the spec breaks by index.
def dynamic_weights(ent: Tensor, num_protected: int) -> Tensor:
    """Step 2: w_q = sigma_q / sum sigma over the non-protected tokens, (B, Q) float64."""
    s = ent[:, num_protected:].to(torch.float64)
    mean = s.mean(dim=1, keepdim=True)
    sigma = ((s - mean) ** 2).mean(dim=1).sqrt()  # population standard deviation, (B, Q)
    total = sigma.sum(dim=1, keepdim=True)
    uniform = torch.full_like(sigma, 1.0 / sigma.shape[1])
    return torch.where(total > 0, sigma / torch.where(total > 0, total, 1.0), uniform)


def fused_importance(
    ent: Tensor, edge: Optional[Tensor], num_protected: int, alpha: float, entropy_mode: str
) -> Tensor:
    """Steps 2 and 4: u(i) for every token, (B, N) float64 (values at protected positions unused)."""
    w = dynamic_weights(ent, num_protected)
    ent = ent.to(torch.float64)
    e = torch.zeros_like(ent[..., 0])
    for j in range(ent.shape[-1]):  # E(i) = sum_q w_q S_q(i), accumulated in order of qs
        e = e + w[:, j : j + 1] * ent[..., j]
    h = 1.0 - e if entropy_mode == "low" else e
    if edge is None:
        return h
    return alpha * h + (1.0 - alpha) * edge.to(torch.float64)


# --------------------------------------------------------------------------- step 5.2
def two_means_split(u_sorted: Tensor) -> int:
    """Exact 1-D 2-means of values sorted ascending.

    Scans every split s = 1..m-1 (lower group u[:s], upper group u[s:]) for the least
    total within-group sum of squares, ties to the smaller s, and returns s: the index
    where the upper (salient) group starts. A single value is salient: returns 0.

    The sums of squares come from float64 prefix sums, SSE = sum(u^2) - sum(u)^2 / count,
    whose rounding error is below m * eps * sum(u^2). Costs within
    ``TIE_RTOL * m * sum(u^2)`` of the least one count as tied (1e-12 is ~4500 eps), so
    splits that are exactly tied (a constant cluster, symmetric values) go to the
    smaller s whatever the summation order of the backend.
    """
    m = u_sorted.shape[0]
    if m == 1:
        return 0
    u = u_sorted.to(torch.float64)
    s1 = torch.cumsum(u, 0)
    s2 = torch.cumsum(u * u, 0)
    n_lo = torch.arange(1, m, dtype=torch.float64, device=u.device)  # s = 1..m-1
    lo1, lo2 = s1[:-1], s2[:-1]
    hi1, hi2 = s1[-1] - lo1, s2[-1] - lo2
    cost = (lo2 - lo1 * lo1 / n_lo) + (hi2 - hi1 * hi1 / (m - n_lo))
    tied = cost <= cost.min() + TIE_RTOL * m * float(s2[-1])
    return int(tied.nonzero()[0]) + 1  # the smallest tied split


def _order_desc(values: Tensor, index: Tensor) -> Tensor:
    """``index`` (ascending) reordered by descending ``values``, ties by lower index."""
    return index[torch.sort(values, descending=True, stable=True).indices]


ALLOCATIONS = ("ranked", "proportional")


def proportional_quotas(sizes: Sequence[int], budget_k: int) -> List[int]:
    """Split a budget of K tokens over clusters in proportion to their sizes, exactly:
    q_c = floor(K m_c / m), and the K - sum q_c leftover tokens go to the clusters with the
    largest remainders (K m_c mod m), ties to the lower cluster index. Integer arithmetic."""
    m = sum(sizes)
    quotas = [(budget_k * s) // m for s in sizes]
    rems = [(budget_k * s) % m for s in sizes]
    left = budget_k - sum(quotas)
    for c in sorted(range(len(sizes)), key=lambda c: (-rems[c], c))[:left]:
        quotas[c] += 1
    return quotas


def _select_one(
    feats: Tensor, u: Tensor, n_tokens: int, num_protected: int, keep_ratio: float, clusters: int, iters: int,
    allocation: str = "ranked",
) -> Tuple[Tensor, Tensor]:
    """Step 5 for one image: feats (n, C) and u (n,) of the non-protected tokens, float64.

    Returns the keep mask (n,) and the cluster of each token (n,).

    ``allocation="ranked"`` is the spec's step 5.3 (one ranking over all clusters:
    representatives, then salient, then plain). ``"proportional"`` gives every semantic
    cluster a share of the budget proportional to its size (:func:`proportional_quotas`)
    and fills it in the spec's order within the cluster (representative, salient, plain,
    each by descending u).
    """
    n = feats.shape[0]
    device = feats.device
    k = min(clusters, n)
    x = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # 5.1 deterministic init: tokens at evenly spaced ranks of u (descending, ties by lower index)
    ranked = _order_desc(u, torch.arange(n, device=device))
    init = x[ranked[[(r * n) // k for r in range(k)]]]
    _, assign = kmeans(x[None], init[None], iters)
    assign = assign[0]

    # 5.2 per cluster: representative (best u) and the 2-means salient/plain split
    reps, salient, plain = [], [], []
    arange = torch.arange(n, device=device)
    for c in range(k):
        members = arange[assign == c]  # ascending token index
        if members.numel() == 0:
            continue
        reps.append(_order_desc(u[members], members)[0])
        by_u_asc = members[torch.sort(u[members], stable=True).indices]  # ties by lower index
        split = two_means_split(u[by_u_asc])
        salient.append(by_u_asc[split:])
        plain.append(by_u_asc[:split])

    if allocation == "proportional":
        keep = torch.zeros(n, dtype=torch.bool, device=device)
        members_of = [arange[assign == c] for c in range(k)]
        quotas = proportional_quotas([int(mc.numel()) for mc in members_of], budget(n_tokens, num_protected, keep_ratio))
        j = 0
        for c in range(k):
            if members_of[c].numel() == 0:
                continue
            rep = reps[j]
            sal_c, pla_c = salient[j], plain[j]
            j += 1
            sal_c, pla_c = sal_c[sal_c != rep].sort().values, pla_c[pla_c != rep].sort().values
            order_c = torch.cat([rep[None], _order_desc(u[sal_c], sal_c), _order_desc(u[pla_c], pla_c)])
            keep[order_c[: quotas[c]]] = True
        return keep, assign

    # 5.3 budget: representatives (best first), then salient, then plain, by descending u
    reps_t = torch.stack(reps).sort().values
    reps_t = _order_desc(u[reps_t], reps_t)
    is_rep = torch.zeros(n, dtype=torch.bool, device=device)
    is_rep[reps_t] = True
    sal = torch.cat(salient).sort().values
    sal = sal[~is_rep[sal]]
    pla = torch.cat(plain).sort().values
    pla = pla[~is_rep[pla]]
    order = torch.cat([reps_t, _order_desc(u[sal], sal), _order_desc(u[pla], pla)])
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    keep[order[: budget(n_tokens, num_protected, keep_ratio)]] = True
    return keep, assign


def select(
    tokens: Tensor,
    ent: Tensor,
    edge: Optional[Tensor],
    keep_ratio: float,
    num_protected: int,
    alpha: float,
    entropy_mode: str,
    clusters: int,
    iters: int,
    allocation: str = "ranked",
    precision: str = "exact",
) -> Tuple[Tensor, Tensor, Tensor]:
    """Steps 2, 4, 5 -> keep_idx (B, P+K) int64, prune_idx (B, N-P-K) int64, cluster_id (B, N) int32.

    ``allocation``: "ranked" (the spec's step 5.3) or "proportional" (per-cluster shares,
    see :func:`_select_one`). ``precision``: "exact" (this function, float64) or "fast"
    (python_ref.fast.select_fast: float32, batched)."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"select: allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if precision == "fast":
        from .fast import select_fast

        return select_fast(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters,
                           allocation)
    if precision != "exact":
        raise ValueError(f"select: precision must be 'exact' or 'fast', got {precision!r}")
    b, n_tokens, _ = tokens.shape
    p = num_protected
    u = fused_importance(ent, edge, p, alpha, entropy_mode)
    feats = tokens[:, p:].to(torch.float64)
    keep_rows, prune_rows, cid_rows = [], [], []
    protected = torch.arange(p, device=tokens.device)
    arange = torch.arange(n_tokens - p, device=tokens.device)
    for i in range(b):
        keep, assign = _select_one(feats[i], u[i, p:], n_tokens, p, keep_ratio, clusters, iters, allocation)
        keep_rows.append(torch.cat([protected, arange[keep] + p]))
        prune_rows.append(arange[~keep] + p)
        cid = torch.full((n_tokens,), -1, dtype=torch.int32, device=tokens.device)
        cid[p:] = assign.to(torch.int32)
        cid_rows.append(cid)
    return torch.stack(keep_rows), torch.stack(prune_rows), torch.stack(cid_rows)


# --------------------------------------------------------------------------- steps 1-5 + gather
def prune(
    tokens: Tensor,
    attn: Tensor,
    edge: Optional[Tensor] = None,
    keep_ratio: float = 0.7,
    num_protected: int = 1,
    qs: List[float] = DEFAULT_QS,
    alpha: float = 0.5,
    entropy_mode: str = "low",
    clusters: int = 8,
    iters: int = 10,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The user-facing op: entropy, selection and the gather of the kept tokens."""
    ent = tsallis_entropy(attn, qs)
    keep_idx, prune_idx, cluster_id = select(
        tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters
    )
    return gather_tokens(tokens, keep_idx), keep_idx, prune_idx, cluster_id


# --------------------------------------------------------------------------- gather / scatter
def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, N, C), idx (B, K) -> (B, K, C) with out[b, j] = x[b, idx[b, j]]."""
    return torch.stack([x[i].index_select(0, idx[i].long()) for i in range(x.shape[0])])


def scatter_tokens(full: Tensor, x: Tensor, idx: Tensor) -> Tensor:
    """Out-of-place: a copy of full (B, N, C) with out[b, idx[b, j]] = x[b, j]."""
    out = full.clone(memory_format=torch.contiguous_format)
    for i in range(full.shape[0]):
        out[i].index_copy_(0, idx[i].long(), x[i].to(full.dtype))
    return out
