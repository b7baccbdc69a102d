"""Markdown tables of docs/results.md from the JSON files `lvtp eval` wrote.

    python -m benchmarks.results_tables docs/results/val_methods.json docs/results/val_ablations.json
"""

from __future__ import annotations

import json
import sys
from typing import Dict, List


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def budget_table(res: dict, methods: List[str]) -> str:
    """Rows: methods; columns: per budget mIoU drop / boundary mIoU drop (and the values)."""
    budgets = sorted({r["target_reduction"] for r in res["results"]})
    by: Dict[tuple, dict] = {(r["method"], r["target_reduction"]): r for r in res["results"]}
    b = res["baseline"]
    head = "| method | " + " | ".join(f"{t:.0%}: mIoU (drop) | boundary (drop) | GFLOPs" for t in budgets) + " |"
    sep = "|---|" + "---:|---:|---:|" * len(budgets)
    lines = [
        f"Unpruned: mIoU **{b['miou']:.2f}**, boundary mIoU **{b['boundary_miou']:.2f}**, "
        f"{b['gflops']:.3f} GFLOPs/image, {b['images_per_s']:.1f} images/s.",
        "",
        head,
        sep,
    ]
    for m in methods:
        cells = []
        for t in budgets:
            r = by.get((m, t))
            if r is None:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{r['miou']:.2f} ({r['miou_drop']:+.2f})", f"{r['boundary_miou']:.2f} ({r['boundary_miou_drop']:+.2f})",
                      f"{r['gflops']:.3f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def speed_table(res: dict, methods: List[str]) -> str:
    budgets = sorted({r["target_reduction"] for r in res["results"]})
    by = {(r["method"], r["target_reduction"]): r for r in res["results"]}
    lines = ["| method | " + " | ".join(f"{t:.0%}: achieved cut, images/s" for t in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for m in methods:
        cells = []
        for t in budgets:
            r = by.get((m, t))
            cells.append("-" if r is None else f"{r['reduction']:.3f}, {r['images_per_s']:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_class_table(res: dict, methods: List[str], budget: float) -> str:
    names = list(res["baseline"]["per_class"])
    by = {(r["method"], r["target_reduction"]): r for r in res["results"]}
    lines = ["| class | unpruned | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for n in names:
        base = res["baseline"]["per_class"][n]
        cells = []
        for m in methods:
            v = by[(m, budget)]["per_class"][n]
            cells.append("-" if v is None or base is None else f"{v - base:+.2f}")
        lines.append(f"| {n} | {'-' if base is None else f'{base:.2f}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> int:
    for path in argv:
        res = _load(path)
        methods = list(dict.fromkeys(r["method"] for r in res["results"]))
        print(f"### {path}\n")
        print(budget_table(res, methods))
        print(speed_table(res, methods))
        budgets = sorted({r["target_reduction"] for r in res["results"]})
        mid = budgets[len(budgets) // 2]
        print(f"Per-class IoU change at {mid:.0%} (points):\n")
        print(per_class_table(res, methods, mid))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
