"""Selection benchmark: ``lvtp.select`` per precision and backend against python_ref.select
(the exact float64 reference), at the patched models' settings (8 clusters, 3 iterations,
"proportional", keep 0.7).

    python -m benchmarks.bench_select [--quick] [--device cpu|cuda]

Rows per shape (B x N x C; ViT-B/16 at 512x512 is 8 x 1025 x 768, the bundled ViT-Ti at
240x320 is 8 x 301 x 192, ViT-L/16 at 1024x1024 is 2 x 4097 x 1024 on a GPU):

* exact/compiled   the exact path's C++ (CPU) or CUDA kernels
* fast/compiled    the fast kernel (csrc/select_fast_cpu.cpp, or select_fast_cuda.cu: one launch)
* fast/torch       python_ref.fast.select_fast on the device (batched float32 torch ops)

``GB/s`` is against the memory floor of one read of the tokens (the fast kernels read them
iters + 2 times, from cache after the first). ``jaccard`` is the kept-set agreement with
the exact reference. On CUDA, ``stage_%`` is the time as a share of one ViT block at that size.
"""

from __future__ import annotations

import argparse

import torch

import lvtp_kernels  # noqa: F401
import lvtp_kernels._ext as ext
from lvtp_kernels.app.microbench import append_csv, print_table, time_ms
from python_ref import ops as ref
from python_ref.fast import select_fast


def _jaccard(a, b) -> float:
    vals = [len(set(x) & set(y)) / max(1, len(set(x) | set(y))) for x, y in zip(a.tolist(), b.tolist())]
    return sum(vals) / len(vals)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, the small shape only on the CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    backend = "cuda" if dev.type == "cuda" else "cpp"
    if not ext.status()[backend][0]:
        print(f"compiled ops unavailable: {ext.status()[backend][1]}")
        return 1
    mod = ext.module(backend)
    reps = 3 if args.quick else 10
    shapes = [(8, 301, 192), (8, 1025, 768)]
    if dev.type == "cuda":
        shapes += [(1, 1025, 768), (2, 4097, 1024)]
    elif args.quick:
        shapes = shapes[:1]
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    clusters, iters, keep, alloc = 8, 3, 0.7, "proportional"
    rows = []
    for b, n_tok, c in shapes:
        g = torch.Generator().manual_seed(0)
        tokens = torch.randn(b, n_tok, c, generator=g).to(dev, dtype)
        ent = torch.rand(b, n_tok, 4, generator=g).to(dev)
        edge = torch.rand(b, n_tok, generator=g).to(dev)
        a = (tokens, ent, edge, keep, 1, 0.3, "high", clusters, iters, alloc)
        exact = ref.select(*(t.cpu() if torch.is_tensor(t) else t for t in a))
        ref_ms = time_ms(lambda: ref.select(*a), dev, warmup=1, repeats=max(2, reps // 3), max_s=20.0)
        block_ms = None
        if dev.type == "cuda":
            heads = max(1, c // 64)
            block = torch.nn.TransformerEncoderLayer(c, heads, 4 * c, batch_first=True, norm_first=True)
            block = block.to(dev, dtype).eval()
            with torch.inference_mode():
                block_ms = time_ms(lambda: block(tokens), dev, warmup=3, repeats=reps * 2)
        fast_kernel = getattr(mod, "select_fast", None)
        cands = [("exact", "compiled", lambda: mod.select(*a))]
        if fast_kernel is not None:
            cands.append(("fast", "compiled", lambda: fast_kernel(*a, False)))
        cands.append(("fast", "torch", lambda: select_fast(*a)))
        floor = tokens.numel() * tokens.element_size()
        for precision, impl, fn in cands:
            with torch.inference_mode():
                ms = time_ms(fn, dev, warmup=2, repeats=reps * 2, max_s=10.0)
                out = fn()
            rows.append({
                "shape": f"{b}x{n_tok}x{c}", "precision": precision, "impl": impl,
                "python_ref_ms": ref_ms, "ours_ms": ms, "speedup": ref_ms / ms, "GB/s": floor / (ms * 1e-3) / 1e9,
                "jaccard": _jaccard(out[0].cpu(), exact[0]), "equal_to_exact": torch.equal(out[0].cpu(), exact[0]),
                "stage_%": None if block_ms is None else 100.0 * ms / block_ms,
            })
    print_table(f"select ({dev.type}, tokens {str(dtype).replace('torch.', '')}, k={clusters}, iters={iters})", rows, dev)
    append_csv("select", rows, dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
