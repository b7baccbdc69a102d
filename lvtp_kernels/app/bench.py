"""End-to-end speed of pruned ViT segmenters: ``lvtp bench e2e`` and ``lvtp bench ops``.

    lvtp bench e2e --device cuda --arch vit_b --size 512x512 --batch 8 --dtype fp16 \\
                   --reductions 0.2,0.3,0.45 --methods lvtp,tome --json out.json
    lvtp bench e2e --device cpu --arch bundled --batch 8        # the bundled CamVid ViT-Ti, 240x320
    lvtp bench ops [--quick]                                     # the per-op microbenchmarks, one table

What is timed: the whole forward (image -> logits) of a model with random weights
(``--arch``) or the bundled one (``--arch bundled``), unpruned and per method and
reduction, each method's schedule solved on its own cost model so GFLOPs are equal.
Warm-up first; then the median of many runs, timed with CUDA events on a GPU (inside
a CUDA graph replay where the capture works, ``--graphs auto``) and a synchronised
wall clock on the CPU. Each method row times the unpruned forward, the method and the
static forward (below) in interleaved rounds, one call of each per round, and its
``speedup`` is against the unpruned time of the same rounds: drift of a shared machine's
clock or load hits all three alike.

``overhead_ms`` is what the pruning itself costs: the method's forward minus a *static*
forward that runs the same blocks on the same token counts (taken from the method's own
run) but gets its tokens for free: it slices the first n tokens at each stage, runs plain
attention everywhere and pads back to N at the end. The difference is the scoring
(entropy-fused attention), clustering, selection, gathers and the reconstruction.

``--breakdown`` adds ``parts_ms`` to every LVTP row: the time per forward of each family of
``torch.ops.lvtp`` calls (torch.profiler over a few eager forwards; device time on a GPU,
CPU time on the CPU) -- entropy attention (which also computes the attention output the
layer needs anyway), edge energy, selection (clustering included), gathers and
reconstruction -- beside ``profiled_ms``, the wall time of those forwards.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .args import _device_arg, parse_hw
from .microbench import copy_gbps, sync, time_call_ms, time_ms  # noqa: F401  (time_call_ms: the CLI uses it)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ARCHS = ("vit_ti", "vit_s", "vit_b", "vit_l", "bundled")


# ---------------------------------------------------------------------------- timing
_sync = sync


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, max_s: float) -> float:
    """Median time of ``fn()`` in ms (at least 5 runs): :func:`microbench.time_ms`."""
    return time_ms(fn, device, warmup=warmup, repeats=repeats, max_s=max_s, min_runs=5)


@dataclass
class Timed:
    ms: float
    graph: bool  # timed as a CUDA graph replay
    note: str = ""


def _prepare(fn: Callable[[Tensor], Tensor], x: Tensor, graphs: str, warmup: int):
    """(callable to time, graph?, note): a CUDA graph replay of ``fn(x)`` where the capture
    works (``graphs`` auto/on), else ``fn`` itself after ``warmup`` calls."""
    dev = x.device
    if dev.type == "cuda" and graphs != "off":
        try:
            s = torch.cuda.Stream(dev)
            s.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(s):
                for _ in range(max(warmup, 2)):  # compiles the Triton kernels, fills caches
                    fn(x)
            torch.cuda.current_stream(dev).wait_stream(s)
            _sync(dev)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn(x)
            return g.replay, True, "", g
        except Exception as exc:  # noqa: BLE001 - reported, then timed eagerly
            if graphs == "on":
                raise
            note = f"graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); eager"
            _sync(dev)
            for _ in range(warmup):
                fn(x)
            return (lambda: fn(x)), False, note, None
    for _ in range(warmup):
        fn(x)
    return (lambda: fn(x)), False, "", None


def measure_interleaved(fns: Dict[str, Callable[[Tensor], Tensor]], x: Tensor, graphs: str, warmup: int,
                        repeats: int, max_s: float) -> Dict[str, Timed]:
    """Median time of each ``fns[name](x)``, timed in interleaved rounds (one call of each per
    round), so that clock or load drift on a shared machine hits every variant alike; at
    least 5 rounds, at most ``repeats``, stopping after ``max_s`` seconds."""
    dev = x.device
    prepared = {}
    with torch.inference_mode():
        for name, fn in fns.items():
            prepared[name] = _prepare(fn, x, graphs, warmup)
        _sync(dev)
        times: Dict[str, List[float]] = {name: [] for name in fns}
        end_by = time.perf_counter() + max_s
        for r in range(repeats):
            for name, (call, _, _, _) in prepared.items():
                times[name].append(time_call_ms(call, dev))
            if r >= 4 and time.perf_counter() > end_by:
                break
    out = {name: Timed(statistics.median(times[name]), prepared[name][1], prepared[name][2]) for name in fns}
    del prepared
    return out


def peak_memory_mb(fn: Callable[[Tensor], Tensor], x: Tensor) -> Optional[float]:
    """Peak CUDA memory allocated during one eager ``fn(x)`` (MB), or None on the CPU."""
    if x.device.type != "cuda":
        return None
    _sync(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    with torch.inference_mode():
        fn(x)
    _sync(x.device)
    return torch.cuda.max_memory_allocated(x.device) / 2**20


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate of this device in ``dtype`` (TFLOP/s): 8192^3 on a GPU,
    2048^3 on the CPU."""
    n = 8192 if device.type == "cuda" else 2048
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    ms = median_ms(lambda: a @ b, device, warmup=3, repeats=10, max_s=3.0)
    return 2 * n**3 / (ms * 1e-3) / 1e12


# ---------------------------------------------------------------------------- models
_BUILT: Dict[tuple, torch.nn.Module] = {}


def build(arch: str, size: Optional[Tuple[int, int]], device: torch.device, dtype: torch.dtype, seed: int = 0,
          classes: int = 150):
    """(model, image size): random weights for a preset (a linear decoder to ``classes``
    classes, logits upsampled to the image), or the bundled CamVid model (11 classes)."""
    from ..models import vit

    if arch == "bundled":
        from ..models.reference import load_reference

        model = load_reference()
        size = size or tuple(model.cfg.img_size)
    elif arch in vit.PRESETS:
        size = size or (512, 512)
        key = (arch, size, seed, classes)
        if key not in _BUILT:  # random init of a ViT-L takes seconds: once per process
            _BUILT.clear()
            _BUILT[key] = vit.build_model(arch, seed=seed, img_size=size, num_classes=classes)
        model = copy.deepcopy(_BUILT[key])
    else:
        raise ValueError(f"--arch must be one of {ARCHS}, got {arch!r}")
    return model.to(device=device, dtype=dtype).eval(), size


def static_forward(model, counts: Sequence[int]) -> Callable[[Tensor], Tensor]:
    """The model's forward on the given per-block token counts with free selection:
    the first n tokens are kept, plain attention everywhere, zeros padded back at the end."""
    p = model.num_prefix_tokens

    def run(image: Tensor) -> Tensor:
        x, grid = model.embed(image)
        n0 = x.shape[1]
        for blk, n in zip(model.blocks, counts):
            if x.shape[1] != n:
                x = x[:, :n]
            x = blk(x)
        if x.shape[1] != n0:
            x = F.pad(x, (0, 0, 0, n0 - x.shape[1]))
        x = model.norm(x)
        return model.decoder(x[:, p:], grid, (image.shape[-2], image.shape[-1]))

    return run


def schedule_counts(model, schedule, n0: int) -> List[int]:
    """The tokens entering each block under ``schedule``: every method keeps (or merges
    down to) ``P + budget(n, P, keep_ratio)`` tokens after a stage (python_ref.ops.budget)."""
    from python_ref.ops import budget
    from python_ref.pipeline import active_stages

    stages = active_stages(schedule, len(model.blocks))
    p, n, out = model.num_prefix_tokens, n0, []
    for i in range(len(model.blocks)):
        out.append(n)
        if i in stages:
            n = p + budget(n, p, stages[i])
    return out


# ---------------------------------------------------------------------------- e2e
PARTS = {  # torch.ops.lvtp op -> overhead part (top-level ops only: their backends are children)
    "lvtp::attention_entropy": "entropy_attention", "lvtp::tsallis_entropy": "entropy_attention",
    "lvtp::patch_edge_energy": "edge",
    "lvtp::select": "selection", "lvtp::kmeans": "selection",
    "lvtp::prune": "selection",
    "lvtp::gather_tokens": "gather_scatter", "lvtp::scatter_tokens": "gather_scatter",
    "lvtp::reconstruct_stage": "reconstruction",
}


def overhead_parts(fn: Callable[[Tensor], Tensor], x: Tensor, forwards: int = 3) -> dict:
    """Per-forward ms of each overhead part of ``fn`` (eager, torch.profiler), plus
    ``profiled_ms``: the wall time per forward of the profiled forwards themselves."""
    dev = x.device
    acts = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode():
        fn(x)  # warm (compiles, caches) outside the profile
        _sync(dev)
        with torch.profiler.profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for _ in range(forwards):
                fn(x)
            _sync(dev)
            wall = (time.perf_counter() - t0) * 1e3 / forwards
    parts = {name: 0.0 for name in dict.fromkeys(PARTS.values())}
    calls = {name: 0 for name in parts}
    for ev in prof.key_averages():
        part = PARTS.get(ev.key)
        if part is None:
            continue
        if dev.type == "cuda":
            us = getattr(ev, "device_time_total", None)
            us = getattr(ev, "cuda_time_total", 0.0) if us is None else us
        else:
            us = ev.cpu_time_total
        parts[part] += us / 1e3 / forwards
        calls[part] += ev.count // forwards
    return {"parts_ms": parts, "calls_per_forward": calls, "profiled_ms": wall}


def run_e2e(arch: str = "vit_b", size: Optional[Tuple[int, int]] = None, batch: int = 8, dtype: str = "fp16",
            device: str = "cuda", reductions: Sequence[float] = (0.2, 0.3, 0.45), methods: Sequence[str] = ("lvtp",),
            graphs: str = "auto", repeats: int = 50, max_s: float = 5.0, warmup: int = 5, overhead: bool = True,
            ceilings: bool = True, threads: Optional[int] = None, classes: int = 150, breakdown: bool = False,
            log: Optional[Callable[[str], None]] = None) -> dict:
    """The e2e benchmark; returns the JSON record (see the module docstring). ``log``: progress
    lines (default: this module's logger)."""
    log = log or logging.getLogger(__name__).info
    from .baselines import make_runner, parse_method, release
    from .evaluate import method_gflops, method_schedule

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    if graphs not in ("auto", "on", "off"):
        raise ValueError(f"--graphs must be auto, on or off, got {graphs!r}")
    for r in reductions:
        if not (0.0 < r < 1.0):
            raise ValueError(f"--reductions must be in (0, 1), got {r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if threads:
        torch.set_num_threads(threads)
    tdtype = DTYPES[dtype]
    if dev.type == "cpu" and tdtype != torch.float32:
        log(f"note: {dtype} on the CPU is emulated by PyTorch and slow; fp32 is the CPU's dtype")
    if classes < 1:
        raise ValueError(f"--classes must be >= 1, got {classes}")
    model, size = build(arch, size, dev, tdtype, classes=classes)
    methods_p = [parse_method(m) for m in methods]
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(batch, 3, *size, device=dev, generator=g).to(tdtype)
    n_tokens = model.num_prefix_tokens + (size[0] // model.cfg.patch_size) * (size[1] // model.cfg.patch_size)

    rec: dict = {
        "config": {"arch": arch, "size": list(size), "batch": batch, "dtype": dtype, "device": str(dev),
                   "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                   "threads": torch.get_num_threads(), "tokens": n_tokens, "graphs": graphs,
                   "classes": model.cfg.num_classes,
                   "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")},
    }
    if ceilings:
        rec["ceilings"] = {"copy_GBps": copy_gbps(dev), "matmul_TFLOPs": matmul_tflops(dev, tdtype)}
    nn_map_mb = batch * model.blocks[0].attn.num_heads * n_tokens**2 * x.element_size() / 2**20

    base_gflops = method_gflops(model, parse_method("lvtp"), [], size)
    with torch.inference_mode():
        t = measure_interleaved({"base": model}, x, graphs, warmup, repeats, max_s)["base"]
    rec["baseline"] = {"ms": t.ms, "images_per_s": batch / (t.ms * 1e-3), "gflops": base_gflops,
                       "graph": t.graph, "peak_mem_mb": peak_memory_mb(model, x), "note": t.note}
    if ceilings:
        rate = base_gflops * batch / (t.ms * 1e-3) / 1e3
        rec["baseline"]["TFLOPs"] = rate
        rec["baseline"]["pct_matmul_peak"] = 100 * rate / rec["ceilings"]["matmul_TFLOPs"]
    rec["nn_attention_map_mb"] = nn_map_mb
    log(f"baseline {arch} {size[0]}x{size[1]} batch {batch} {dtype} on {rec['config']['device_name']}: "
        f"{t.ms:.2f} ms, {batch / (t.ms * 1e-3):.1f} img/s{' (graph)' if t.graph else ''} {t.note}")

    results = []
    for m in methods_p:
        for r in reductions:
            schedule = method_schedule(model, m, r, size)
            gflops = method_gflops(model, m, schedule, size)
            # LVTP patches its model in place: it gets a copy, so the unpruned and static
            # forwards can be timed in the same rounds
            pm = copy.deepcopy(model) if m.kind == "lvtp" else model
            run = make_runner(pm, m, schedule)
            counts = schedule_counts(model, schedule, n_tokens)
            fns = {"base": model, "run": run}
            if overhead:
                fns["static"] = static_forward(model, counts)
            try:
                t = measure_interleaved(fns, x, graphs, warmup, repeats, max_s)
                peak = peak_memory_mb(run, x)
                parts = overhead_parts(run, x) if breakdown and m.kind == "lvtp" else None
            finally:
                release(pm)
                del pm, run, fns
            tb, tr = t["base"], t["run"]
            over = (tr.ms - t["static"].ms) if overhead else None
            row = {"method": m.name, "reduction": r, "schedule": [list(s) for s in schedule], "gflops": gflops,
                   "ms": tr.ms, "images_per_s": batch / (tr.ms * 1e-3), "speedup": tb.ms / tr.ms,
                   "baseline_ms": tb.ms, "ideal_speedup": base_gflops / gflops, "overhead_ms": over,
                   "overhead_pct": (100 * over / tr.ms) if over is not None else None,
                   "static_ms": t["static"].ms if overhead else None, "graph": tr.graph,
                   "peak_mem_mb": peak, "tokens_per_block": counts, "note": tr.note}
            if parts is not None:
                row.update(parts)
            results.append(row)
            log(f"{m.name:>8} {r:.2f}: {tr.ms:.2f} ms vs {tb.ms:.2f} ms unpruned in the same rounds, "
                f"{row['speedup']:.2f}x (ideal {row['ideal_speedup']:.2f}x), overhead "
                f"{('%.2f ms (%.1f %%)' % (over, row['overhead_pct'])) if over is not None else '-'} {tr.note}")
            if parts is not None:
                log("          parts per forward (eager, profiled): " + ", ".join(
                    f"{k} {v:.2f} ms" for k, v in parts["parts_ms"].items()) + f" of {parts['profiled_ms']:.2f} ms")
    rec["results"] = results
    return rec


def format_table(rec: dict) -> str:
    c, b = rec["config"], rec["baseline"]
    lines = [
        f"### {c['arch']} {c['size'][0]}x{c['size'][1]}, batch {c['batch']}, {c['dtype']}, {c['device_name']} "
        f"({c['tokens']} tokens, {c.get('classes', '?')} classes, torch {c['torch']}, {c['date']})",
        "",
    ]
    if "ceilings" in rec:
        lines += [f"measured ceilings: copy {rec['ceilings']['copy_GBps']:.0f} GB/s, matmul "
                  f"{rec['ceilings']['matmul_TFLOPs']:.1f} TFLOP/s; unpruned forward at "
                  f"{b.get('TFLOPs', float('nan')):.1f} TFLOP/s = {b.get('pct_matmul_peak', float('nan')):.0f} % of it", ""]
    lines += ["| method | reduction | GFLOPs/img | ms | img/s | unpruned ms (same rounds) | speedup | ideal | "
              "overhead ms | overhead % | peak MB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def mb(v):
        return "-" if v is None else f"{v:.0f}"

    lines.append(f"| unpruned | 0 | {b['gflops']:.2f} | {b['ms']:.2f} | {b['images_per_s']:.1f} | {b['ms']:.2f} | 1.00x | "
                 f"1.00x | - | - | {mb(b['peak_mem_mb'])} |")
    for r in rec["results"]:
        o = "-" if r["overhead_ms"] is None else f"{r['overhead_ms']:.2f}"
        op = "-" if r["overhead_pct"] is None else f"{r['overhead_pct']:.1f}"
        bms = f"{r['baseline_ms']:.2f}" if r.get("baseline_ms") is not None else "-"
        lines.append(f"| {r['method']} | {r['reduction']:.2f} | {r['gflops']:.2f} | {r['ms']:.2f} | "
                     f"{r['images_per_s']:.1f} | {bms} | {r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {o} | {op} | "
                     f"{mb(r['peak_mem_mb'])} |")
    with_parts = [r for r in rec["results"] if r.get("parts_ms")]
    if with_parts:
        names = list(with_parts[0]["parts_ms"])
        lines += ["", "overhead parts per forward (ms; eager forwards under torch.profiler, "
                  + ("device time" if c["device"].startswith("cuda") else "CPU time") + "):", "",
                  "| method | reduction | " + " | ".join(names) + " | profiled forward ms |",
                  "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
        for r in with_parts:
            lines.append(f"| {r['method']} | {r['reduction']:.2f} | "
                         + " | ".join(f"{r['parts_ms'][k]:.2f}" for k in names) + f" | {r['profiled_ms']:.2f} |")
    notes = {x["note"] for x in [b] + rec["results"] if x.get("note")}
    if c["device"].startswith("cuda"):
        lines += ["", f"an N x N attention map of one layer would take {rec['nn_attention_map_mb']:.0f} MB"]
        graphs = all(x["graph"] for x in [b] + rec["results"])
        lines.append("timed as CUDA graph replays" if graphs else "timed eagerly (some or all)")
    lines += [f"note: {n}" for n in sorted(notes)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- ops
OP_BENCHES = ("bench_tsallis", "bench_attention", "bench_tokens", "bench_edge", "bench_select")


def _benchmarks_dir() -> str:
    """The repository's benchmarks/ folder (beside lvtp_kernels in a checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = os.path.join(root, "benchmarks")
    if not os.path.isfile(os.path.join(folder, "bench_select.py")):
        raise RuntimeError("bench ops runs the repository checkout's benchmarks/bench_*.py; "
                           f"there is none beside this package ({folder})")
    return folder


def run_ops(quick: bool = False, only: Optional[Sequence[str]] = None,
            log: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Run the per-op microbenchmarks, each as ``python -m benchmarks.<name>`` in the
    checkout (their own tables print as they go), and return every row, tagged with its
    benchmark, for one combined table. The package runs them; it never imports them."""
    import subprocess
    import tempfile

    from .microbench import ROWS_ENV

    log = log or logging.getLogger(__name__).info
    names = list(only) if only else list(OP_BENCHES)
    for n in names:
        if n not in OP_BENCHES:
            raise ValueError(f"unknown benchmark {n!r} in --only; known: {OP_BENCHES}")
    root = os.path.dirname(_benchmarks_dir())
    rows: List[dict] = []
    for n in names:
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as f:
            env = dict(os.environ, **{ROWS_ENV: f.name})
            cmd = [sys.executable, "-m", f"benchmarks.{n}"] + (["--quick"] if quick else [])
            rc = subprocess.run(cmd, cwd=root, env=env).returncode
            if rc:
                log(f"{n}: exited with {rc}")
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def ops_table(rows: Sequence[dict]) -> str:
    """One markdown table over every op benchmark: op, shape, dtype, reference ms, ours ms,
    speedup, GB/s and % of the measured copy bandwidth where the benchmark has them."""
    def f(v, fmt="{:.3f}"):
        if v is None or v == "":
            return "-"
        try:
            return fmt.format(float(v))
        except (TypeError, ValueError):
            return str(v)

    out = ["| op | shape | dtype | reference ms | ours ms | speedup | GB/s | % copy bw |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        shape = r.get("shape") or " ".join(f"{k}={r[k]}" for k in ("B", "n", "N", "C", "d", "k", "allocation", "threads") if k in r)
        ref = r.get("ref_ms", r.get("python_ref_ms"))
        out.append(f"| {r['bench']} | {shape} | {r.get('dtype', 'float32')} | {f(ref)} | {f(r.get('ours_ms'))} | "
                   f"{f(r.get('speedup'), '{:.2f}x')} | {f(r.get('GB/s'), '{:.0f}')} | {f(r.get('%floor'), '{:.0f}')} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="end-to-end speed (e2e) and per-op microbenchmarks (ops)")
    bsub = p.add_subparsers(dest="bench_cmd", required=True)
    e = bsub.add_parser("e2e", help="pruned vs unpruned forward time of a ViT segmenter")
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=_device_arg,
                   help="cpu, cuda or cuda:N (default: cuda when available)")
    e.add_argument("--arch", default=None, choices=ARCHS,
                   help="random-weight preset, or the bundled CamVid model (default: vit_b on cuda, bundled on cpu)")
    e.add_argument("--size", default=None, help="HxW (default 512x512; the bundled model's own 240x320)")
    e.add_argument("--batch", type=int, default=8)
    e.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default fp16 on cuda, fp32 on cpu")
    e.add_argument("--reductions", default="0.2,0.3,0.45", help="comma-separated FLOPs reductions")
    e.add_argument("--methods", default="lvtp", help="comma-separated methods (lvtp, lvtp-spec, tome, evit, random, ...)")
    e.add_argument("--graphs", default="auto", choices=("auto", "on", "off"), help="CUDA graphs (GPU only)")
    e.add_argument("--repeats", type=int, default=50)
    e.add_argument("--max-seconds", type=float, default=5.0, help="time cap per measurement")
    e.add_argument("--warmup", type=int, default=5)
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    e.add_argument("--no-overhead", action="store_true", help="skip the static forward behind overhead_ms")
    e.add_argument("--no-ceilings", action="store_true", help="skip measuring copy bandwidth and matmul rate")
    e.add_argument("--classes", type=int, default=150,
                   help="decoder classes of a random-weight preset (150: ADE20K; its logits are upsampled to the image)")
    e.add_argument("--breakdown", action="store_true",
                   help="per LVTP row, the time of each overhead part (torch.profiler, eager)")
    e.add_argument("--json", default=None, help="write the record here")
    e.add_argument("--md", default=None, help="append the markdown table here")
    e.set_defaults(func=cmd_e2e)
    o = bsub.add_parser("ops", help="the per-op microbenchmarks of benchmarks/, one table")
    o.add_argument("--quick", action="store_true")
    o.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(OP_BENCHES))
    o.add_argument("--md", default=None, help="write the combined table here")
    o.set_defaults(func=cmd_ops)


def cmd_e2e(args: argparse.Namespace) -> int:
    dev = args.device
    if dev.startswith("cuda"):  # cuda:N -> that device current, the benchmark runs on "cuda"
        if not torch.cuda.is_available():
            raise ValueError(f"--device {dev}: no CUDA device is available (torch {torch.__version__})")
        if ":" in dev:
            index = int(dev.split(":")[1])
            if index >= torch.cuda.device_count():
                raise ValueError(f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s)")
            torch.cuda.set_device(index)
        dev = "cuda"
    arch = args.arch or ("vit_b" if dev == "cuda" else "bundled")
    dtype = args.dtype or ("fp16" if dev == "cuda" else "fp32")
    try:
        size = parse_hw(args.size) if args.size else None
        reductions = [float(v) for v in args.reductions.split(",") if v.strip()]
    except ValueError as exc:
        print(f"lvtp bench e2e: {exc}", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        rec = run_e2e(arch, size, args.batch, dtype, dev, reductions, methods, args.graphs, args.repeats,
                      args.max_seconds, args.warmup, not args.no_overhead, not args.no_ceilings, args.threads,
                      args.classes, args.breakdown, log=print)
    except ValueError as exc:
        print(f"lvtp bench e2e: {exc}", file=sys.stderr)
        return 2
    table = format_table(rec)
    print()
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)
    if args.md:
        with open(args.md, "a") as f:
            f.write(table + "\n\n")
    return 0


def cmd_ops(args: argparse.Namespace) -> int:
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    try:
        rows = run_ops(args.quick, only, log=print)
    except (RuntimeError, ValueError) as exc:
        print(f"lvtp bench ops: {exc}", file=sys.stderr)
        return 2
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    table = f"### lvtp ops on {name} ({time.strftime('%Y-%m-%d')})\n\n" + ops_table(rows)
    print()
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    return 0 if rows else 1
