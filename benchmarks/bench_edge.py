"""Benchmark of the Triton ``patch_edge_energy`` kernels against python_ref (eager) and
``torch.compile(python_ref.patch_edge_energy)``.

    python -m benchmarks.bench_edge [--quick] [--csv PATH] [--no-compile]

Runs on CUDA when available, else on the CPU with tiny images (the Triton column then
needs TRITON_INTERPRET=1, and is skipped otherwise). The kernels are timed through the
launcher (``lvtp_kernels.ops.edge_triton.patch_edge_energy``), without the op's validation.
The memory floor is one read of the image plus the (B, h*w) fp32 output write.
torch.compile is timed for the first shape and dtype only (compilation is slow), and
not by ``--quick`` on the CPU.
"""

from __future__ import annotations

from typing import List

import torch

from lvtp_kernels.app import microbench as common
from lvtp_kernels.ops import _common
from lvtp_kernels.ops import edge_triton as triton_edge
from python_ref import ops as ref

PATCH = 16


def bench(shapes, dtypes, device, use_compile: bool, repeats: int) -> List[dict]:
    triton_ok = device.type == "cuda" or _common.interpreting()
    rows = []
    for i, (b, height, width) in enumerate(shapes):
        for j, dtype in enumerate(dtypes):
            g = torch.Generator(device=device).manual_seed(0)
            image = torch.rand(b, 3, height, width, generator=g, device=device).to(dtype)
            floor = image.numel() * image.element_size() + b * (height // PATCH) * (width // PATCH) * 4
            rows.append(common.compare(f"B={b} {height}x{width} patch={PATCH}", dtype, ref.patch_edge_energy,
                                       triton_edge.patch_edge_energy, (image, PATCH), floor, device, repeats,
                                       use_compile and i == j == 0, triton_ok))
    return rows


def main(argv=None) -> None:
    common.triton_main("patch_edge_energy", "patch_edge_energy (luma + Sobel + patch mean + normalise)", __doc__, bench, ([(8, 512, 512)], [(8, 512, 512), (8, 1024, 1024)]), ([torch.float32], [torch.float32, torch.bfloat16]), ([(1, 64, 64)], [(2, 128, 128)]), argv)

if __name__ == "__main__":
    main()
