"""Shared helpers of the microbenchmarks: timing, the memory floor, tables and CSV.

Every benchmark prints one table (shape, dtype, reference ms, torch.compile ms, ours ms,
speedup, GB/s, % of the memory floor) and appends the same rows to a CSV file.
Times are medians over repeated runs after warm-up; on CUDA they use CUDA events.
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from lvtp_kernels.bench import time_call_ms

DEFAULT_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench.csv")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device, warmup: int = 3, repeats: int = 20, max_s: float = 2.0) -> float:
    """Median wall time of ``fn()`` in ms (CUDA events on a GPU); stops early after ``max_s``."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times: List[float] = []
    budget_end = time.perf_counter() + max_s
    for _ in range(repeats):
        times.append(time_call_ms(fn, device))
        if len(times) >= 3 and time.perf_counter() > budget_end:
            break
    return statistics.median(times)


_COPY_GBPS: Dict[str, float] = {}
# (bench, rows) of every append_csv call, for `lvtp bench ops`' combined table.
COLLECTED: List[tuple] = []


def copy_bandwidth_gbps(device) -> float:
    """Measured device copy bandwidth (read + write bytes / time) of a large clone, GB/s."""
    device = torch.device(device)
    key = str(device)
    if key not in _COPY_GBPS:
        n = (256 << 20) if device.type == "cuda" else (32 << 20)
        x = torch.empty(n // 4, dtype=torch.float32, device=device).fill_(1.0)
        y = torch.empty_like(x)
        ms = time_ms(lambda: y.copy_(x), device, warmup=3, repeats=20)
        _COPY_GBPS[key] = 2 * x.numel() * 4 / (ms * 1e-3) / 1e9
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
    peak = copy_bandwidth_gbps(device)
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
    print(f"\n## {title} ({name}; copy bandwidth {copy_bandwidth_gbps(device):.0f} GB/s)")
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
    COLLECTED.append((bench, list(rows)))
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
