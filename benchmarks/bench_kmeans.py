"""k-means benchmark: python_ref vs scikit-learn (loop over the batch) vs torch.ops.lvtp_cpp.kmeans.

    python -m benchmarks.bench_kmeans [--quick] [--device cpu|cuda]

Sizes: n=1024, d in (192, 768), k=8, iters=10, B=8 (targets: CPU >= 3x python_ref and
faster than scikit-learn; CUDA >= 10x python_ref on the same device).
"""

from __future__ import annotations

import argparse

import torch

import lvtp_kernels  # noqa: F401
import lvtp_kernels._ext as ext
from benchmarks.common import append_csv, print_table, time_ms
from python_ref import ops as ref


def _sklearn_ms(x, init, iters):
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        return None
    xs, inits = [t.cpu().float().numpy() for t in x], [t.cpu().float().numpy() for t in init]

    def run():
        for xi, ci in zip(xs, inits):
            KMeans(n_clusters=ci.shape[0], init=ci, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(xi)

    return time_ms(run, "cpu", warmup=1, repeats=5)


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
    rows = []
    g = torch.Generator().manual_seed(0)
    for d in (192, 768):
        n, k, iters, b = 1024, 8, 10, 8
        x = torch.randn(b, n, d, generator=g).to(dev)
        init = x[:, :: n // k].clone()
        ref_ms = time_ms(lambda: ref.kmeans(x, init, iters), dev, warmup=1, repeats=reps)
        ours_ms = time_ms(lambda: torch.ops.lvtp_cpp.kmeans(x, init, iters), dev, warmup=2, repeats=reps * 2)
        sk_ms = _sklearn_ms(x, init, iters)
        rows.append({"n": n, "d": d, "k": k, "iters": iters, "B": b, "python_ref_ms": ref_ms,
                     "sklearn_ms": sk_ms, "ours_ms": ours_ms, "speedup": ref_ms / ours_ms,
                     "vs_sklearn": (sk_ms / ours_ms) if sk_ms else None, "threads": torch.get_num_threads()})
    print_table(f"kmeans ({dev.type})", rows, dev)
    append_csv("kmeans", rows, dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
