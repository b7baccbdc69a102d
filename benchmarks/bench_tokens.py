"""Benchmark of the Triton ``gather_tokens``, ``scatter_tokens`` and ``reconstruct_stage``
kernels against python_ref (eager), ``torch.compile`` of the reference, and plain
PyTorch (``torch.gather``; ``clone`` + ``scatter_``, i.e. index_copy_ per row).

    python -m benchmarks.bench_tokens [--quick] [--csv PATH] [--no-compile]

Runs on CUDA when available, else on the CPU with tiny shapes (the Triton column then
needs TRITON_INTERPRET=1, and is skipped otherwise). Kernels are timed through their
launchers, without the ops' input validation. K = 0.7 N kept tokens, 8 clusters.
Memory floors: gather reads and writes K rows; scatter reads N rows (K from x, N - K
from full) and writes N; reconstruct_stage reads full (K rows) and x_stage (N rows)
and writes N rows (indices included), in both modes ("reconstruct" is "residual";
"reconstruct nearest" also runs the (N-K) x K similarity matmul and argmax, whose
x_stage read the floor does not count again). torch.compile is timed for the first shape and
dtype only, and not by ``--quick`` on the CPU.
"""

from __future__ import annotations

from typing import List

import torch

from lvtp_kernels.app import microbench as common
from lvtp_kernels.ops import _common
from lvtp_kernels.ops import tokens_triton as gs
from python_ref import ops as ref
from python_ref import pipeline

CLUSTERS = 8


def torch_gather(x, idx):
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))


def torch_scatter(full, x, idx):
    return full.clone().scatter_(1, idx[..., None].expand(-1, -1, full.shape[2]), x)


def stage(b, n, c, dtype, device):
    """keep_idx (protected token 0 first, then ascending), prune_idx, cluster ids, features."""
    g = torch.Generator(device="cpu").manual_seed(0)
    k = max(2, int(0.7 * n))
    perm = torch.argsort(torch.rand(b, n - 1, generator=g), dim=1) + 1
    keep = torch.cat([torch.zeros(b, 1, dtype=torch.int64), perm[:, : k - 1].sort(1).values], 1)
    prune = perm[:, k - 1 :].sort(1).values
    cid = torch.randint(0, CLUSTERS, (b, n), generator=g, dtype=torch.int32)
    cid[:, 0] = -1
    gd = torch.Generator(device=device).manual_seed(0)
    x_stage = torch.randn(b, n, c, generator=gd, device=device).to(dtype)
    full = torch.randn(b, k, c, generator=gd, device=device).to(dtype)
    return [full, x_stage] + [t.to(device) for t in (keep, prune, cid)]


def _same_reconstruction(got, want) -> bool:
    """Bit-identical on the CPU; on CUDA the reference's scatter_add_ sums in atomic
    order ("residual"), so the results may differ by the last bit of the storage dtype
    ("nearest" and "frozen" are exact there too)."""
    if got.device.type == "cpu":
        return torch.equal(got, want)
    return torch.allclose(got.float(), want.float(), rtol=1.6e-2 if got.element_size() == 2 else 1e-5, atol=1e-5)


def _row(name, shape, dtype, ref_ms, compile_ms, torch_ms, ours_fn, check, floor, device, repeats, triton_ok):
    if triton_ok:
        ours_ms = common.time_ms(ours_fn, device, repeats=repeats)
        r = common.row(f"{name} {shape}", dtype, ref_ms, compile_ms, ours_ms, floor, device)
        r["torch_ms"] = torch_ms
        r["match"] = bool(check())
        return r
    return {"shape": f"{name} {shape}", "dtype": str(dtype).replace("torch.", ""), "ref_ms": ref_ms,
            "compile_ms": compile_ms, "ours_ms": None, "speedup": None, "vs_compile": None, "GB/s": None,
            "%floor": None, "torch_ms": torch_ms, "match": None}


def bench(shapes, dtypes, device, use_compile: bool, repeats: int) -> List[dict]:
    triton_ok = device.type == "cuda" or _common.interpreting()
    rows = []
    first = True
    for b, n, c in shapes:
        for dtype in dtypes:
            full, x_stage, keep, prune, cid = stage(b, n, c, dtype, device)
            k = keep.shape[1]
            e = x_stage.element_size()
            shape = f"B={b} N={n} K={k} C={c}"
            comp = use_compile and first
            first = False
            t = lambda fn: common.time_ms(fn, device, repeats=repeats, max_s=1.0)  # noqa: E731

            # gather: the kept rows of x_stage
            rows.append(_row(
                "gather", shape, dtype, t(lambda: ref.gather_tokens(x_stage, keep)),
                common.compiled_ms(ref.gather_tokens, (x_stage, keep), device, comp, repeats),
                t(lambda: torch_gather(x_stage, keep)), lambda: gs.gather_tokens(x_stage, keep),
                lambda: torch.equal(gs.gather_tokens(x_stage, keep), ref.gather_tokens(x_stage, keep)),
                2 * b * k * c * e + keep.numel() * 8, device, repeats, triton_ok))
            # scatter: the final kept features back into the stage map
            rows.append(_row(
                "scatter", shape, dtype, t(lambda: ref.scatter_tokens(x_stage, full, keep)),
                common.compiled_ms(ref.scatter_tokens, (x_stage, full, keep), device, comp, repeats),
                t(lambda: torch_scatter(x_stage, full, keep)), lambda: gs.scatter_tokens(x_stage, full, keep),
                lambda: torch.equal(gs.scatter_tokens(x_stage, full, keep), ref.scatter_tokens(x_stage, full, keep)),
                2 * b * n * c * e + keep.numel() * 8, device, repeats, triton_ok))
            # reconstruct_stage: residual mode, and nearest (similarity matmul + argmax in torch,
            # one Triton pass)
            for mode in ("residual", "nearest"):
                a = (full, x_stage, keep, prune, cid, CLUSTERS, mode)
                rows.append(_row(
                    "reconstruct" + ("" if mode == "residual" else f" {mode}"), shape, dtype,
                    t(lambda: pipeline.reconstruct_stage(*a)),
                    common.compiled_ms(pipeline.reconstruct_stage, a, device, comp, repeats),
                    None, lambda: gs.reconstruct_stage(*a),
                    lambda: _same_reconstruction(gs.reconstruct_stage(*a), pipeline.reconstruct_stage(*a)),
                    (b * k * c + 2 * b * n * c) * e + b * n * 12, device, repeats, triton_ok))
    return rows


def main(argv=None) -> None:
    common.triton_main("gather_scatter", "gather_tokens / scatter_tokens / reconstruct_stage", __doc__, bench, ([(8, 1025, 768)], [(8, 1025, 768), (8, 4097, 1024)]), ([torch.bfloat16], [torch.bfloat16, torch.float32]), ([(1, 65, 32)], [(2, 197, 96)]), argv)

if __name__ == "__main__":
    main()
