"""The tie-margin certificate of the fast selection (python_ref/fast.py and its kernels).

A fast backend computes the exact path's rules in float32, so where the exact (float64)
computation has a near-tie the two may decide differently, and after one different
k-means assignment the trajectories part. The certificate therefore checks each decision
of the fast run *given its own inputs to that decision* (the same centroids, the same
scores) against a float64 recomputation:

* importance: |u_fast - u_exact| <= U_TOL;
* initial centroids: the row at each rank of u_fast equals the float64 choice, or the two
  rows' u_exact differ by at most 2 U_TOL (a rank near-tie);
* each assignment t against centroids[t] (as float64): the chosen cluster's squared
  distance is within D_TOL of the least one;
* each update: centroids[t + 1] within C_TOL of the float64 mean of assignment t's members
  (the old centroid for an empty cluster);
* each 2-means split (on u_fast in float64): the chosen split's cost within the exact
  path's tie tolerance plus S_RTOL of the least cost; representatives exactly the best u;
* the allocation given (u_fast, final assignment, splits, representatives): exactly the
  exact path's rule (a loop written like python_ref.ops._select_one);
* structural invariants of the outputs, exactly.

``certify`` returns how many decisions differed from the float64 choice (each one within
its margin), so tests can also say how rare they are.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from python_ref import ops as ref
from python_ref.rules import TIE_RTOL, budget

U_TOL = 1e-5  # importance: float32 sums of a few O(1) terms
D_TOL = 2e-5  # squared distances of unit rows (float32 dots over C <= 4096 terms)
C_TOL = 1e-5  # centroid means of unit rows
S_RTOL = 1e-6  # 2-means costs: relative to sum(u^2) (float64 prefix sums in another order)


def structural(keep_idx, prune_idx, cluster_id, n_tok: int, p: int, keep_ratio: float, clusters: int,
               allocation: str) -> None:
    """Exact invariants of any selection's outputs."""
    b = keep_idx.shape[0]
    kk = budget(n_tok, p, keep_ratio)
    k = min(clusters, n_tok - p)
    assert keep_idx.shape == (b, p + kk) and prune_idx.shape == (b, n_tok - p - kk)
    assert keep_idx.dtype == prune_idx.dtype == torch.int64 and cluster_id.dtype == torch.int32
    both = torch.cat([keep_idx, prune_idx], 1).sort(1).values
    assert torch.equal(both, torch.arange(n_tok).expand(b, n_tok)), "keep and prune must partition 0..N-1"
    assert torch.equal(keep_idx, keep_idx.sort(1).values) and torch.equal(prune_idx, prune_idx.sort(1).values)
    assert torch.equal(keep_idx[:, :p], torch.arange(p).expand(b, p)), "protected tokens come first"
    assert (cluster_id[:, :p] == -1).all() and (cluster_id[:, p:] >= 0).all() and (cluster_id[:, p:] < k).all()
    for i in range(b):
        cid = cluster_id[i, p:].long()
        sizes = torch.bincount(cid, minlength=k)
        kept = torch.bincount(cluster_id[i, keep_idx[i, p:]].long(), minlength=k)
        if allocation == "proportional":
            assert kept.tolist() == ref.proportional_quotas(sizes.tolist(), kk), "per-cluster quotas"
        elif kk >= int((sizes > 0).sum()):
            assert bool((kept[sizes > 0] > 0).all()), "every cluster is represented"


def _selection_from(u, assign, split, rep, k: int, kk: int, allocation: str) -> torch.Tensor:
    """The keep mask the exact path's rule gives for these decisions (loops, as _select_one)."""
    n = u.shape[0]
    cls = torch.full((n,), 2)
    for c in range(k):
        members = (assign == c).nonzero().flatten()
        if members.numel() == 0:
            continue
        by_u = members[torch.sort(u[members], stable=True).indices]
        cls[by_u[int(split[c]):]] = 1
        cls[int(rep[c])] = 0
    desc = torch.sort(u, descending=True, stable=True).indices
    order = desc[torch.sort(cls[desc], stable=True).indices]
    keep = torch.zeros(n, dtype=torch.bool)
    if allocation == "proportional":
        quotas = ref.proportional_quotas([int((assign == c).sum()) for c in range(k)], kk)
        taken = [0] * k
        for i in order.tolist():
            c = int(assign[i])
            if taken[c] < quotas[c]:
                keep[i] = True
                taken[c] += 1
    else:
        keep[order[:kk]] = True
    return keep


def certify(tokens, ent, edge: Optional[torch.Tensor], keep_ratio: float, p: int, alpha: float, entropy_mode: str,
            clusters: int, iters: int, allocation: str, outputs, trace) -> Dict[str, int]:
    """Certify one fast selection (``outputs`` = (keep_idx, prune_idx, cluster_id), ``trace``
    a python_ref.fast.FastTrace or the kernel's list of its fields). Raises AssertionError
    naming the first decision outside its margin; returns the counts of certified near-ties."""
    keep_idx, prune_idx, cluster_id = (t.cpu() for t in outputs[:3])
    if isinstance(trace, (list, tuple)):
        u_f, init_idx, cents, assigns, split, rep = (t.cpu() for t in trace)
    else:
        u_f, init_idx, cents, assigns, split, rep = (
            t.cpu() for t in (trace.u, trace.init_idx, trace.centroids, trace.assign, trace.split, trace.rep))
    tokens, ent = tokens.cpu(), ent.cpu()
    edge = None if edge is None else edge.cpu()
    b, n_tok, _ = tokens.shape
    n, k, kk = n_tok - p, min(clusters, n_tok - p), budget(n_tok, p, keep_ratio)
    structural(keep_idx, prune_idx, cluster_id, n_tok, p, keep_ratio, clusters, allocation)
    stats = dict(rank=0, assign=0, split=0)

    u64 = ref.fused_importance(ent, edge, p, alpha, entropy_mode)[:, p:]
    du = (u_f.double() - u64).abs().max().item() if n else 0.0
    assert du <= U_TOL, f"importance: |u_fast - u_exact| = {du:.3g} > {U_TOL}"
    x64 = tokens[:, p:].double()
    x64 = x64 / x64.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    for i in range(b):
        desc = torch.sort(u64[i], descending=True, stable=True).indices
        for r in range(k):
            i_f, i_e = int(init_idx[i, r]), int(desc[(r * n) // k])
            if i_f != i_e:
                gap = abs(float(u64[i, i_f] - u64[i, i_e]))
                assert gap <= 2 * U_TOL, f"init rank {r}: row {i_f} instead of {i_e}, u gap {gap:.3g}"
                stats["rank"] += 1
        dc = (cents[i, 0].double() - x64[i, init_idx[i]]).abs().max().item()
        assert dc <= C_TOL, f"initial centroids are not the normalised rows (off by {dc:.3g})"
        for t in range(iters + 1):
            c = cents[i, t].double()
            d = ((x64[i, :, None, :] - c[None]) ** 2).sum(-1)  # (n, k)
            a = assigns[i, t]
            gap = (d.gather(1, a[:, None])[:, 0] - d.min(1).values).max().item()
            assert gap <= D_TOL, f"image {i} assignment {t}: a chosen cluster is {gap:.3g} farther than the nearest"
            stats["assign"] += int((a != d.argmin(1)).sum())
            if t < iters:
                want = c.clone()
                for j in range(k):
                    m = a == j
                    if bool(m.any()):
                        want[j] = x64[i, m].mean(0)
                dc = (cents[i, t + 1].double() - want).abs().max().item()
                assert dc <= C_TOL, f"image {i} update {t}: centroids off the float64 means by {dc:.3g}"
        final = assigns[i, iters]
        assert torch.equal(final.to(torch.int32), cluster_id[i, p:]), "cluster_id is the final assignment"
        u = u_f[i].double()
        for j in range(k):
            members = (final == j).nonzero().flatten()
            m = members.numel()
            if m == 0:
                continue
            by_u = members[torch.sort(u_f[i, members], stable=True).indices]
            best_u = u_f[i, members].max()
            assert int(rep[i, j]) == int(members[u_f[i, members] == best_u].min()), f"cluster {j}: representative"
            s_f = int(split[i, j])
            if m == 1:
                assert s_f == 0, f"cluster {j} of one token: split {s_f}"
                continue
            us = u[by_u]
            s1, s2 = torch.cumsum(us, 0), torch.cumsum(us * us, 0)
            lo = torch.arange(1, m, dtype=torch.float64)
            cost = (s2[:-1] - s1[:-1] ** 2 / lo) + ((s2[-1] - s2[:-1]) - (s1[-1] - s1[:-1]) ** 2 / (m - lo))
            margin = (TIE_RTOL * m + S_RTOL) * float(s2[-1])
            assert 1 <= s_f < m and float(cost[s_f - 1]) <= float(cost.min()) + margin, (
                f"image {i} cluster {j}: split {s_f} costs {float(cost[s_f - 1]) - float(cost.min()):.3g} above the least")
            stats["split"] += int(s_f != ref.two_means_split(us))
        keep = _selection_from(u_f[i], final, split[i], rep[i], k, kk, allocation)
        want = torch.cat([torch.arange(p), keep.nonzero().flatten() + p])
        assert torch.equal(keep_idx[i], want), f"image {i}: the allocation does not follow the rule"
    return stats


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of |A & B| / |A | B| of two (B, K) index sets."""
    vals = []
    for x, y in zip(a.tolist(), b.tolist()):
        sx, sy = set(x), set(y)
        vals.append(len(sx & sy) / max(1, len(sx | sy)))
    return sum(vals) / max(1, len(vals))
