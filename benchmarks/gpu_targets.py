"""PASS/FAIL of issue [H]'s GPU targets from an e2e JSON (benchmarks/e2e_suite.py --preset check).

    python -m benchmarks.gpu_targets E2E_JSON [--md OUT.md]

Targets (ViT-B/16 512x512 fp16 with the fixed head, CUDA graphs unless named eager):
  b8: LVTP >= 1.30x at 30 %, >= 1.55x at 45 %; >= 97 % of the static ceiling (static_ms / ms);
      overhead (ms - static_ms) <= 3 % of the unpruned forward; faster than ToMe at equal GFLOPs
  b1: LVTP >= 1.15x at 30 %
  eager b8: speedup >= 90 % of the graph row's
  ViT-L/16 1024x1024: speedup at least the ViT-B b8 one at the same reduction
Also printed per row: the static ceiling (baseline_ms / static_ms) and overhead %.
Exit status 0 when every target that has its rows passes, 1 otherwise (missing rows: "n/a").
"""

from __future__ import annotations

import argparse
import json
from typing import Dict, List, Optional, Tuple


def _rows(records) -> Dict[Tuple, dict]:
    out = {}
    for rec in records:
        cfg = rec["config"]
        eager = cfg.get("graphs") == "off"
        for r in rec["results"]:
            key = (cfg["arch"], cfg["batch"], eager, r["method"], round(r["reduction"], 3))
            out[key] = r
    return out


def _mode(cfg) -> str:
    """How the row's forwards ran: CUDA graphs, or eager (always eager on the CPU)."""
    return "eager" if cfg.get("graphs") == "off" or cfg.get("device", "cuda").startswith("cpu") else "graph"


def evaluate(records) -> List[Tuple[str, str, str]]:
    """[(target, measured, PASS | FAIL | n/a)]."""
    rows = _rows(records)
    res: List[Tuple[str, str, str]] = []

    def get(arch, batch, method, red, eager=False) -> Optional[dict]:
        return rows.get((arch, batch, eager, method, red))

    def judge(name: str, value: Optional[float], ok, fmt="{:.3f}"):
        if value is None:
            res.append((name, "-", "n/a"))
        else:
            res.append((name, fmt.format(value), "PASS" if ok(value) else "FAIL"))

    for red, target in ((0.3, 1.30), (0.45, 1.55)):
        r = get("vit_b", 8, "lvtp", red)
        judge(f"ViT-B b8 speedup at {red:.0%} >= {target}x", r and r["speedup"], lambda v, t=target: v >= t)
        judge(f"ViT-B b8 at {red:.0%}: >= 97 % of the static ceiling", r and r.get("static_ms") and r["static_ms"] / r["ms"],
              lambda v: v >= 0.97)
        judge(f"ViT-B b8 at {red:.0%}: overhead <= 3 % of the unpruned forward",
              r and r.get("overhead_ms") is not None and r["overhead_ms"] / r["baseline_ms"], lambda v: v <= 0.03,
              "{:.1%}")
        t = get("vit_b", 8, "tome", red)
        judge(f"ViT-B b8 at {red:.0%}: faster than ToMe (ToMe ms / LVTP ms > 1)", r and t and t["ms"] / r["ms"],
              lambda v: v > 1.0)
        e = get("vit_b", 8, "lvtp", red, eager=True)
        judge(f"ViT-B b8 at {red:.0%}: eager >= 90 % of the graph speedup", r and e and e["speedup"] / r["speedup"],
              lambda v: v >= 0.9)
        big = get("vit_l", 8, "lvtp", red) or get("vit_l", 2, "lvtp", red)
        judge(f"ViT-L at {red:.0%}: speedup >= ViT-B b8's", r and big and big["speedup"] / r["speedup"],
              lambda v: v >= 1.0)
    r = get("vit_b", 1, "lvtp", 0.3)
    judge("ViT-B b1 speedup at 30 % >= 1.15x", r and r["speedup"], lambda v: v >= 1.15)
    return res


def table(records) -> str:
    lines = ["| arch | batch | graphs | method | reduction | ms | unpruned ms | speedup | static ceiling | "
             "% of ceiling | overhead % of unpruned |", "|" + " --- |" * 11]
    for rec in records:
        cfg = rec["config"]
        for r in rec["results"]:
            ceil = r["baseline_ms"] / r["static_ms"] if r.get("static_ms") else None
            lines.append(
                f"| {cfg['arch']} | {cfg['batch']} | {_mode(cfg)} | "
                f"{r['method']} | {r['reduction']:.2f} | {r['ms']:.2f} | {r['baseline_ms']:.2f} | {r['speedup']:.2f}x | "
                + (f"{ceil:.2f}x | {100 * r['static_ms'] / r['ms']:.1f} % | "
                   f"{100 * r['overhead_ms'] / r['baseline_ms']:.1f} % |" if ceil else "- | - | - |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--md", default=None)
    args = ap.parse_args(argv)
    with open(args.json) as f:
        records = json.load(f)
    res = evaluate(records)
    dev = records[0]["config"].get("device_name", "?") if records else "?"
    date = records[0]["config"].get("date", "?") if records else "?"
    text = [f"# [H] GPU targets ({dev}, {date})", "", table(records), "", "| target | measured | verdict |",
            "| --- | --- | --- |"] + [f"| {a} | {b} | {c} |" for a, b, c in res]
    out = "\n".join(text) + "\n"
    print(out)
    if args.md:
        with open(args.md, "w") as f:
            f.write(out)
    return 1 if any(v == "FAIL" for _, _, v in res) else 0


if __name__ == "__main__":
    raise SystemExit(main())
