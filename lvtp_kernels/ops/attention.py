"""``lvtp::attention_entropy``: softmax attention fused with the entropy of its rows.

    attention_entropy(Tensor q, Tensor k, Tensor v, float[] qs, float scale) -> (Tensor out, Tensor ent)
    q, k (B, H, N, D), v (B, H, N, Dv), one float dtype -> out (B, H, N, Dv) in that dtype,
    ent (B, N, len(qs)) float32 (= tsallis_entropy(softmax(scale q k^T), qs))

Everything about the op in one place: schema, check, fake, backends.

* reference  python_ref.ops.attention_entropy (materialises the attention map)
* triton     lvtp_kernels/ops/attention_triton.py (FlashAttention-2 style, online softmax)
* cpp        csrc/attention_cpu.cpp (CPU, row blocks, fp32/fp64)
* test       tests/test_op_attention.py   benchmark  benchmarks/bench_attention.py
"""

from __future__ import annotations

import math

import torch

import python_ref

from .. import _validate as V
from .. import registry

OP = "attention_entropy"
SCHEMA = "(Tensor q, Tensor k, Tensor v, float[] qs, float scale) -> (Tensor out, Tensor ent)"


def check(q, k, v, qs, scale, values: bool) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        V.tensor(OP, name, t, 4, "(B, H, N, D)")
    V.same_device(OP, q=q, k=k, v=v)
    if k.shape[:3] != q.shape[:3] or v.shape[:3] != q.shape[:3]:
        V._fail(OP, f"q, k, v must share (B, H, N); got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    V.dim_equal(OP, "head dim", q.shape[3], k.shape[3], "q", "k")
    if not (q.dtype == k.dtype == v.dtype):
        V._fail(OP, f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    V.qs_list(OP, qs)
    if not (math.isfinite(scale) and scale > 0):
        V._fail(OP, f"scale must be positive and finite, got {scale}")
    if values:
        for name, t in (("q", q), ("k", k), ("v", v)):
            V.finite(OP, name, t)


def fake(q, k, v, qs, scale):
    b, h, n, _ = q.shape
    return q.new_empty((b, h, n, v.shape[3])), q.new_empty((b, n, len(qs)), dtype=torch.float32)


SPEC = registry.define(registry.OpSpec(
    OP, SCHEMA, check, fake,
    backends={
        "ref": registry.Backend(python_ref.attention_entropy),
        "triton": registry.triton_backend("attention_triton", "attention_entropy"),
        "cpp": registry.compiled_backend("cpp", "attention_entropy",
                                         lambda kernel, q, k, v, qs, scale: kernel(q, k, v, list(qs), scale)),
    },
))


def attention_entropy_bnhd(q, k, v, qs, scale):
    """The Triton kernel writing its output in the block's layout (B, N, H, Dv), seen as
    (B, H, N, Dv): ``out.transpose(1, 2).reshape(B, N, H * Dv)`` is then a view, saving the
    copy a contiguous (B, H, N, Dv) output costs each stage block ([H] item 3). Used by the
    patched models' forward through ``registry.kernels`` when Triton is the chosen backend;
    the op itself keeps its contiguous output (its fake kernel says so)."""
    from . import attention_triton

    if q.device.type == "cuda":
        with torch.cuda.device(q.device):
            return attention_triton.attention_entropy(q, k, v, qs, scale, bnhd=True)
    return attention_triton.attention_entropy(q, k, v, qs, scale, bnhd=True)


SPEC.variants["triton"] = attention_entropy_bnhd  # registry.Kernels picks it for the patched forward

