"""Tile sweep of the Triton ``attention_entropy`` kernel on the card at hand.

    python -m benchmarks.tune_attention [--quick] [--json OUT.json] [--write TABLE.json]

The kernel's tiles (BLOCK_M, BLOCK_N, warps, stages) came from offline compiles; on the
H200 run of 2026-11-28 it took 173 us per ViT-B/16 stage where cuDNN's flash attention
took 53 us. This script times a small grid of configs at the end-to-end shapes (ViT-B/16
at 512x512 and ViT-L/16 at 1024x1024, every stage's token count bucket), checks each
config's outputs against the default config's (same attention, same entropies up to
accumulation order), and with ``--write`` records the fastest config per (card, dtype
class, head dim, N bucket) in the package's table (``lvtp_kernels/assets/attention_tuned.json``),
which the launcher then uses on that card. Entries of other cards are kept.

Tuning runs in fp16 and serves fp16 and bf16 (the same tiles and instruction shapes);
the reported bf16 timing of the winner checks that. On the CPU (``--quick``, under
``TRITON_INTERPRET=1``) it runs one tiny shape and two configs: a test of this script,
not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from lvtp_kernels.app import microbench as common
from lvtp_kernels.ops import attention_triton as attn

QS = (0.5, 1.0, 2.0, 3.0)
# (B, H, N, D): ViT-B/16 512x512 batch 8 at its three stages of a 30 % schedule (1025 ->
# ~720 -> ~510 tokens), ViT-L/16 1024x1024 batch 8 (4097 -> ~2900), and batch 1.
GPU_SHAPES = [(8, 12, 1025, 64), (8, 12, 721, 64), (8, 12, 505, 64), (8, 16, 4097, 64), (8, 16, 2881, 64),
              (1, 12, 1025, 64), (1, 16, 4097, 64)]
# (BLOCK_M, BLOCK_N, warps, stages); the default heuristic's choice is always added.
GPU_CONFIGS = [(64, 32, 4, 2), (64, 64, 4, 3), (64, 64, 8, 3), (128, 32, 8, 2), (128, 64, 8, 2),
               (128, 64, 8, 4), (128, 64, 4, 3), (128, 128, 8, 2)]
CPU_SHAPES = [(1, 2, 50, 16)]
CPU_CONFIGS = [(16, 16, 4, 1), (32, 16, 4, 1)]


def _inputs(shape, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(shape, generator=g, device=device).to(dtype) for _ in range(3)]


def default_config(shape, dtype) -> Tuple[int, int, int, int]:
    _, _, n, d = shape
    bd = attn.n_bucket(d)
    ieee = dtype not in (torch.float16, torch.bfloat16)
    return attn._launch_config(n, bd, bd, ieee)


def sweep(shapes: Sequence[tuple], configs: Sequence[tuple], dtype, device, repeats: int, log=print) -> List[dict]:
    """One record per (shape, config): ms, or why it failed (launch error, wrong result)."""
    recs = []
    for shape in shapes:
        q, k, v = _inputs(shape, dtype, device)
        scale = shape[3] ** -0.5
        base = default_config(shape, dtype)
        want_out, want_ent = attn.attention_entropy(q, k, v, QS, scale, config=base)
        cands = list(dict.fromkeys([base, *configs]))
        sdpa_ms = common.time_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), device,
                                 repeats=repeats, max_s=1.0)
        for cfg in cands:
            rec = {"shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "config": list(cfg),
                   "default": cfg == base, "sdpa_ms": sdpa_ms}
            try:
                out, ent = attn.attention_entropy(q, k, v, QS, scale, config=cfg)
                common.sync(device)
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: not a candidate
                rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                recs.append(rec)
                log(f"  {shape} {cfg}: {rec['error']}")
                continue
            tol_out = 1e-5 if dtype == torch.float32 else 2e-2
            bad_out = (out.float() - want_out.float()).abs().max().item()
            bad_ent = (ent - want_ent).abs().max().item()
            if not (bad_out <= tol_out and bad_ent <= 1e-4):  # NaN fails too
                rec["error"] = f"disagrees with the default config: out {bad_out:.2e}, ent {bad_ent:.2e}"
                recs.append(rec)
                log(f"  {shape} {cfg}: {rec['error']}")
                continue
            rec["ms"] = common.time_ms(lambda: attn.attention_entropy(q, k, v, QS, scale, config=cfg), device,
                                       repeats=repeats, max_s=1.0)
            recs.append(rec)
            log(f"  {shape} {cfg}: {rec['ms']:.4f} ms (sdpa {sdpa_ms:.4f}){' default' if rec['default'] else ''}")
    return recs


dtype_key = attn.dtype_class


def bucket(shape) -> Tuple[int, int]:
    """(head dim block, N bucket): the table's shape key."""
    _, _, n, d = shape
    return attn.n_bucket(d), attn.n_bucket(n)  # the head-dim block is the same power-of-two rule


def best_entries(recs: Sequence[dict], device_name: str, key_dtype: str = "16bit") -> List[dict]:
    """The fastest valid config per (head dim, N bucket), over every shape in the bucket,
    keyed by ``device_name`` (the GPU family, attention_triton.gpu_family)
    (summed time of the bucket's shapes, so one config serves all of them)."""
    by_bucket: Dict[Tuple[int, int], Dict[tuple, List[float]]] = {}
    shapes_in: Dict[Tuple[int, int], set] = {}
    for r in recs:
        if "ms" not in r:
            continue
        key = bucket(r["shape"])
        by_bucket.setdefault(key, {}).setdefault(tuple(r["config"]), []).append(r["ms"])
        shapes_in.setdefault(key, set()).add(tuple(r["shape"]))
    out = []
    for (bd, np2), cfgs in sorted(by_bucket.items()):
        need = len(shapes_in[(bd, np2)])
        full = {c: sum(t) for c, t in cfgs.items() if len(t) == need}  # valid on every shape
        if not full:
            continue
        cfg = min(full, key=full.get)
        default = [r for r in recs if r.get("default") and "ms" in r and bucket(r["shape"]) == (bd, np2)]
        out.append({"device": device_name, "dtype": key_dtype, "block_d": bd, "block_dv": bd, "np2": np2,
                    "config": list(cfg), "ms": round(full[cfg], 5),
                    "default_ms": round(sum(r["ms"] for r in default), 5) if default else None,
                    "measured": time.strftime("%Y-%m-%d")})
    return out


def write_table(path: str, entries: Sequence[dict]) -> None:
    """Merge entries into the table: replace this card's entries of the same buckets."""
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError):
        table = {"version": 1, "entries": []}
    keys = {(e["device"], e["dtype"], e["block_d"], e["block_dv"], e["np2"]) for e in entries}
    kept = [e for e in table.get("entries", [])
            if (e.get("device"), e.get("dtype"), e.get("block_d"), e.get("block_dv"), e.get("np2")) not in keys]
    table["entries"] = kept + list(entries)
    # atomic: a run killed mid-write (gpu_check's time limit) leaves the old table whole
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    attn._tuned_entries.cache_clear()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one tiny shape, two configs (a smoke test)")
    ap.add_argument("--json", default=None, help="write every record here")
    ap.add_argument("--write", default=None, help="merge the winners into this table (the package's: "
                    "lvtp_kernels/assets/attention_tuned.json)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and not attn.interpreting():
        print("tune_attention: no CUDA device; on the CPU run it with TRITON_INTERPRET=1 (--quick)")
        return 2
    shapes = GPU_SHAPES if cuda else CPU_SHAPES
    configs = GPU_CONFIGS if cuda else CPU_CONFIGS
    if args.quick:
        shapes, configs = shapes[:1], configs[:2]
    name = torch.cuda.get_device_name(device) if cuda else "cpu (interpreter)"
    family = attn.gpu_family(device.index) if cuda else "cpu"  # the table's key: tiles serve the family
    t0 = time.time()
    dtype = torch.float16 if cuda else torch.float32
    print(f"tune_attention on {name}: {len(shapes)} shapes x {len(configs) + 1} configs, {dtype_key(dtype)}")
    # bucket by bucket, writing the table after each one: a time limit keeps what finished
    recs: List[dict] = []
    entries: List[dict] = []
    for key in dict.fromkeys(bucket(sh) for sh in shapes):
        got = sweep([sh for sh in shapes if bucket(sh) == key], configs, dtype, device, args.repeats)
        recs += got
        for e in best_entries(got, family, dtype_key(dtype)):
            e["card"] = name  # where it was measured (informational)
            if cuda:  # the entry serves bf16 too: its config must run and agree there as well
                sh = next(tuple(r["shape"]) for r in got)
                bf = sweep([sh], [tuple(e["config"])], torch.bfloat16, device, args.repeats, log=lambda *_: None)
                e["bf16_ms"] = next((r["ms"] for r in bf if r["config"] == e["config"] and "ms" in r), None)
                if e["bf16_ms"] is None:
                    print(f"  bucket {key}: {tuple(e['config'])} fails in bf16; no entry")
                    continue
            entries.append(e)
            if args.write:
                write_table(args.write, [e])
    print("\n| N bucket | head dim | best config (BM, BN, warps, stages) | ms (bucket's shapes) | default ms |")
    print("| --- | --- | --- | --- | --- |")
    for e in entries:
        print(f"| <= {e['np2']} | {e['block_d']} | {tuple(e['config'])} | {e['ms']:.4f} | {e['default_ms']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "records": recs, "entries": entries}, f, indent=1)
    if args.write and entries:
        print(f"wrote {len(entries)} entries to {args.write}")
    print(f"tune_attention: {time.time() - t0:.0f} s")
    return 0 if entries else 1


if __name__ == "__main__":
    raise SystemExit(main())
