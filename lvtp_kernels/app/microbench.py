"""Timing and the tables of the benchmarks: ``lvtp bench e2e`` and the per-op
microbenchmarks of benchmarks/ (which import this module; the package never imports them).

Every benchmark prints one table (shape, dtype, reference ms, torch.compile ms, ours ms,
speedup, GB/s, % of the memory floor) and appends the same rows to a CSV file.
Times are medians over repeated runs after warm-up; on CUDA they use CUDA events.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

# relative to the working directory (the repository root, where the benchmarks run)
DEFAULT_CSV = os.path.join("benchmarks", "results", "bench.csv")
# `lvtp bench ops` runs each benchmark as a process with this set: append_csv then also
# writes its rows there, one JSON object per line, for the combined table.
ROWS_ENV = "LVTP_BENCH_ROWS"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call_ms(fn: Callable[[], object], device: torch.device) -> float:
    """One call of ``fn()`` in ms: CUDA events on a GPU, a perf_counter on the CPU."""
    if device.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_ms(fn: Callable[[], object], device, warmup: int = 3, repeats: int = 20, max_s: float = 2.0,
            min_runs: int = 3) -> float:
    """Median time of ``fn()`` in ms after ``warmup`` calls (CUDA events on a GPU, a
    synchronised perf_counter on the CPU); stops early, after ``min_runs``, past ``max_s``."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times: List[float] = []
    budget_end = time.perf_counter() + max_s
    for _ in range(repeats):
        times.append(time_call_ms(fn, device))
        if len(times) >= min_runs and time.perf_counter() > budget_end:
            break
    return statistics.median(times)


_COPY_GBPS: Dict[str, float] = {}


def copy_gbps(device) -> float:
    """Measured copy bandwidth (bytes read + written per second, GB/s) of a large copy:
    1 GiB on a GPU, 64 MiB on the CPU; measured once per device."""
    device = torch.device(device)
    key = str(device)
    if key not in _COPY_GBPS:
        n = (1 << 30) if device.type == "cuda" else (64 << 20)
        x = torch.ones(n // 4, dtype=torch.float32, device=device)
        y = torch.empty_like(x)
        ms = time_ms(lambda: y.copy_(x), device, warmup=3, repeats=20, max_s=2.0)
        _COPY_GBPS[key] = 2 * n / (ms * 1e-3) / 1e9
    return _COPY_GBPS[key]


def try_compile(fn: Callable, enabled: bool = True) -> Optional[Callable]:
    """``torch.compile(fn)`` or None when compile is unavailable (no compiler, interpreter)."""
    if not enabled or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    try:
        return torch.compile(fn, dynamic=False)
    except Exception:  # noqa: BLE001 - reported as a missing column, not a failure
        return None


def row(shape: str, dtype, ref_ms: float, compile_ms: Optional[float], ours_ms: float, floor_bytes: float,
        device) -> dict:
    """One table row: speedups against the reference and compile, GB/s and % of copy bandwidth."""
    gbps = floor_bytes / (ours_ms * 1e-3) / 1e9
    peak = copy_gbps(device)
    return {
        "shape": shape,
        "dtype": str(dtype).replace("torch.", ""),
        "ref_ms": ref_ms,
        "compile_ms": compile_ms,
        "ours_ms": ours_ms,
        "speedup": ref_ms / ours_ms,
        "vs_compile": (compile_ms / ours_ms) if compile_ms else None,
        "GB/s": gbps,
        "%floor": 100.0 * gbps / peak,
    }


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def print_table(title: str, rows: Sequence[dict], device) -> None:
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n## {title} ({name}; copy bandwidth {copy_gbps(device):.0f} GB/s)")
    if not rows:
        print("(no rows)")
        return
    cols = list(rows[0])
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(_fmt(r[c]).ljust(w) for c, w in zip(cols, widths)))


def append_csv(bench: str, rows: Sequence[dict], device, path: Optional[str] = None) -> str:
    """Append rows (with the benchmark name, device and date) to the CSV; returns its path."""
    if os.environ.get(ROWS_ENV):
        with open(os.environ[ROWS_ENV], "a") as f:
            for r in rows:
                f.write(json.dumps(dict(r, bench=bench), default=str) + "\n")
    path = path or os.environ.get("LVTP_BENCH_CSV", DEFAULT_CSV)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    fields = ["bench", "device", "date"] + sorted({k for r in rows for k in r})
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({"bench": bench, "device": name, "date": stamp, **r})
    return path


def compiled_ms(fn, args, device, enabled: bool, repeats: int) -> Optional[float]:
    """Time ``torch.compile(fn)(*args)``, or None when compile is off or fails."""
    compiled = try_compile(fn, enabled=enabled)
    if compiled is None:
        return None
    try:
        compiled(*args)
    except Exception as exc:  # noqa: BLE001 - reported as a missing column
        print(f"torch.compile failed ({type(exc).__name__}); column skipped")
        return None
    return time_ms(lambda: compiled(*args), device, repeats=repeats, max_s=1.0)


def compare(shape: str, dtype, ref_fn: Callable, ours_fn: Callable, args: tuple, floor_bytes: float, device,
            repeats: int, use_compile: bool, run_ours: bool) -> dict:
    """One row: ``ref_fn(*args)`` timed (and ``torch.compile``'d when ``use_compile``), then
    ``ours_fn(*args)`` timed and its max abs error against the reference, or a row with the
    'ours' columns empty when ``run_ours`` is False (no GPU and no interpreter)."""
    ref_ms = time_ms(lambda: ref_fn(*args), device, repeats=repeats, max_s=1.0)
    compile_ms = compiled_ms(ref_fn, args, device, use_compile, repeats)
    if not run_ours:
        return missing_row(shape, dtype, ref_ms, compile_ms, max_err=None)
    err = (ours_fn(*args).double() - ref_fn(*args).double()).abs().max().item()
    ours_ms = time_ms(lambda: ours_fn(*args), device, repeats=repeats)
    r = row(shape, dtype, ref_ms, compile_ms, ours_ms, floor_bytes, device)
    r["max_err"] = f"{err:.1e}"
    return r


def missing_row(shape: str, dtype, ref_ms: float, compile_ms: Optional[float], **extra) -> dict:
    """A row whose 'ours' columns are empty (the Triton kernel cannot run here)."""
    return {"shape": shape, "dtype": str(dtype).replace("torch.", ""), "ref_ms": ref_ms, "compile_ms": compile_ms,
            "ours_ms": None, "speedup": None, "vs_compile": None, "GB/s": None, "%floor": None, **extra}


def triton_main(name: str, title: str, doc: str, bench: Callable, gpu_shapes, gpu_dtypes, cpu_shapes,
                argv=None) -> None:
    """The command line shared by the Triton benchmarks. ``gpu_shapes``/``gpu_dtypes``/
    ``cpu_shapes`` are (quick, full) pairs; ``bench(shapes, dtypes, device, use_compile,
    repeats)`` returns the rows."""
    import argparse

    from lvtp_kernels.ops import _common

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, one dtype")
    ap.add_argument("--csv", default=None, help="CSV file to append to (default benchmarks/results/bench.csv)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = ap.parse_args(argv)
    pick = 0 if args.quick else 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        shapes, dtypes, repeats = gpu_shapes[pick], gpu_dtypes[pick], 10
    else:
        shapes, dtypes, repeats = cpu_shapes[pick], [torch.float32], 3
        if not _common.interpreting():
            print("no GPU and TRITON_INTERPRET unset: the Triton column is skipped")
    use_compile = not args.no_compile and (device.type == "cuda" or not args.quick)
    rows = bench(shapes, dtypes, device, use_compile=use_compile, repeats=repeats)
    print_table(title, rows, device)
    print("csv:", append_csv(name, rows, device, args.csv))
