"""Benchmark of the Triton ``tsallis_entropy`` kernel against python_ref (eager) and
``torch.compile(python_ref.tsallis_entropy)``.

    python -m benchmarks.bench_tsallis [--quick] [--csv PATH] [--no-compile]

Runs on CUDA when available, else on the CPU with tiny shapes (the Triton column then
needs TRITON_INTERPRET=1, and is skipped otherwise). The kernel is timed through its
launcher (``lvtp_kernels.ops.tsallis_triton.tsallis_entropy``), without the op's input
validation. The memory floor is one read of the attention map plus the output write.
torch.compile is timed for the first shape and dtype only (compilation is slow), and
not at all by ``--quick`` on the CPU.
"""

from __future__ import annotations

from typing import List

import torch

from lvtp_kernels.app import microbench as common
from lvtp_kernels.ops import _common
from lvtp_kernels.ops import tsallis_triton as triton_tsallis
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
            floor = attn.numel() * attn.element_size() + b * n * len(QS) * 4
            rows.append(common.compare(f"B={b} H={h} N={n} Q={len(QS)}", dtype, ref.tsallis_entropy,
                                       triton_tsallis.tsallis_entropy, (attn, QS), floor, device, repeats,
                                       use_compile and i == j == 0, triton_ok))
    return rows


def main(argv=None) -> None:
    common.triton_main("tsallis_entropy", "tsallis_entropy (one pass, all orders)", __doc__, bench, ([(8, 12, 1025)], [(8, 12, 1025), (2, 16, 4097)]), ([torch.float16], [torch.float16, torch.bfloat16, torch.float32]), ([(1, 2, 65)], [(1, 3, 197)]), argv)

if __name__ == "__main__":
    main()
