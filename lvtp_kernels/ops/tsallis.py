"""``lvtp::tsallis_entropy``: normalised multi-scale Tsallis entropy of attention (spec step 1).

    tsallis_entropy(Tensor attn, float[] qs) -> Tensor
    attn (B, H, N, N) softmax probabilities, fp16/bf16/fp32/fp64 -> (B, N, len(qs)) float32

Everything about the op in one place: schema, check, fake, backends.

* reference  python_ref.ops.tsallis_entropy (fp64)
* triton     lvtp_kernels/ops/tsallis_triton.py (one pass over attn, fp32 accumulation)
* cpp/cuda   none: on CPU the reference runs (the fused CPU path is attention_entropy)
* test       tests/test_op_tsallis.py   benchmark  benchmarks/bench_tsallis.py
"""

from __future__ import annotations

import torch

import python_ref

from .. import _validate as V
from .. import registry

OP = "tsallis_entropy"
SCHEMA = "(Tensor attn, float[] qs) -> Tensor"


def check(attn, qs, values: bool) -> None:
    V.tensor(OP, "attn", attn, 4, "(B, H, N, N)")
    V.dim_equal(OP, "attn rows and columns", attn.shape[2], attn.shape[3], "dim 2", "dim 3")
    V.qs_list(OP, qs)
    if values:
        V.probabilities(OP, "attn", attn)


def fake(attn, qs):
    b, _, n, _ = attn.shape
    return attn.new_empty((b, n, len(qs)), dtype=torch.float32)


SPEC = registry.define(registry.OpSpec(
    OP, SCHEMA, check, fake,
    backends={
        "ref": registry.Backend(python_ref.tsallis_entropy),
        "triton": registry.triton_backend("tsallis_triton", "tsallis_entropy"),
    },
))
