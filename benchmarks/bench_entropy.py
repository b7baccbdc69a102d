"""Benchmark of the Triton ``tsallis_entropy`` kernel against python_ref (eager) and
``torch.compile(python_ref.tsallis_entropy)``.

    python -m benchmarks.bench_entropy [--quick] [--csv PATH] [--no-compile]

Runs on CUDA when available, else on the CPU with tiny shapes (the Triton column then
needs TRITON_INTERPRET=1, and is skipped otherwise). The kernel is timed through its
launcher (``lvtp_kernels.ops.tsallis.tsallis_entropy``), without the op's input
validation. The memory floor is one read of the attention map plus the output write.
torch.compile is timed for the first shape and dtype only (compilation is slow), and
not at all by ``--quick`` on the CPU.
"""

from __future__ import annotations

from typing import List

import torch

from benchmarks import common
from lvtp_kernels.ops import _common
from lvtp_kernels.ops import tsallis as triton_tsallis
from python_ref import ops as ref

QS = [0.5, 1.0, 2.0, 3.0]


def make_attn(b: int, h: int, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(b, h, n, n, generator=g, device=device) * 3.0
    return torch.softmax(logits, dim=-1).to(dtype)


def bench(shapes, dtypes, device, use_compile: bool, repeats: int) -> List[dict]:
    triton_ok = device.type == "cuda" or _common.interpreting()
    rows = []
    for i, (b, h, n) in enumerate(shapes):
        for j, dtype in enumerate(dtypes):
            attn = make_attn(b, h, n, dtype, device)
            want = ref.tsallis_entropy(attn, QS)
            ref_ms = common.time_ms(lambda: ref.tsallis_entropy(attn, QS), device, repeats=repeats, max_s=1.0)
            compile_ms = common.compiled_ms(ref.tsallis_entropy, (attn, QS), device, use_compile and i == j == 0, repeats)
            floor = attn.numel() * attn.element_size() + b * n * len(QS) * 4
            shape = f"B={b} H={h} N={n} Q={len(QS)}"
            if triton_ok:
                got = triton_tsallis.tsallis_entropy(attn, QS)
                ours_ms = common.time_ms(lambda: triton_tsallis.tsallis_entropy(attn, QS), device, repeats=repeats)
                r = common.row(shape, dtype, ref_ms, compile_ms, ours_ms, floor, device)
                r["max_err"] = f"{(got - want).abs().max().item():.1e}"
            else:
                r = common.missing_row(shape, dtype, ref_ms, compile_ms, max_err=None)
            rows.append(r)
    return rows


def main(argv=None) -> None:
    common.triton_main("tsallis_entropy", "tsallis_entropy (one pass, all orders)", __doc__, bench, ([(8, 12, 1025)], [(8, 12, 1025), (2, 16, 4097)]), ([torch.float16], [torch.float16, torch.bfloat16, torch.float32]), ([(1, 2, 65)], [(1, 3, 197)]), argv)

if __name__ == "__main__":
    main()
