"""The clustering ops: ``lvtp::kmeans``, ``lvtp::select`` and ``lvtp::prune`` (spec steps 2, 4, 5).

    kmeans(Tensor x, Tensor init, int iters) -> (Tensor centroids, Tensor assign)
        x (B, n, d), init (B, k, d) -> centroids (B, k, d) fp32 (fp64 for fp64 x), assign (B, n) int64
    select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters,
           allocation="ranked", precision="exact") -> (keep_idx, prune_idx, cluster_id)
        tokens (B, N, C), ent (B, N, Q), edge (B, N) or None -> keep_idx (B, P+K) int64 sorted,
        prune_idx (B, N-P-K) int64 sorted, cluster_id (B, N) int32 (-1 for protected tokens)
    prune(tokens, attn, edge=None, keep_ratio=0.7, ...) -> (kept, keep_idx, prune_idx, cluster_id)
        = tsallis_entropy -> select -> gather_tokens, each part on its own backend

Everything about the ops in one place: schemas, checks, fakes, backends.

* reference  python_ref.ops.{kmeans, select, prune} (fp64, exact);
             python_ref.fast.select_fast (precision="fast": float32, batched, no host sync)
* cpp        csrc/select_cpu.cpp (exact: bit-identical to the reference on CPU),
             csrc/select_fast_cpu.cpp (fast)
* cuda       csrc/kmeans_cuda.cu, csrc/select_cuda.cu (exact), csrc/select_fast_cuda.cu (fast:
             one launch per call) (+ ATen glue csrc/bind_cuda.cpp)
* test       tests/test_op_select.py (+ _cpp, _kmeans, _scoring: the compiled kernels;
             _fast: the fast precision, certified against float64 by tests/certify.py)

``precision``: "exact" (the spec's contract: float64, equal to python_ref.select) or "fast"
(python_ref/fast.py: float32 features, the same rules; equal to exact except at near-ties,
each of which tests/certify.py explains). Patched models default to "fast".
* benchmark  benchmarks/bench_select.py
"""

from __future__ import annotations

import sys
import warnings

import torch

import python_ref
from python_ref.fast import select_fast

from .. import _validate as V
from .. import registry

ALLOCATIONS = ("ranked", "proportional")
PRECISIONS = ("exact", "fast")

KMEANS_SCHEMA = "(Tensor x, Tensor init, int iters) -> (Tensor centroids, Tensor assign)"
SELECT_SCHEMA = (
    "(Tensor tokens, Tensor ent, Tensor? edge, float keep_ratio, int num_protected, float alpha, "
    "str entropy_mode, int clusters, int iters, str allocation=\"ranked\", str precision=\"exact\") -> "
    "(Tensor keep_idx, Tensor prune_idx, "
    "Tensor cluster_id)"
)
PRUNE_SCHEMA = (
    "(Tensor tokens, Tensor attn, Tensor? edge=None, float keep_ratio=0.7, int num_protected=1, "
    "float[] qs=[0.5, 1.0, 2.0, 3.0], float alpha=0.5, str entropy_mode=\"low\", int clusters=8, "
    "int iters=10) -> (Tensor kept, Tensor keep_idx, Tensor prune_idx, Tensor cluster_id)"
)


# --------------------------------------------------------------------------- kmeans
def check_kmeans(x, init, iters, values: bool) -> None:
    op = "kmeans"
    V.tensor(op, "x", x, 3, "(B, n, d)")
    V.tensor(op, "init", init, 3, "(B, k, d)")
    V.same_device(op, x=x, init=init)
    V.dim_equal(op, "batch", x.shape[0], init.shape[0], "x", "init")
    V.dim_equal(op, "feature dim d", x.shape[2], init.shape[2], "x", "init")
    if x.shape[1] < 1:
        V._fail(op, f"x must hold at least one point, got shape {tuple(x.shape)}")
    if init.shape[1] < 1 or init.shape[1] > x.shape[1]:
        V._fail(op, f"init must hold k in [1, n={x.shape[1]}] centroids, got k={init.shape[1]}")
    V.positive_int(op, "iters", iters)
    if values:
        V.finite(op, "x", x)
        V.finite(op, "init", init)


def fake_kmeans(x, init, iters):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return init.new_empty(init.shape, dtype=acc), x.new_empty(x.shape[:2], dtype=torch.int64)


# --------------------------------------------------------------------------- select
def _check_scalars(op: str, n: int, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters) -> None:
    V.keep_ratio(op, keep_ratio)
    V.num_protected(op, num_protected, n)
    V.alpha_value(op, alpha)
    V.entropy_mode_value(op, entropy_mode)
    V.positive_int(op, "clusters", clusters)
    V.positive_int(op, "iters", iters)


def _check_edge(op: str, edge, tokens, values: bool) -> None:
    if edge is None:
        return
    V.tensor(op, "edge", edge, 2, "(B, N)")
    if tuple(edge.shape) != tuple(tokens.shape[:2]):
        V._fail(op, f"edge must be (B, N) = {tuple(tokens.shape[:2])} like tokens, got {tuple(edge.shape)}")
    if values:
        V.finite(op, "edge", edge)


def _check_tokens_and(op: str, tokens, name: str, t, ndim: int, layout: str, edge, values: bool) -> None:
    """tokens (B, N, C), the op's second input ``name`` and edge: ranks, dtypes, one device."""
    V.tensor(op, "tokens", tokens, 3, "(B, N, C)")
    V.tensor(op, name, t, ndim, layout)
    V.same_device(op, tokens=tokens, edge=edge, **{name: t})
    _check_edge(op, edge, tokens, values)


def check_select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, allocation,
                 precision, values: bool) -> None:
    op = "select"
    _check_tokens_and(op, tokens, "ent", ent, 3, "(B, N, Q)", edge, values)
    if ent.shape[:2] != tokens.shape[:2]:
        V._fail(op, f"ent must be (B, N, Q) with (B, N) = {tuple(tokens.shape[:2])} like tokens, got {tuple(ent.shape)}")
    _check_scalars(op, tokens.shape[1], keep_ratio, num_protected, alpha, entropy_mode, clusters, iters)
    if allocation not in ALLOCATIONS:
        V._fail(op, f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if precision not in PRECISIONS:
        V._fail(op, f"precision must be one of {PRECISIONS}, got {precision!r}")
    if values:
        V.finite(op, "tokens", tokens)
        V.finite(op, "ent", ent)


def budget(n, num_protected: int, keep_ratio: float):
    """python_ref.ops.budget written with sym ops, so that a symbolic N (dynamic shapes)
    stays symbolic: truncation is floor here since keep_ratio * (N - P) + 0.5 > 0."""
    return torch.sym_max(1, torch.sym_int(keep_ratio * (n - num_protected) + 0.5))


def select_outputs(tokens, keep_ratio, num_protected):
    """Empty (keep_idx, prune_idx, cluster_id) of the shapes select returns."""
    b, n = tokens.shape[:2]
    kept = num_protected + budget(n, num_protected, keep_ratio)
    return (
        tokens.new_empty((b, kept), dtype=torch.int64),
        tokens.new_empty((b, n - kept), dtype=torch.int64),
        tokens.new_empty((b, n), dtype=torch.int32),
    )


def fake_select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, allocation,
                precision):
    return select_outputs(tokens, keep_ratio, num_protected)


def select_tokens(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, allocation):  # noqa: E501
    """Deprecated (0.2): ``torch.ops.lvtp.select(..., allocation)`` is the same op.
    Kept for one release; removed in 0.3."""
    warnings.warn("lvtp select_tokens is deprecated: call torch.ops.lvtp.select(..., allocation) instead",
                  DeprecationWarning, stacklevel=2)
    return torch.ops.lvtp.select(tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters,
                                 allocation)


# --------------------------------------------------------------------------- prune
def check_prune(tokens, attn, edge, keep_ratio, num_protected, qs, alpha, entropy_mode, clusters, iters,
                values: bool) -> None:
    op = "prune"
    _check_tokens_and(op, tokens, "attn", attn, 4, "(B, H, N, N)", edge, values)
    V.dim_equal(op, "batch", tokens.shape[0], attn.shape[0], "tokens", "attn")
    V.dim_equal(op, "tokens N", tokens.shape[1], attn.shape[2], "tokens", "attn dim 2")
    V.dim_equal(op, "attn rows and columns", attn.shape[2], attn.shape[3], "dim 2", "dim 3")
    V.qs_list(op, qs)
    _check_scalars(op, tokens.shape[1], keep_ratio, num_protected, alpha, entropy_mode, clusters, iters)
    if values:
        V.finite(op, "tokens", tokens)
        V.probabilities(op, "attn", attn)


def fake_prune(tokens, attn, edge, keep_ratio, num_protected, qs, alpha, entropy_mode, clusters, iters):
    keep_idx, prune_idx, cluster_id = select_outputs(tokens, keep_ratio, num_protected)
    kept = tokens.new_empty((tokens.shape[0], keep_idx.shape[1], tokens.shape[2]))
    return kept, keep_idx, prune_idx, cluster_id


def compose_prune(run, tokens, attn, edge, keep_ratio, num_protected, qs, alpha, entropy_mode, clusters, iters):
    dev = tokens.device
    ent = run("tsallis_entropy", dev, attn, qs)
    keep_idx, prune_idx, cluster_id = run(
        "select", dev, tokens, ent, edge, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters, "ranked",
        "exact",
    )
    return run("gather_tokens", dev, tokens, keep_idx), keep_idx, prune_idx, cluster_id


KMEANS = registry.define(registry.OpSpec("kmeans", KMEANS_SCHEMA, check_kmeans, fake_kmeans, backends={
    "ref": registry.Backend(python_ref.kmeans),
    "cpp": registry.compiled_backend("cpp", "kmeans"),
    "cuda": registry.compiled_backend("cuda", "kmeans"),
}))


# select's backends: the last argument, precision, picks the kernel.
def _compiled_select(kernel, *args):
    """``kernel`` is the compiled module's ``select``; "fast" runs its ``select_fast``
    sibling. Where the module has no fast kernel (an older build) or the CUDA one reports
    the shape beyond its limits (``select_fast_supported``: shared memory), the batched
    float32 reference runs on the tensors' device instead: the same algorithm, no host sync."""
    *rest, precision = args
    if precision != "fast":
        return kernel(*rest)
    mod = sys.modules[kernel.__module__] if kernel.__module__ in sys.modules else None
    fast = getattr(mod, "select_fast", None)
    supported = getattr(mod, "select_fast_supported", None)
    tokens, n_prot, clusters = rest[0], rest[4], rest[7]
    n = tokens.shape[1] - n_prot
    if fast is None or (supported is not None and not supported(n, tokens.shape[2], min(clusters, n))):
        return select_fast(*rest)
    return tuple(fast(*rest, False))


SELECT = registry.define(registry.OpSpec("select", SELECT_SCHEMA, check_select, fake_select, backends={
    "ref": registry.Backend(python_ref.select),
    "cpp": registry.compiled_backend("cpp", "select", adapt=_compiled_select),
    "cuda": registry.compiled_backend("cuda", "select", adapt=_compiled_select),
}))


def _define_prune():
    # after tsallis_entropy and gather_tokens (its other parts) are defined
    return registry.define(registry.OpSpec(
        "prune", PRUNE_SCHEMA, check_prune, fake_prune,
        backends={"ref": registry.Backend(python_ref.prune)},
        parts=("tsallis_entropy", "select", "gather_tokens"), compose=compose_prune,
    ))
