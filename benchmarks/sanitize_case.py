"""One small case of every CUDA clustering kernel, for compute-sanitizer (memcheck,
racecheck, synccheck) in benchmarks/gpu_check.sh:

    compute-sanitizer --tool racecheck python -m benchmarks.sanitize_case

kmeans, the exact select and the fast select (one launch) at N = 197 (ViT-Ti/16 at 224),
both allocations, with and without edge; checks the outputs' structure and exits 0."""

from __future__ import annotations

import torch

import lvtp_kernels  # noqa: F401
import lvtp_kernels._ext as ext


def main() -> int:
    cu = ext.module("cuda")
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 197, 64, generator=g).to(dev, torch.float16)
    ent = torch.rand(2, 197, 4, generator=g).to(dev)
    edge = torch.rand(2, 197, generator=g).to(dev)
    x = torch.randn(2, 100, 32, generator=g).to(dev)
    cu.kmeans(x, x[:, :5].contiguous(), 3)
    for alloc in ("ranked", "proportional"):
        for e in (edge, None):
            outs = [cu.select(tokens, ent, e, 0.5, 1, 0.3, "high", 8, 3, alloc)]
            if hasattr(cu, "select_fast"):
                outs.append(tuple(cu.select_fast(tokens, ent, e, 0.5, 1, 0.3, "high", 8, 3, alloc, False)))
            for keep, prune, cid in outs:
                both = torch.cat([keep, prune], 1).sort(1).values.cpu()
                assert torch.equal(both, torch.arange(197).expand(2, 197)), "not a partition"
    torch.cuda.synchronize()
    print("sanitize_case: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
