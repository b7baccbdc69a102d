"""Reference of the *fast* selection (``select(..., precision="fast")``): spec steps 2, 4, 5
batched, in float32, with fixed shapes and no host synchronisation.

This is the algorithm every fast backend implements (the C++ kernel in
csrc/select_fast_cpu.cpp, the CUDA kernel in csrc/select_fast_cuda.cu); written with
whole-batch tensor ops, it is also the portable fast path of any device (it captures in
a CUDA graph: no ``.item()``, no data-dependent shape). The rules are the spec's; what
differs from the exact path (python_ref.ops.select, float64) is only the arithmetic:

1. Importance ``u`` (B, n) in float32: dynamic weights (population std of each order over
   the non-protected tokens, two-pass), ``E = sum_q w_q S_q`` in order of ``qs``, the
   entropy mode, the edge blend ``alpha * h + (1 - alpha) * e``.
2. Rows L2-normalised in float32 (``x / max(||x||, 1e-12)``).
3. Initial centroids: the rows at ranks ``floor(r n / k)`` of ``u`` descending (ties by
   lower index).
4. ``iters`` Lloyd iterations, then a final assignment. Assignment maximises
   ``x . c - |c|^2 / 2`` (the squared distance ``|x|^2 - 2 x.c + |c|^2`` less the row's own
   constant), float32 dots, ties to the lower cluster; the update is the float32 mean of
   the members (an emptied cluster keeps its centroid).
5. Per cluster the exact 1-D 2-means of ``u`` (sorted ascending, ties by lower index) with
   float64 prefix sums of the float32 values and the exact path's tie tolerance; the
   representative is the best ``u`` (ties by lower index); salient = upper group.
6. The ``"ranked"`` or ``"proportional"`` allocation of the budget K, exactly as the exact
   path: an order by (representative, salient, plain; ``u`` descending; index).

Where it can differ from the exact path: a ``u`` within ~1e-6 of another (ranks, init,
2-means, allocation), a row within ~1e-5 of equidistant to two centroids (assignment),
and, downstream of such a flip, the trajectory of k-means. ``trace=True`` returns every
intermediate so a test can certify each difference against a float64 recomputation
(tests/certify.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .rules import TIE_RTOL, budget


@dataclass
class FastTrace:
    """The intermediates of one fast selection (n = N - P non-protected tokens)."""

    u: Tensor  # (B, n) float32 importance
    init_idx: Tensor  # (B, k) int64, the rows that seeded the centroids
    centroids: Tensor  # (B, iters + 1, k, C) float32: the initial ones, then after each update
    assign: Tensor  # (B, iters + 1, n) int64: assignment t is against centroids[:, t]
    split: Tensor  # (B, k) int64 per cluster: the salient group starts at this ascending-u rank
    rep: Tensor  # (B, k) int64 per cluster: its representative (token index in [0, n)), -1 if empty


def importance(ent: Tensor, edge: Optional[Tensor], p: int, alpha: float, entropy_mode: str) -> Tensor:
    """Steps 2 and 4 in float32 -> u (B, n) of the non-protected tokens."""
    s = ent[:, p:].float()
    mean = s.mean(dim=1, keepdim=True)
    sigma = ((s - mean) ** 2).mean(dim=1).sqrt()  # (B, Q)
    total = sigma.sum(dim=1, keepdim=True)
    w = torch.where(total > 0, sigma / torch.where(total > 0, total, torch.ones_like(total)),
                    torch.full_like(sigma, 1.0 / sigma.shape[1]))
    e = torch.zeros_like(s[..., 0])
    for j in range(s.shape[-1]):
        e = e + w[:, j : j + 1] * s[..., j]
    h = 1.0 - e if entropy_mode == "low" else e
    if edge is None:
        return h
    return alpha * h + (1.0 - alpha) * edge[:, p:].float()


def normalise(tokens: Tensor, p: int) -> Tensor:
    x = tokens[:, p:].float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def assign_step(x: Tensor, c: Tensor) -> Tensor:
    """argmax_j x . c_j - |c_j|^2 / 2 (B, n), ties to the lower j."""
    score = torch.bmm(x, c.transpose(1, 2)) - 0.5 * (c * c).sum(-1)[:, None, :]
    return score.argmax(dim=-1)


def update_step(x: Tensor, c: Tensor, assign: Tensor) -> Tensor:
    k = c.shape[1]
    onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype)  # (B, n, k)
    sums = torch.bmm(onehot.transpose(1, 2), x)
    counts = onehot.sum(dim=1)[..., None]
    return torch.where(counts > 0, sums / counts.clamp_min(1.0), c)


def _segments(assign: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Per cluster its size (B, k) and the start of its segment in a cluster-sorted order."""
    counts = torch.zeros(assign.shape[0], k, dtype=torch.int64, device=assign.device)
    counts.scatter_add_(1, assign, torch.ones_like(assign))
    return counts, torch.cumsum(counts, 1) - counts


def _stable_by(order: Tensor, key: Tensor) -> Tensor:
    """``order`` (B, n) re-sorted stably by ``key`` (B, n, per original index) ascending."""
    return order.gather(1, torch.sort(key.gather(1, order), dim=1, stable=True).indices)


def two_means(u: Tensor, assign: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Step 5.2 for every cluster at once -> split (B, k) and salient (B, n) bool.

    split[c] = the smallest s in 1..m-1 whose cost is within TIE_RTOL * m * sum(u^2) of the
    least (0 for a cluster of one; also 0, unused, for an empty one)."""
    b, n = u.shape
    counts, start = _segments(assign, k)
    order = torch.sort(u, dim=1, stable=True).indices  # u ascending, ties by lower index
    order = _stable_by(order, assign)  # grouped by cluster, u ascending inside
    cl = assign.gather(1, order)
    us = u.gather(1, order).double()
    c1, c2 = torch.cumsum(us, 1), torch.cumsum(us * us, 1)
    zero = torch.zeros(b, 1, dtype=torch.float64, device=u.device)
    e1, e2 = torch.cat([zero, c1], 1), torch.cat([zero, c2], 1)  # exclusive prefix, (B, n + 1)
    st, m = start.gather(1, cl), counts.gather(1, cl)  # per sorted element: its segment
    j = torch.arange(n, device=u.device)[None, :] - st  # rank inside the cluster = split s
    base1, base2 = e1.gather(1, st), e2.gather(1, st)
    lo1, lo2 = e1[:, :n] - base1, e2[:, :n] - base2  # the first j of the segment
    tot1, tot2 = e1.gather(1, st + m) - base1, e2.gather(1, st + m) - base2
    hi1, hi2 = tot1 - lo1, tot2 - lo2
    jf, mf = j.double(), m.double()
    valid = j >= 1
    cost = (lo2 - lo1 * lo1 / jf.clamp_min(1)) + (hi2 - hi1 * hi1 / (mf - jf).clamp_min(1))
    inf = torch.full_like(cost, float("inf"))
    cost = torch.where(valid, cost, inf)
    best = torch.full((b, k), float("inf"), dtype=torch.float64, device=u.device)
    best = best.scatter_reduce(1, cl, cost, "amin")
    tol = TIE_RTOL * mf * tot2
    tied = valid & (cost <= best.gather(1, cl) + tol)
    big = torch.full_like(j, n + 1)
    split = torch.full((b, k), n + 1, dtype=torch.int64, device=u.device)
    split = split.scatter_reduce(1, cl, torch.where(tied, j, big), "amin")
    split = torch.where(split > n, torch.zeros_like(split), split)
    sal_sorted = j >= split.gather(1, cl)
    salient = torch.zeros(b, n, dtype=torch.bool, device=u.device).scatter(1, order, sal_sorted)
    return split, salient


def representatives(u: Tensor, assign: Tensor, k: int) -> Tensor:
    """Per cluster the token of best u, ties by lower index (B, k) int64, -1 when empty."""
    b, n = u.shape
    umax = torch.full((b, k), float("-inf"), dtype=u.dtype, device=u.device).scatter_reduce(1, assign, u, "amax")
    idx = torch.arange(n, device=u.device).expand(b, n)
    cand = torch.where(u == umax.gather(1, assign), idx, torch.full_like(idx, n))
    rep = torch.full((b, k), n, dtype=torch.int64, device=u.device).scatter_reduce(1, assign, cand, "amin")
    return torch.where(rep >= n, torch.full_like(rep, -1), rep)


def proportional_quotas(counts: Tensor, budget_k: int) -> Tensor:
    """python_ref.ops.proportional_quotas for every image: (B, k) int64."""
    n = counts.sum(1, keepdim=True)
    q, rem = (budget_k * counts) // n, (budget_k * counts) % n
    left = budget_k - q.sum(1, keepdim=True)
    k = counts.shape[1]
    cidx = torch.arange(k, device=counts.device)
    ahead = (rem[:, None, :] > rem[:, :, None]) | ((rem[:, None, :] == rem[:, :, None]) & (cidx[None, :] < cidx[:, None])[None])
    rank = ahead.sum(-1)  # clusters ahead of c in the leftover order
    return q + (rank < left).long()


def select_fast(
    tokens: Tensor, ent: Tensor, edge: Optional[Tensor], keep_ratio: float, num_protected: int, alpha: float,
    entropy_mode: str, clusters: int, iters: int, allocation: str = "ranked", trace: bool = False,
):
    """The fast selection -> (keep_idx, prune_idx, cluster_id) like python_ref.select, and a
    :class:`FastTrace` as a fourth output when ``trace``."""
    b, n_tok, _ = tokens.shape
    p = num_protected
    n = n_tok - p
    k = min(clusters, n)
    kk = budget(n_tok, p, keep_ratio)
    dev = tokens.device
    u = importance(ent, edge, p, alpha, entropy_mode)
    x = normalise(tokens, p)
    desc = torch.sort(u, dim=1, descending=True, stable=True).indices
    init_idx = desc[:, [(r * n) // k for r in range(k)]]
    c = x.gather(1, init_idx[..., None].expand(-1, -1, x.shape[-1]))
    cents, assigns = [c], []
    for _ in range(iters):
        a = assign_step(x, c)
        c = update_step(x, c, a)
        assigns.append(a)
        cents.append(c)
    assign = assign_step(x, c)
    assigns.append(assign)

    split, salient = two_means(u, assign, k)
    rep = representatives(u, assign, k)
    is_rep = torch.zeros(b, n + 1, dtype=torch.bool, device=dev)
    is_rep = is_rep.scatter(1, torch.where(rep >= 0, rep, torch.full_like(rep, n)), True)[:, :n]
    cat = torch.where(is_rep, 0, torch.where(salient, 1, 2))
    order = _stable_by(desc, cat)  # (category, u descending, index)
    if allocation == "proportional":
        order = _stable_by(order, assign)  # per cluster, in that order
        counts, start = _segments(assign, k)
        cl = assign.gather(1, order)
        pos = torch.arange(n, device=dev)[None, :] - start.gather(1, cl)
        take = pos < proportional_quotas(counts, kk).gather(1, cl)
    else:
        take = (torch.arange(n, device=dev) < kk)[None, :].expand(b, n)
    keep = torch.zeros(b, n, dtype=torch.bool, device=dev).scatter(1, order, take)
    pos = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices + p  # kept first, ascending
    protected = torch.arange(p, device=dev).expand(b, p)
    keep_idx = torch.cat([protected, pos[:, :kk]], 1)
    prune_idx = pos[:, kk:].contiguous()
    cluster_id = torch.cat([torch.full((b, p), -1, dtype=torch.int32, device=dev), assign.to(torch.int32)], 1)
    if not trace:
        return keep_idx, prune_idx, cluster_id
    return keep_idx, prune_idx, cluster_id, FastTrace(
        u, init_idx, torch.stack(cents, 1), torch.stack(assigns, 1), split, rep
    )
