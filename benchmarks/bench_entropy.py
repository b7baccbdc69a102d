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

import argparse
from typing import List, Optional

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
    for i, (b, h, n) in enumerate(shapes):
        for j, dtype in enumerate(dtypes):
            attn = make_attn(b, h, n, dtype, device)
            want = ref.tsallis_entropy(attn, QS)
            ref_ms = common.time_ms(lambda: ref.tsallis_entropy(attn, QS), device, repeats=repeats, max_s=1.0)
            compile_ms = compiled_ms(ref.tsallis_entropy, (attn, QS), device, use_compile and i == j == 0, repeats)
            floor = attn.numel() * attn.element_size() + b * n * len(QS) * 4
            shape = f"B={b} H={h} N={n} Q={len(QS)}"
            if triton_ok:
                got = triton_tsallis.tsallis_entropy(attn, QS)
                ours_ms = common.time_ms(lambda: triton_tsallis.tsallis_entropy(attn, QS), device, repeats=repeats)
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
        shapes = [(8, 12, 1025)] if args.quick else [(8, 12, 1025), (2, 16, 4097)]
        dtypes = [torch.float16] if args.quick else [torch.float16, torch.bfloat16, torch.float32]
        repeats = 10
    else:
        shapes = [(1, 2, 65)] if args.quick else [(1, 3, 197)]
        dtypes = [torch.float32]
        repeats = 3
        if not _common.interpreting():
            print("no GPU and TRITON_INTERPRET unset: the Triton column is skipped")
    use_compile = not args.no_compile and (device.type == "cuda" or not args.quick)
    rows = bench(shapes, dtypes, device, use_compile=use_compile, repeats=repeats)
    common.print_table("tsallis_entropy (one pass, all orders)", rows, device)
    print("csv:", common.append_csv("tsallis_entropy", rows, device, args.csv))


if __name__ == "__main__":
    main()
