"""Microbenchmark of the fused attention + entropy kernel (lvtp::attention_entropy).

    python -m benchmarks.bench_attention [--quick] [--no-compile] [--csv PATH]

On CUDA: ViT-like shapes (B=8, H=12, N=1025, D=64) and (B=2, H=16, N=4097, D=64) in fp16
and bf16. Columns: the reference (python_ref, which materialises the N x N map),
torch.compile of it, FlashAttention through SDPA (attention only: the floor we aim at),
ours (the Triton launcher; ``op_ms`` adds the torch.ops.lvtp validation), ours/SDPA
(target <= 1.25) and ours' TFLOP/s (4 B H N^2 D). Then a search for the largest N the
kernel runs at (B=1, H=16, D=64, fp16; N doubles up to 65536 or until OOM / the time
budget), with whether the materialised fp32 map would fit in free GPU memory.

On a machine without a GPU the kernel runs under the Triton interpreter (set here when
CUDA is absent); ``--quick`` then times one tiny shape only, to prove the script runs.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

if not torch.cuda.is_available():  # must precede the first triton import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import python_ref  # noqa: E402
import lvtp_kernels  # noqa: E402,F401  (defines torch.ops.lvtp.*)
from lvtp_kernels import registry  # noqa: E402
from lvtp_kernels.ops import attention_triton as attn_mod  # noqa: E402

from lvtp_kernels.app.microbench import append_csv, print_table, row, time_ms, try_compile  # noqa: E402

QS = [0.5, 1.0, 2.0, 3.0]
COMPILE_BUDGET_S = 25.0  # stop adding torch.compile columns once this much time is spent


def _inputs(b, h, n, d, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g, device=device, dtype=dtype) for _ in range(3))


def _sdpa_flash(device):
    """A callable running FlashAttention through SDPA, or None when unavailable."""
    if device.type != "cuda":
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v, scale):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)

    return run


def bench_shapes(shapes, dtypes, device, compile_ref: bool):
    rows = []
    flash = _sdpa_flash(device)
    t_start = time.perf_counter()
    for b, h, n, d in shapes:
        for dtype in dtypes:
            q, k, v = _inputs(b, h, n, d, dtype, device)
            scale = d**-0.5
            ref_ms = time_ms(lambda: python_ref.attention_entropy(q, k, v, QS, scale), device, warmup=1, repeats=5)
            compile_ms = None
            if compile_ref and time.perf_counter() - t_start < COMPILE_BUDGET_S:
                compiled = try_compile(python_ref.attention_entropy)
                if compiled is not None:
                    try:
                        compile_ms = time_ms(lambda: compiled(q, k, v, QS, scale), device, warmup=2, repeats=10)
                    except Exception as exc:  # noqa: BLE001 - reported as a missing column
                        print(f"torch.compile failed for {(b, h, n, d)} {dtype}: {type(exc).__name__}: {exc}")
            ours_ms = time_ms(lambda: attn_mod.attention_entropy(q, k, v, QS, scale), device)
            with registry.forced_impl("triton"):  # the op with its validation, on our backend
                op_ms = time_ms(lambda: torch.ops.lvtp.attention_entropy(q, k, v, QS, scale), device)
            sdpa_ms = sdpa_ent_ms = None
            if flash is not None:
                try:
                    sdpa_ms = time_ms(lambda: flash(q, k, v, scale), device)
                    # [H] item 3's alternative: SDPA for the output, then an entropy-only
                    # pass (the same kernel without V: QK^T, softmax statistics, no PV)
                    sdpa_ent_ms = time_ms(lambda: (flash(q, k, v, scale), attn_mod.attention_entropy(
                        q, k, v, QS, scale, entropy_only=True)), device)
                except RuntimeError as exc:
                    print(f"SDPA flash unavailable for {dtype}: {exc}")
            # bytes that must move at least once: q, k, v in, out and ent out
            floor_bytes = (4 * b * h * n * d) * q.element_size() + b * n * len(QS) * 4
            r = row(f"B{b} H{h} N{n} D{d}", dtype, ref_ms, compile_ms, ours_ms, floor_bytes, device)
            r["op_ms"] = op_ms
            r["sdpa_ms"] = sdpa_ms
            r["ours/sdpa"] = (ours_ms / sdpa_ms) if sdpa_ms else None
            r["sdpa+ent_ms"] = sdpa_ent_ms
            r["ours/(sdpa+ent)"] = (ours_ms / sdpa_ent_ms) if sdpa_ent_ms else None
            r["TFLOP/s"] = 4.0 * b * h * n * n * d / (ours_ms * 1e-3) / 1e12
            rows.append(r)
    return rows


def largest_n(device, budget_s: float = 10.0, max_n: int = 65536):
    """Double N at B=1, H=16, D=64 (fp16) until OOM, max_n, or the time budget."""
    rows = []
    b, h, d = 1, 16, 64
    t_end = time.perf_counter() + budget_s
    n = 4096
    while n <= max_n and time.perf_counter() < t_end:
        try:
            q, k, v = _inputs(b, h, n, d, torch.float16, device)
            ms = time_ms(lambda: attn_mod.attention_entropy(q, k, v, QS, d**-0.5), device, warmup=1, repeats=3,
                         max_s=1.0)
        except torch.cuda.OutOfMemoryError:
            rows.append({"N": n, "ours_ms": None, "status": "OOM"})
            break
        free, _ = torch.cuda.mem_get_info(device)
        map_bytes = b * h * n * n * 4  # the reference's fp32 N x N map (one copy)
        rows.append({
            "N": n,
            "ours_ms": ms,
            "TFLOP/s": 4.0 * b * h * n * n * d / (ms * 1e-3) / 1e12,
            "map_GiB": map_bytes / 2**30,
            "map_fits": map_bytes < free,
            "status": "ok",
        })
        del q, k, v
        n *= 2
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small shape (CPU: tiny, under the interpreter)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile(python_ref) column")
    ap.add_argument("--csv", default=None, help="append rows to this CSV (default benchmarks/results/bench.csv)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        shapes = [(8, 12, 1025, 64)] if args.quick else [(8, 12, 1025, 64), (2, 16, 4097, 64)]
        dtypes = [torch.float16] if args.quick else [torch.float16, torch.bfloat16]
    else:
        if not args.quick:
            print("no CUDA device: running the --quick CPU shape under the Triton interpreter")
        shapes, dtypes = [(1, 2, 64, 16)], [torch.float32]

    rows = bench_shapes(shapes, dtypes, device, compile_ref=not args.no_compile)
    print_table("attention_entropy: fused attention + Tsallis entropies (qs=0.5,1,2,3)", rows, device)
    path = append_csv("attention_entropy", rows, device, args.csv)

    if device.type == "cuda" and not args.quick:
        big = largest_n(device)
        print("\n## attention_entropy: largest N (B=1, H=16, D=64, fp16)")
        for r in big:
            if r["status"] == "ok":
                print(f"N={r['N']:>6}: {r['ours_ms']:.2f} ms, {r['TFLOP/s']:.1f} TFLOP/s; "
                      f"materialised fp32 map {r['map_GiB']:.1f} GiB -> {'fits' if r['map_fits'] else 'does NOT fit'}")
            else:
                print(f"N={r['N']:>6}: {r['status']}")
        if big:
            ok = [r["N"] for r in big if r["status"] == "ok"]
            print(f"largest N run: {max(ok) if ok else 'none'}")
            append_csv("attention_entropy_largest_n",
                       [{"shape": f"B1 H16 N{r['N']} D64", "dtype": "float16", **r} for r in big], device, path)
    print(f"\nrows appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
