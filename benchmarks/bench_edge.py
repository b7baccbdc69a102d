"""Benchmark of the Triton ``patch_edge_energy`` kernels against python_ref (eager) and
``torch.compile(python_ref.patch_edge_energy)``.

    python -m benchmarks.bench_edge [--quick] [--csv PATH] [--no-compile]

Runs on CUDA when available, else on the CPU with tiny images (the Triton column then
needs TRITON_INTERPRET=1, and is skipped otherwise). The kernels are timed through the
launcher (``lvtp_kernels.ops.edge.patch_edge_energy``), without the op's validation.
The memory floor is one read of the image plus the (B, h*w) fp32 output write.
torch.compile is timed for the first shape and dtype only (compilation is slow), and
not by ``--quick`` on the CPU.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

import torch

from benchmarks import common
from lvtp_kernels.ops import _common
from lvtp_kernels.ops import edge as triton_edge
from python_ref import ops as ref

PATCH = 16


def compiled_ms(fn, args, device, enabled: bool, repeats: int) -> Optional[float]:
    """Time torch.compile(fn)(*args), or None when compile is off or fails."""
    compiled = common.try_compile(fn, enabled=enabled)
    if compiled is None:
        return None
    try:
        compiled(*args)
    except Exception as exc:  # noqa: BLE001 - reported as a missing column
        print(f"torch.compile failed ({type(exc).__name__}); column skipped")
        return None
    return common.time_ms(lambda: compiled(*args), device, repeats=repeats, max_s=1.0)


def bench(shapes, dtypes, device, use_compile: bool, repeats: int) -> List[dict]:
    triton_ok = device.type == "cuda" or _common.interpreting()
    rows = []
    for i, (b, height, width) in enumerate(shapes):
        for j, dtype in enumerate(dtypes):
            g = torch.Generator(device=device).manual_seed(0)
            image = torch.rand(b, 3, height, width, generator=g, device=device).to(dtype)
            want = ref.patch_edge_energy(image, PATCH)
            ref_ms = common.time_ms(lambda: ref.patch_edge_energy(image, PATCH), device, repeats=repeats, max_s=1.0)
            compile_ms = compiled_ms(ref.patch_edge_energy, (image, PATCH), device, use_compile and i == j == 0, repeats)
            floor = image.numel() * image.element_size() + want.numel() * 4
            shape = f"B={b} {height}x{width} patch={PATCH}"
            if triton_ok:
                got = triton_edge.patch_edge_energy(image, PATCH)
                ours_ms = common.time_ms(lambda: triton_edge.patch_edge_energy(image, PATCH), device, repeats=repeats)
                r = common.row(shape, dtype, ref_ms, compile_ms, ours_ms, floor, device)
                r["max_err"] = f"{(got - want).abs().max().item():.1e}"
            else:
                r = {"shape": shape, "dtype": str(dtype).replace("torch.", ""), "ref_ms": ref_ms,
                     "compile_ms": compile_ms, "ours_ms": None, "speedup": None, "vs_compile": None,
                     "GB/s": None, "%floor": None, "max_err": None}
            rows.append(r)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, one dtype")
    ap.add_argument("--csv", default=None, help="CSV file to append to (default benchmarks/results/bench.csv)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        shapes = [(8, 512, 512)] if args.quick else [(8, 512, 512), (8, 1024, 1024)]
        dtypes = [torch.float32] if args.quick else [torch.float32, torch.bfloat16]
        repeats = 10
    else:
        shapes = [(1, 64, 64)] if args.quick else [(2, 128, 128)]
        dtypes = [torch.float32]
        repeats = 3
        if not _common.interpreting():
            print("no GPU and TRITON_INTERPRET unset: the Triton column is skipped")
    use_compile = not args.no_compile and (device.type == "cuda" or not args.quick)
    rows = bench(shapes, dtypes, device, use_compile=use_compile, repeats=repeats)
    common.print_table("patch_edge_energy (luma + Sobel + patch mean + normalise)", rows, device)
    print("csv:", common.append_csv("patch_edge_energy", rows, device, args.csv))


if __name__ == "__main__":
    main()
