"""The one input validator of every ``torch.ops.lvtp`` op (spec: "The op contract").

Each ``check_<op>`` takes the op's arguments in schema order plus ``values``: with
``values=False`` only what a fake (meta) tensor can show is checked (ranks, shapes,
dtypes, devices, scalars, requires_grad), so the same function serves the fake kernels
under ``torch.compile``; with ``values=True`` the data is checked too (NaN/Inf,
attention rows that are not probability distributions, index ranges and duplicates).

Every error is a ``ValueError`` whose message starts with ``lvtp.<op>:`` and names the
argument and the offending value.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)
ENTROPY_MODES = ("low", "high")
# |row sum - 1| allowed for attention probabilities, by dtype (rounding of a softmax
# stored in that dtype stays far below these).
ROW_SUM_TOL = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _fail(op: str, msg: str) -> None:
    raise ValueError(f"lvtp.{op}: {msg}")


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def tensor(op: str, name: str, t, ndim: int, layout: str, dtypes=FLOAT_DTYPES, nonempty: bool = True) -> Tensor:
    """A tensor of rank ``ndim`` and an allowed dtype that does not require grad, with a
    batch of at least one and (``nonempty``) no other empty dimension."""
    if not isinstance(t, Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        _fail(op, f"{name} must be a {ndim}-D tensor {layout}, got shape {_shape(t)}")
    if t.dtype not in dtypes:
        kinds = "a floating" if dtypes is FLOAT_DTYPES else "an integer"
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        _fail(op, f"{name} must be {kinds} tensor ({allowed}), got dtype {t.dtype}")
    if t.shape[0] == 0:
        _fail(op, f"{name} has an empty batch (shape {_shape(t)}); B must be >= 1")
    if nonempty and any(size == 0 for size in t.shape[1:]):
        _fail(op, f"{name} has an empty dimension: shape {_shape(t)} {layout}")
    if t.requires_grad:
        _fail(op, f"{name} requires grad; lvtp ops are inference only (use torch.no_grad() or .detach())")
    return t


def same_device(op: str, **tensors: Optional[Tensor]) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            _fail(op, f"{name} is on {t.device} but {first_name} is on {first.device}; all tensors must share a device")


def dim_equal(op: str, what: str, a: int, b: int, a_name: str, b_name: str) -> None:
    if a != b:
        _fail(op, f"{what} mismatch: {a_name} has {a}, {b_name} has {b}")


def _report_non_finite(op: str, name: str, t: Tensor) -> None:
    bad = (~torch.isfinite(t)).nonzero()
    if bad.numel():
        where = tuple(bad[0].tolist())
        _fail(op, f"{name} contains NaN or Inf (first at index {where}: {t[where].item()})")


def finite(op: str, name: str, t: Tensor) -> None:
    # A finite fp32 sum proves every element finite (NaN and Inf propagate); only when
    # the sum is not finite (a NaN/Inf, or an overflow) is the exact element check run.
    if t.numel() and not bool(torch.isfinite(t.sum(dtype=torch.float32))):
        _report_non_finite(op, name, t)


def probabilities(op: str, name: str, attn: Tensor) -> None:
    """Rows of ``attn`` must be finite, non-negative and sum to 1 (within ROW_SUM_TOL)."""
    if attn.numel() == 0:
        return
    sums = attn.sum(dim=-1, dtype=torch.float32)
    if not bool(torch.isfinite(sums).all()):  # finite row sums prove finite rows
        _report_non_finite(op, name, attn)
    if bool(attn.amin() < 0):
        bad = (attn < 0).nonzero()[0].tolist()
        _fail(op, f"{name} has a negative probability at index {tuple(bad)}: {attn[tuple(bad)].item()}")
    err = (sums - 1.0).abs()
    tol = ROW_SUM_TOL[attn.dtype]
    if bool((err > tol).any()):
        bad = (err > tol).nonzero()[0].tolist()
        _fail(
            op,
            f"{name} rows must be softmax probabilities summing to 1 (tolerance {tol}); "
            f"row {tuple(bad)} sums to {sums[tuple(bad)].item():.6g}",
        )


def qs_list(op: str, qs: Sequence[float]) -> None:
    if len(qs) == 0:
        _fail(op, "qs must be a non-empty list of positive orders, got []")
    for q in qs:
        if not (math.isfinite(q) and q > 0):
            _fail(op, f"qs must hold positive finite orders, got {list(qs)} (bad order {q})")


def positive_int(op: str, name: str, v: int, minimum: int = 1) -> None:
    if v < minimum:
        _fail(op, f"{name} must be >= {minimum}, got {v}")


def keep_ratio(op: str, v: float) -> None:
    if not (v > 0.0 and v <= 1.0):  # also rejects NaN
        _fail(op, f"keep_ratio must be in (0, 1], got {v}")


def alpha_value(op: str, alpha: float) -> None:
    if not (0.0 <= alpha <= 1.0):  # also rejects NaN
        _fail(op, f"alpha must be in [0, 1], got {alpha}")


def entropy_mode_value(op: str, mode: str) -> None:
    if mode not in ENTROPY_MODES:
        _fail(op, f"entropy_mode must be one of {ENTROPY_MODES}, got {mode!r}")


def num_protected(op: str, p: int, n: int) -> None:
    if not 0 <= p <= n - 1:
        _fail(op, f"num_protected must be in [0, N-1] = [0, {n - 1}], got {p}")


def indices(op: str, name: str, idx: Tensor, n: int, unique: bool, values: bool) -> None:
    if not values or idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        _fail(op, f"{name} holds index {bad}, out of range [0, {n - 1}]")
    if unique:
        srt = idx.sort(dim=-1).values
        dup = srt[..., 1:] == srt[..., :-1]
        if bool(dup.any()):
            row, col = dup.nonzero()[0].tolist()
            _fail(op, f"{name} row {row} holds index {int(srt[row, col])} twice; scatter indices must be unique")


# --------------------------------------------------------------------------- per op
def check_tsallis_entropy(attn, qs, values: bool) -> None:
    op = "tsallis_entropy"
    tensor(op, "attn", attn, 4, "(B, H, N, N)")
    dim_equal(op, "attn rows and columns", attn.shape[2], attn.shape[3], "dim 2", "dim 3")
    qs_list(op, qs)
    if values:
        probabilities(op, "attn", attn)


def check_attention_entropy(q, k, v, qs, scale, values: bool) -> None:
    op = "attention_entropy"
    for name, t in (("q", q), ("k", k), ("v", v)):
        tensor(op, name, t, 4, "(B, H, N, D)")
    same_device(op, q=q, k=k, v=v)
    if k.shape[:3] != q.shape[:3] or v.shape[:3] != q.shape[:3]:
        _fail(op, f"q, k, v must share (B, H, N); got q {_shape(q)}, k {_shape(k)}, v {_shape(v)}")
    dim_equal(op, "head dim", q.shape[3], k.shape[3], "q", "k")
    if not (q.dtype == k.dtype == v.dtype):
        _fail(op, f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    qs_list(op, qs)
    if not (math.isfinite(scale) and scale > 0):
        _fail(op, f"scale must be positive and finite, got {scale}")
    if values:
        for name, t in (("q", q), ("k", k), ("v", v)):
            finite(op, name, t)


def check_patch_edge_energy(image, patch, values: bool) -> None:
    op = "patch_edge_energy"
    tensor(op, "image", image, 4, "(B, 3, H, W)")
    if image.shape[1] != 3:
        _fail(op, f"image must have 3 channels (RGB) in dim 1, got shape {_shape(image)}")
    positive_int(op, "patch", patch)
    if image.shape[2] < patch or image.shape[3] < patch:
        _fail(op, f"image ({image.shape[2]}x{image.shape[3]}) is smaller than one patch of {patch}")
    if values:
        finite(op, "image", image)


def check_kmeans(x, init, iters, values: bool) -> None:
    op = "kmeans"
    tensor(op, "x", x, 3, "(B, n, d)")
    tensor(op, "init", init, 3, "(B, k, d)")
    same_device(op, x=x, init=init)
    dim_equal(op, "batch", x.shape[0], init.shape[0], "x", "init")
    dim_equal(op, "feature dim d", x.shape[2], init.shape[2], "x", "init")
    if x.shape[1] < 1:
        _fail(op, f"x must hold at least one point, got shape {_shape(x)}")
    if init.shape[1] < 1 or init.shape[1] > x.shape[1]:
        _fail(op, f"init must hold k in [1, n={x.shape[1]}] centroids, got k={init.shape[1]}")
    positive_int(op, "iters", iters)
    if values:
        finite(op, "x", x)
        finite(op, "init", init)


def _check_select_scalars(op: str, n: int, keep_ratio_, num_protected_, alpha, entropy_mode, clusters, iters) -> None:
    keep_ratio(op, keep_ratio_)
    num_protected(op, num_protected_, n)
    alpha_value(op, alpha)
    entropy_mode_value(op, entropy_mode)
    positive_int(op, "clusters", clusters)
    positive_int(op, "iters", iters)


def _check_edge(op: str, edge, tokens, values: bool) -> None:
    if edge is None:
        return
    tensor(op, "edge", edge, 2, "(B, N)")
    if _shape(edge) != _shape(tokens)[:2]:
        _fail(op, f"edge must be (B, N) = {_shape(tokens)[:2]} like tokens, got {_shape(edge)}")
    if values:
        finite(op, "edge", edge)


def check_select(tokens, ent, edge, keep_ratio_, num_protected_, alpha, entropy_mode, clusters, iters, values: bool,
                 op: str = "select") -> None:
    tensor(op, "tokens", tokens, 3, "(B, N, C)")
    tensor(op, "ent", ent, 3, "(B, N, Q)")
    same_device(op, tokens=tokens, ent=ent, edge=edge)
    if ent.shape[:2] != tokens.shape[:2]:
        _fail(op, f"ent must be (B, N, Q) with (B, N) = {_shape(tokens)[:2]} like tokens, got {_shape(ent)}")
    _check_edge(op, edge, tokens, values)
    _check_select_scalars(op, tokens.shape[1], keep_ratio_, num_protected_, alpha, entropy_mode, clusters, iters)
    if values:
        finite(op, "tokens", tokens)
        finite(op, "ent", ent)


ALLOCATIONS = ("ranked", "proportional")


def check_select_tokens(tokens, ent, edge, keep_ratio_, num_protected_, alpha, entropy_mode, clusters, iters,
                        allocation, values: bool) -> None:
    check_select(tokens, ent, edge, keep_ratio_, num_protected_, alpha, entropy_mode, clusters, iters, values,
                 op="select_tokens")
    if allocation not in ALLOCATIONS:
        _fail("select_tokens", f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")


def check_prune(tokens, attn, edge, keep_ratio_, num_protected_, qs, alpha, entropy_mode, clusters, iters, values: bool) -> None:
    op = "prune"
    tensor(op, "tokens", tokens, 3, "(B, N, C)")
    tensor(op, "attn", attn, 4, "(B, H, N, N)")
    same_device(op, tokens=tokens, attn=attn, edge=edge)
    dim_equal(op, "batch", tokens.shape[0], attn.shape[0], "tokens", "attn")
    dim_equal(op, "tokens N", tokens.shape[1], attn.shape[2], "tokens", "attn dim 2")
    dim_equal(op, "attn rows and columns", attn.shape[2], attn.shape[3], "dim 2", "dim 3")
    _check_edge(op, edge, tokens, values)
    qs_list(op, qs)
    _check_select_scalars(op, tokens.shape[1], keep_ratio_, num_protected_, alpha, entropy_mode, clusters, iters)
    if values:
        finite(op, "tokens", tokens)
        probabilities(op, "attn", attn)


def check_gather_tokens(x, idx, values: bool) -> None:
    op = "gather_tokens"
    tensor(op, "x", x, 3, "(B, N, C)", nonempty=False)
    tensor(op, "idx", idx, 2, "(B, K)", INDEX_DTYPES, nonempty=False)
    same_device(op, x=x, idx=idx)
    dim_equal(op, "batch", x.shape[0], idx.shape[0], "x", "idx")
    indices(op, "idx", idx, x.shape[1], unique=False, values=values)
    if values:
        finite(op, "x", x)


def check_scatter_tokens(full, x, idx, values: bool) -> None:
    op = "scatter_tokens"
    tensor(op, "full", full, 3, "(B, N, C)", nonempty=False)
    tensor(op, "x", x, 3, "(B, K, C)", nonempty=False)
    tensor(op, "idx", idx, 2, "(B, K)", INDEX_DTYPES, nonempty=False)
    same_device(op, full=full, x=x, idx=idx)
    if x.dtype != full.dtype:
        _fail(op, f"x dtype {x.dtype} must match full dtype {full.dtype}")
    dim_equal(op, "batch", full.shape[0], x.shape[0], "full", "x")
    dim_equal(op, "batch", full.shape[0], idx.shape[0], "full", "idx")
    dim_equal(op, "channels C", full.shape[2], x.shape[2], "full", "x")
    dim_equal(op, "K", x.shape[1], idx.shape[1], "x", "idx")
    if idx.shape[1] > full.shape[1]:
        _fail(op, f"idx holds {idx.shape[1]} indices per row but full has only N={full.shape[1]} tokens")
    indices(op, "idx", idx, full.shape[1], unique=True, values=values)
    if values:
        finite(op, "full", full)
        finite(op, "x", x)


def check_reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode, values: bool) -> None:
    op = "reconstruct_stage"
    tensor(op, "full", full, 3, "(B, K, C)", nonempty=False)
    tensor(op, "x_stage", x_stage, 3, "(B, N, C)", nonempty=False)
    tensor(op, "keep_idx", keep_idx, 2, "(B, K)", INDEX_DTYPES, nonempty=False)
    tensor(op, "prune_idx", prune_idx, 2, "(B, N-K)", INDEX_DTYPES, nonempty=False)
    tensor(op, "cluster_id", cluster_id, 2, "(B, N)", INDEX_DTYPES, nonempty=False)
    same_device(op, full=full, x_stage=x_stage, keep_idx=keep_idx, prune_idx=prune_idx, cluster_id=cluster_id)
    b, k, c = full.shape
    n = x_stage.shape[1]
    for name, t in (("x_stage", x_stage), ("keep_idx", keep_idx), ("prune_idx", prune_idx), ("cluster_id", cluster_id)):
        dim_equal(op, "batch", b, t.shape[0], "full", name)
    dim_equal(op, "channels C", c, x_stage.shape[2], "full", "x_stage")
    dim_equal(op, "K", k, keep_idx.shape[1], "full", "keep_idx")
    dim_equal(op, "N", n, cluster_id.shape[1], "x_stage", "cluster_id")
    if k + prune_idx.shape[1] != n:
        _fail(op, f"keep_idx ({k}) and prune_idx ({prune_idx.shape[1]}) must partition the N={n} tokens of x_stage")
    positive_int(op, "clusters", clusters)
    if mode not in ("residual", "frozen", "nearest"):
        _fail(op, f"mode must be one of ('residual', 'frozen', 'nearest'), got {mode!r}")
    if not values:
        return
    if n:
        both = torch.cat([keep_idx.long(), prune_idx.long()], dim=1)
        indices(op, "keep_idx and prune_idx", both, n, unique=True, values=True)
        lo, hi = int(cluster_id.min()), int(cluster_id.max())
        if lo < -1 or hi >= clusters:
            _fail(op, f"cluster_id must lie in [-1, clusters) = [-1, {clusters}), got values in [{lo}, {hi}]")
    finite(op, "full", full)
    finite(op, "x_stage", x_stage)
