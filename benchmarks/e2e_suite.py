"""The end-to-end matrix of issue [E] in one process (models built once per arch).

    python -m benchmarks.e2e_suite --out DIR [--preset gpu|cpu|quick] [--profile]

gpu:   ViT-B/16 at 512x512 and ViT-L/16 at 1024x1024, batch 8 and 1, fp16 and bf16;
       LVTP and ToMe at 20/30/45 % (ToMe on the batch-8 fp16 rows; LVTP with the spec's 10
       k-means iterations beside the package's 3 on the first row), as `lvtp bench e2e`.
cpu:   the bundled ViT-Ti at 240x320, batch 8, fp32; LVTP, ToMe and random.
quick: one small config per device (a smoke test).
check: [H]'s targets (benchmarks/gpu_check.sh): ViT-B/16 512x512 b8 (LVTP fast and exact, ToMe)
       and b1, one eager b8 row, ViT-L/16 1024x1024 b2; judged by benchmarks/gpu_targets.py.

Writes DIR/e2e.json (every record), DIR/e2e.md (every table) and, with --profile, DIR/profile.txt:
torch.profiler's top kernels of one pruned forward per arch (eager) at 30 %.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from tqdm.auto import tqdm

from lvtp_kernels.app import bench

GPU = [
    # arch, size, batch, dtype, methods
    ("vit_b", (512, 512), 8, "fp16", "lvtp,lvtp-iters10,tome"),  # iters10: the spec's k-means count
    ("vit_b", (512, 512), 8, "bf16", "lvtp"),
    ("vit_b", (512, 512), 1, "fp16", "lvtp"),
    ("vit_b", (512, 512), 1, "bf16", "lvtp"),
    ("vit_l", (1024, 1024), 8, "fp16", "lvtp,tome"),
    ("vit_l", (1024, 1024), 8, "bf16", "lvtp"),
    ("vit_l", (1024, 1024), 1, "fp16", "lvtp"),
    ("vit_l", (1024, 1024), 1, "bf16", "lvtp"),
]
CPU = [("bundled", None, 8, "fp32", "lvtp,tome,random")]
# [H]'s targets in a few device-minutes (benchmarks/gpu_check.sh): graph rows, then one eager row
CHECK = [
    ("vit_b", (512, 512), 8, "fp16", "lvtp,lvtp-exact,tome"),
    ("vit_b", (512, 512), 1, "fp16", "lvtp"),
    ("vit_b", (512, 512), 8, "fp16", "lvtp", "off"),  # eager: no CUDA graph
    ("vit_l", (1024, 1024), 2, "fp16", "lvtp,tome"),
]
QUICK = {"cuda": [("vit_ti", (224, 224), 2, "fp16", "lvtp,tome")], "cpu": [("vit_ti", (224, 224), 2, "fp32", "lvtp")]}


def profile_pruned(arch, size, batch, dtype, device, reduction=0.3, rows=25) -> str:
    """torch.profiler table of a few eager pruned forwards (LVTP defaults)."""
    import lvtp_kernels
    from lvtp_kernels.app.baselines import parse_method
    from lvtp_kernels.app.evaluate import method_schedule

    dev = torch.device(device)
    model, size = bench.build(arch, size, dev, bench.DTYPES[dtype])
    sched = method_schedule(model, parse_method("lvtp"), reduction, size)
    lvtp_kernels.patch(model, schedule=sched)
    x = torch.rand(batch, 3, *size, device=dev).to(bench.DTYPES[dtype])
    acts = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        bench._sync(dev)
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(5):
                model(x)
            bench._sync(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    head = f"## profile: {arch} {size} batch {batch} {dtype} LVTP {reduction} (5 forwards, eager)\n"
    return head + prof.key_averages().table(sort_by=key, row_limit=rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default=None, choices=("gpu", "cpu", "quick", "check"))
    ap.add_argument("--reductions", default="0.2,0.3,0.45")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--max-seconds", type=float, default=2.0)
    ap.add_argument("--only", default=None, help="comma-separated row numbers of the preset")
    ap.add_argument("--classes", type=int, default=150, help="decoder classes of the random-weight models")
    ap.add_argument("--methods", default=None, help="comma-separated methods for every row (default: the preset's)")
    ap.add_argument("--breakdown", action="store_true", help="time each overhead part of the LVTP rows (profiled)")
    args = ap.parse_args(argv)
    preset = args.preset or ("gpu" if args.device == "cuda" else "cpu")
    configs = {"gpu": GPU, "cpu": CPU, "quick": QUICK[args.device], "check": CHECK}[preset]
    reductions = tuple(float(r) for r in args.reductions.split(","))
    if args.only:
        configs = [configs[int(i)] for i in args.only.split(",")]
    os.makedirs(args.out, exist_ok=True)
    records, tables = [], []
    ceilings = {}
    t0 = time.time()
    bar = tqdm(configs, desc="e2e suite", unit="config", dynamic_ncols=True)
    for arch, size, batch, dtype, methods, *rest in bar:
        graphs = rest[0] if rest else "auto"
        bar.set_postfix_str(f"{arch} {size} b{batch} {dtype}{' eager' if graphs == 'off' else ''}")
        methods = args.methods or methods
        t1 = time.time()
        try:
            rec = bench.run_e2e(arch, size, batch, dtype, args.device, reductions, methods.split(","),
                                graphs=graphs, repeats=args.repeats, max_s=args.max_seconds, ceilings=dtype not in ceilings,
                                classes=args.classes, breakdown=args.breakdown, log=tqdm.write)
        except Exception as exc:  # noqa: BLE001 - one failed config must not lose the others
            msg = f"### {arch} {size} batch {batch} {dtype}: FAILED {type(exc).__name__}: {exc}"
            tqdm.write(msg)
            tables.append(msg)
            continue
        if "ceilings" in rec:
            ceilings[dtype] = rec["ceilings"]
        else:
            rec["ceilings"] = ceilings[dtype]
            rec["baseline"]["TFLOPs"] = rec["baseline"]["gflops"] * batch / (rec["baseline"]["ms"] * 1e-3) / 1e3
            rec["baseline"]["pct_matmul_peak"] = 100 * rec["baseline"]["TFLOPs"] / ceilings[dtype]["matmul_TFLOPs"]
        rec["seconds"] = time.time() - t1
        records.append(rec)
        tables.append(bench.format_table(rec))
        tqdm.write(tables[-1])
        with open(os.path.join(args.out, "e2e.json"), "w") as f:
            json.dump(records, f, indent=1)
        with open(os.path.join(args.out, "e2e.md"), "w") as f:
            f.write("\n\n".join(tables) + "\n")
        torch.cuda.empty_cache() if args.device == "cuda" else None
    print(f"e2e suite: {len(records)}/{len(configs)} configs in {time.time() - t0:.0f} s")
    if args.profile:
        arch, size, batch, dtype = configs[0][:4]
        with open(os.path.join(args.out, "profile.txt"), "w") as f:
            f.write(profile_pruned(arch, size, batch, dtype, args.device))
        print(open(os.path.join(args.out, "profile.txt")).read())
    return 0 if len(records) == len(configs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
