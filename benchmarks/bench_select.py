"""Selection benchmark: python_ref.select vs torch.ops.lvtp_cpp.select (allocation "ranked")
and python_ref.select_tokens vs torch.ops.lvtp_cpp.select_tokens (allocation "proportional").

    python -m benchmarks.bench_select [--quick] [--device cpu|cuda]

Size: N=1025 tokens (ViT-B/16 at 512x512 plus the class token), C=768, B=8, 8 clusters,
10 iterations, keep 0.7. On CUDA also one ViT-B/16 block (nn.TransformerEncoderLayer(768,
12, 3072, batch_first=True, norm_first=True)) at the same size: select_ms / block_ms
(target < 5 %).
"""

from __future__ import annotations

import argparse

import torch

import lvtp_kernels  # noqa: F401
import lvtp_kernels._ext as ext
from lvtp_kernels.app.microbench import append_csv, print_table, time_ms
from python_ref import ops as ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if not ext.status()["cpp"][0]:
        print(f"compiled ops unavailable: {ext.status()['cpp'][1]}")
        return 1
    dev = torch.device(args.device)
    reps = 3 if args.quick else 10
    b, n_tok, c, clusters, iters, keep = 8, 1025, 768, 8, 10, 0.7
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(b, n_tok, c, generator=g).to(dev)
    ent = torch.rand(b, n_tok, 4, generator=g).to(dev)
    edge = torch.rand(b, n_tok, generator=g).to(dev)
    a = (tokens, ent, edge, keep, 1, 0.5, "low", clusters, iters)
    # ranked: select itself; proportional: select_tokens (per-cluster budget shares)
    cases = [("ranked", ref.select, torch.ops.lvtp_cpp.select, a)]
    if hasattr(torch.ops.lvtp_cpp, "select_tokens"):
        cases.append(("proportional", ref.select_tokens, torch.ops.lvtp_cpp.select_tokens, a + ("proportional",)))
    block_ms = None
    if dev.type == "cuda":
        block = torch.nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True, norm_first=True).to(dev).eval()
        with torch.inference_mode():
            block_ms = time_ms(lambda: block(tokens), dev, warmup=3, repeats=reps * 2)
    rows = []
    for allocation, ref_fn, ours_fn, args_ in cases:
        ref_ms = time_ms(lambda: ref_fn(*args_), dev, warmup=1, repeats=reps)
        ours_ms = time_ms(lambda: ours_fn(*args_), dev, warmup=2, repeats=reps * 2)
        same = all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(ref_fn(*args_), ours_fn(*args_)))
        rows.append({"allocation": allocation, "N": n_tok, "C": c, "k": clusters, "iters": iters, "B": b,
                     "python_ref_ms": ref_ms, "ours_ms": ours_ms, "speedup": ref_ms / ours_ms, "equal_to_ref": same,
                     "block_ms": block_ms, "select/block_%": None if block_ms is None else 100.0 * ours_ms / block_ms})
    print_table(f"select ({dev.type})", rows, dev)
    append_csv("select", rows, dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
