"""The token-moving ops: ``lvtp::gather_tokens``, ``lvtp::scatter_tokens`` and
``lvtp::reconstruct_stage`` (spec steps 5 and 7).

    gather_tokens(Tensor x, Tensor idx) -> Tensor
        x (B, N, C), idx (B, K) int32/int64 -> (B, K, C), out[b, k] = x[b, idx[b, k]]
    scatter_tokens(Tensor full, Tensor x, Tensor idx) -> Tensor
        a copy of full (B, N, C) with rows idx[b] (unique) replaced by x (B, K, C)
    reconstruct_stage(Tensor full, Tensor x_stage, Tensor keep_idx, Tensor prune_idx,
                      Tensor cluster_id, int clusters, str mode) -> Tensor
        full (B, K, C) final kept tokens, x_stage (B, N, C) the stage's input -> (B, N, C);
        mode "nearest" | "residual" | "frozen" (python_ref.pipeline.reconstruct_stage)

Everything about the ops in one place: schemas, checks, fakes, backends.

* reference  python_ref.ops.{gather_tokens, scatter_tokens}, python_ref.pipeline.reconstruct_stage
* triton     lvtp_kernels/ops/tokens_triton.py
* cpp        csrc/tokens_cpu.cpp (gather_tokens; reconstruct_stage mode "nearest")
* test       tests/test_op_tokens.py   benchmark  benchmarks/bench_tokens.py
"""

from __future__ import annotations

import torch

import python_ref

from .. import _validate as V
from .. import registry

RECONSTRUCT_MODES = ("residual", "frozen", "nearest")


def check_gather_tokens(x, idx, values: bool) -> None:
    op = "gather_tokens"
    V.tensor(op, "x", x, 3, "(B, N, C)", nonempty=False)
    V.tensor(op, "idx", idx, 2, "(B, K)", V.INDEX_DTYPES, nonempty=False)
    V.same_device(op, x=x, idx=idx)
    V.dim_equal(op, "batch", x.shape[0], idx.shape[0], "x", "idx")
    V.indices(op, "idx", idx, x.shape[1], unique=False, values=values)
    if values:
        V.finite(op, "x", x)


def check_scatter_tokens(full, x, idx, values: bool) -> None:
    op = "scatter_tokens"
    V.tensor(op, "full", full, 3, "(B, N, C)", nonempty=False)
    V.tensor(op, "x", x, 3, "(B, K, C)", nonempty=False)
    V.tensor(op, "idx", idx, 2, "(B, K)", V.INDEX_DTYPES, nonempty=False)
    V.same_device(op, full=full, x=x, idx=idx)
    if x.dtype != full.dtype:
        V._fail(op, f"x dtype {x.dtype} must match full dtype {full.dtype}")
    V.dim_equal(op, "batch", full.shape[0], x.shape[0], "full", "x")
    V.dim_equal(op, "batch", full.shape[0], idx.shape[0], "full", "idx")
    V.dim_equal(op, "channels C", full.shape[2], x.shape[2], "full", "x")
    V.dim_equal(op, "K", x.shape[1], idx.shape[1], "x", "idx")
    if idx.shape[1] > full.shape[1]:
        V._fail(op, f"idx holds {idx.shape[1]} indices per row but full has only N={full.shape[1]} tokens")
    V.indices(op, "idx", idx, full.shape[1], unique=True, values=values)
    if values:
        V.finite(op, "full", full)
        V.finite(op, "x", x)


def check_reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode, values: bool) -> None:
    op = "reconstruct_stage"
    V.tensor(op, "full", full, 3, "(B, K, C)", nonempty=False)
    V.tensor(op, "x_stage", x_stage, 3, "(B, N, C)", nonempty=False)
    V.tensor(op, "keep_idx", keep_idx, 2, "(B, K)", V.INDEX_DTYPES, nonempty=False)
    V.tensor(op, "prune_idx", prune_idx, 2, "(B, N-K)", V.INDEX_DTYPES, nonempty=False)
    V.tensor(op, "cluster_id", cluster_id, 2, "(B, N)", V.INDEX_DTYPES, nonempty=False)
    V.same_device(op, full=full, x_stage=x_stage, keep_idx=keep_idx, prune_idx=prune_idx, cluster_id=cluster_id)
    b, k, c = full.shape
    n = x_stage.shape[1]
    for name, t in (("x_stage", x_stage), ("keep_idx", keep_idx), ("prune_idx", prune_idx), ("cluster_id", cluster_id)):
        V.dim_equal(op, "batch", b, t.shape[0], "full", name)
    V.dim_equal(op, "channels C", c, x_stage.shape[2], "full", "x_stage")
    V.dim_equal(op, "K", k, keep_idx.shape[1], "full", "keep_idx")
    V.dim_equal(op, "N", n, cluster_id.shape[1], "x_stage", "cluster_id")
    if k + prune_idx.shape[1] != n:
        V._fail(op, f"keep_idx ({k}) and prune_idx ({prune_idx.shape[1]}) must partition the N={n} tokens of x_stage")
    V.positive_int(op, "clusters", clusters)
    if mode not in RECONSTRUCT_MODES:
        V._fail(op, f"mode must be one of {RECONSTRUCT_MODES}, got {mode!r}")
    if not values:
        return
    if n:
        both = torch.cat([keep_idx.long(), prune_idx.long()], dim=1)
        V.indices(op, "keep_idx and prune_idx", both, n, unique=True, values=True)
        lo, hi = int(cluster_id.min()), int(cluster_id.max())
        if lo < -1 or hi >= clusters:
            V._fail(op, f"cluster_id must lie in [-1, clusters) = [-1, {clusters}), got values in [{lo}, {hi}]")
    V.finite(op, "full", full)
    V.finite(op, "x_stage", x_stage)


def _cpp_reconstruct(kernel, full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode):
    """The C++ kernel for the default mode "nearest"; "residual" and "frozen" (cheap
    vectorised torch code already) run python_ref."""
    if mode != "nearest":
        return python_ref.reconstruct_stage(full, x_stage, keep_idx, prune_idx, cluster_id, clusters, mode)
    if full.shape[1] == 0 and prune_idx.shape[1] > 0:  # as the reference's argmax and the Triton kernel
        raise ValueError("reconstruct_stage: mode 'nearest' needs at least one kept token when tokens are pruned")
    return kernel(full, x_stage, keep_idx, prune_idx, cluster_id)


GATHER = registry.define(registry.OpSpec(
    "gather_tokens", "(Tensor x, Tensor idx) -> Tensor", check_gather_tokens,
    lambda x, idx: x.new_empty((x.shape[0], idx.shape[1], x.shape[2])),
    backends={
        "ref": registry.Backend(python_ref.gather_tokens),
        "triton": registry.triton_backend("tokens_triton", "gather_tokens"),
        "cpp": registry.compiled_backend("cpp", "gather_tokens"),
    },
))
SCATTER = registry.define(registry.OpSpec(
    "scatter_tokens", "(Tensor full, Tensor x, Tensor idx) -> Tensor", check_scatter_tokens,
    lambda full, x, idx: torch.empty_like(full, memory_format=torch.contiguous_format),
    backends={
        "ref": registry.Backend(python_ref.scatter_tokens),
        "triton": registry.triton_backend("tokens_triton", "scatter_tokens"),
    },
))
RECONSTRUCT = registry.define(registry.OpSpec(
    "reconstruct_stage",
    "(Tensor full, Tensor x_stage, Tensor keep_idx, Tensor prune_idx, Tensor cluster_id, int clusters, "
    "str mode) -> Tensor",
    check_reconstruct_stage,
    lambda full, x_stage, *_: full.new_empty((full.shape[0], x_stage.shape[1], full.shape[2])),
    backends={
        "ref": registry.Backend(python_ref.reconstruct_stage),
        "triton": registry.triton_backend("tokens_triton", "reconstruct_stage"),
        "cpp": registry.compiled_backend("cpp", "reconstruct_nearest", _cpp_reconstruct),
    },
))

# The patched forward at precision "fast" on the Triton backend: the nearest-key search
# and every output row in one launch ([H] item 4; keys may differ from the reference's at
# float32 near-ties of the cosine similarity, tests/test_op_tokens_fused.py certifies
# each). registry.Kernels.variant("reconstruct_stage", "fast") picks it.
RECONSTRUCT.variants["triton:fast"] = registry.triton_backend("tokens_triton", "reconstruct_nearest_fused").fn
