"""The ``lvtp`` command line: ``info``, ``demo``, ``eval``, ``bench``, ``viz``, ``train-reference``.

Every subcommand reports a bad input (a missing, unreadable or corrupt file, a folder
without the CamVid layout, an argument out of range, an output path that cannot be
written) as one line on stderr, ``lvtp <cmd>: <problem>``, and exits 2; an unexpected
internal error is one line and exit 1, with the traceback when ``LVTP_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import sys
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .args import (  # noqa: F401  (MAX_SIDE: the tests read it here)
    CLIError, MAX_SIDE, _device_arg, _float_list, _int_at_least, _method_list,
    _one_line, _parse_size, _positive_float, _reduction, _scale_range, _strip_prefix, check_camvid_dir, check_output_dir, check_output_file, load_model_arg, resolve_device, writing,
)
from .data.camvid import read_image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_IMAGES = ("camvid_val_0016E5_07959", "camvid_val_0016E5_08027", "camvid_val_0016E5_08095")


# --------------------------------------------------------------------------- info
def _triton_status() -> Tuple[str, str]:
    if importlib.util.find_spec("triton") is None:
        return "not installed", "pip install triton"
    try:
        import triton

        version = triton.__version__
    except Exception as exc:  # a broken install should be reported, not crash `info`
        return "broken", f"import failed: {exc}"
    interp = os.environ.get("TRITON_INTERPRET", "0")
    return version, f"TRITON_INTERPRET={interp}"


def _ext_status() -> dict:
    from lvtp_kernels import _ext

    return _ext.status()


def info_dict() -> dict:
    import numpy
    import torch

    import lvtp_kernels
    from lvtp_kernels import registry

    triton_version, triton_note = _triton_status()
    cuda_ok = torch.cuda.is_available()
    table = registry.backend_table()
    forced_ops = {}
    try:
        impl = registry.requested_impl()
        if impl != "auto":
            forced_ops = {dev: registry.ops_with_backend(impl, dev) for dev in ("cpu", "cuda")}
    except ValueError as exc:
        impl = f"invalid ({exc})"
    return {
        "lvtp_kernels": lvtp_kernels.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "triton": triton_version,
        "triton_note": triton_note,
        "cuda_available": cuda_ok,
        "cuda_device": torch.cuda.get_device_name(0) if cuda_ok else None,
        "LVTP_IMPL": impl,
        "extensions": {k: {"built": ok, "why": why} for k, (ok, why) in _ext_status().items()},
        "forced_ops": forced_ops,
        "ops": table,
    }


def cmd_info(args: argparse.Namespace) -> int:
    d = info_dict()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"lvtp-kernels {d['lvtp_kernels']}")
    print(f"python {d['python']}  torch {d['torch']}  numpy {d['numpy']}  triton {d['triton']} ({d['triton_note']})")
    cuda = f"yes ({d['cuda_device']})" if d["cuda_available"] else "no (torch.cuda.is_available() is False)"
    print(f"CUDA: {cuda}")
    for name, st in d["extensions"].items():
        print(f"{name} extension: " + ("built" if st["built"] else f"not available ({st['why']})"))
    print(f"LVTP_IMPL={d['LVTP_IMPL']}  (auto | ref | triton | cpp | cuda)")
    for dev, ops in d["forced_ops"].items():
        note = ", ".join(ops) if ops else "none: every op keeps its automatic choice"
        print(f"  ops with a {d['LVTP_IMPL']} backend on {dev}: {note}")
    print()
    print(f"{'op':<18} {'cpu runs':<9} {'cuda runs':<10} backends")
    for row in d["ops"]:
        chosen = row["chosen"]
        print(f"{row['op']:<18} {chosen['cpu']:<9} {chosen['cuda']:<10}", end="")
        parts = [f"{name}: {status}" for name, status in row["backends"].items()]
        print(("\n" + " " * 39).join([""] + parts).lstrip("\n").lstrip() if parts else "")
    return 0


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def interleaved_ms(fns: Dict[str, Callable[[], object]], rounds: int, device: torch.device,
                   warmup: int = 1) -> Dict[str, List[float]]:
    """Per-round times (ms) of each ``fns[name]()``: ``warmup`` untimed rounds, then ``rounds``
    rounds of one call of each, the order alternating every round (A B, B A, ...), so
    that drift of a shared machine's clock or load hits every variant alike. One call is
    timed by ``bench.time_call_ms`` (CUDA events on a GPU, perf_counter on the CPU)."""
    from .bench import _sync, time_call_ms

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(time_call_ms(fns[name], device))
    return times


def _quartiles(v: Sequence[float]) -> Tuple[float, float, float]:
    if len(v) < 2:
        return v[0], v[0], v[0]
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return q1, q2, q3  # q2 is the median


NOISE_IQR = 0.15  # a speedup whose per-round IQR spans more than this (relative) is not readable


def timing_summary(base_ms: Sequence[float], pruned_ms: Sequence[float]) -> dict:
    """Median, min, max and quartiles of each variant's per-round times and of the per-round
    speedup (unpruned / pruned of the same round), and ``noisy``: a reason why no speedup
    can be read from them (the speedup's IQR crosses 1.0 or spans more than 15 % of its
    median, or there are too few rounds to tell), else None."""
    if not base_ms or len(base_ms) != len(pruned_ms):
        raise ValueError("timing_summary: need as many (>= 1) unpruned as pruned times")

    def stats(v):
        q1, med, q3 = _quartiles(v)
        return {"median": med, "min": min(v), "max": max(v), "q1": q1, "q3": q3}

    ratios = [b / p for b, p in zip(base_ms, pruned_ms)]
    s = {"rounds": len(ratios), "unpruned": stats(base_ms), "pruned": stats(pruned_ms), "speedup": stats(ratios)}
    sp = s["speedup"]
    if len(ratios) < 3:
        s["noisy"] = f"too few rounds ({len(ratios)}) to judge the spread; use --rounds 5 or more"
    elif sp["q1"] < 1.0 < sp["q3"]:
        s["noisy"] = f"the per-round speedup's interquartile range {sp['q1']:.2f}-{sp['q3']:.2f}x crosses 1.0"
    elif (sp["q3"] - sp["q1"]) / sp["median"] > NOISE_IQR:
        s["noisy"] = (f"the per-round speedup's interquartile range {sp['q1']:.2f}-{sp['q3']:.2f}x spans "
                      f"{(sp['q3'] - sp['q1']) / sp['median']:.0%} of its median (more than {NOISE_IQR:.0%})")
    else:
        s["noisy"] = None
    return s


def format_timing(s: dict, pruned_label: str) -> List[str]:
    """The demo's timing lines from :func:`timing_summary`."""
    lines = [f"time per forward over {s['rounds']} interleaved round(s) after a warm-up: median "
             "[min-max] (interquartile range)"]
    for name, key in (("unpruned", "unpruned"), (pruned_label, "pruned")):
        t = s[key]
        lines.append(f"  {name:<20}{t['median']:>9.2f} ms [{t['min']:.2f}-{t['max']:.2f}] "
                     f"(IQR {t['q1']:.2f}-{t['q3']:.2f})")
    sp = s["speedup"]
    lines.append(f"speedup {sp['median']:.2f}x median of per-round ratios (IQR {sp['q1']:.2f}-{sp['q3']:.2f}x, "
                 f"range {sp['min']:.2f}-{sp['max']:.2f}x)")
    if s["noisy"]:
        hint = "" if s["rounds"] < 3 else " (try more --rounds, --threads 1, or a quieter machine)"
        lines.append(f"timings too noisy to read a speedup on this machine: {s['noisy']}{hint}")
    return lines


def _demo_inputs(args):
    """[(name, uint8 image, label or None)] of the demo."""
    from .data.camvid import read_label

    if args.image:
        path = Path(args.image)
        return [(path.stem, read_image(path, "--image"), None)]
    return [(name, read_image(ASSETS / f"{name}.png"), read_label(str(ASSETS / f"{name}_label.png")))
            for name in DEMO_IMAGES]


def cmd_demo(args: argparse.Namespace) -> int:
    import lvtp_kernels
    from lvtp_kernels.app.data.camvid import NUM_CLASSES
    from lvtp_kernels.app.data.metrics import ConfusionMatrix
    from lvtp_kernels.flops import count_flops, vit_flops
    from lvtp_kernels.models import build_model
    from lvtp_kernels.models.patching import cost_shape
    from lvtp_kernels.app.segment import prepare

    device = resolve_device(args.device)
    check_output_dir(args.out, "--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = _demo_inputs(args)
    if args.arch:
        size = args.size or (240, 320)
        model = build_model(args.arch, seed=0, img_size=size)
        what = f"{args.arch}/16 segmenter, random weights (seed 0): agreement, not accuracy, is meaningful"
    else:
        model = load_model_arg(args.model)
        size = args.size or model.cfg.img_size
        what = f"CamVid reference model ({getattr(model, '_lvtp_source', 'reference')}, val mIoU in docs/results.md)"
    model = model.to(device).eval()
    batch = args.batch or len(inputs)
    inputs = inputs[:batch]  # a batch smaller than the photo set shows its first photos
    n_img = len(inputs)
    photos = torch.stack([resize_to(img, inputs[0][1].shape[-2:]) for _, img, _ in inputs])
    x = prepare(photos, size)
    x = x[torch.arange(batch) % n_img].to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"lvtp demo: {what}")
    print(f"  {n_img} image(s) at {size[0]}x{size[1]}, batch {batch}, {where}")
    with torch.inference_mode():
        base_logits = model(x)
        base_flops = vit_flops(model.vit_shape(size))
        base_counted = count_flops(model, x) / batch
        # the pruned model is a patched copy, so both can be timed in the same rounds
        pruned = copy.deepcopy(model)
        lvtp_kernels.patch(pruned, flops_reduction=args.reduction, img_size=size, keep_records=True)
        logits = pruned(x)
        records = lvtp_kernels.last_records(pruned)
        flops = vit_flops(cost_shape(pruned, size), pruned._lvtp.schedule)
        counted = count_flops(pruned, x) / batch
        times = interleaved_ms({"base": lambda: model(x), "lvtp": lambda: pruned(x)}, args.rounds, device)
    timing = timing_summary(times["base"], times["lvtp"])

    p = model.num_prefix_tokens
    print()
    print(f"{'stage':<6}{'after block':>12}{'keep ratio':>12}{'tokens in':>11}{'tokens kept':>13}")
    for s, rec in enumerate(records):
        n_in, n_kept = rec.x_at_stage.shape[1], rec.keep_idx.shape[1]
        ratio = dict(pruned._lvtp.schedule)[rec.layer]
        print(f"{s + 1:<6}{rec.layer:>12}{ratio:>12.3f}{n_in - p:>11}{n_kept - p:>13}")

    # accuracy at label resolution on the distinct images
    labelled = [i for i, (_, _, lbl) in enumerate(inputs) if lbl is not None]
    preds = {}
    for key, lg in (("base", base_logits), ("lvtp", logits)):
        out_hw = tuple(inputs[0][1].shape[-2:])
        up = torch.nn.functional.interpolate(lg[:n_img].float().cpu(), size=out_hw, mode="bilinear", align_corners=False)
        preds[key] = up.argmax(1)
    agree = float((preds["base"] == preds["lvtp"]).float().mean())
    miou = {}
    if labelled:
        for key in preds:
            cm = ConfusionMatrix(NUM_CLASSES)
            for i in labelled:
                cm.update(preds[key][i], inputs[i][2].long())
            miou[key] = cm.miou()
    print()
    head = f"{'':<22}{'GFLOPs/img':>12}{'counted':>10}{'ms (median)':>13}{'ms min-max':>16}"
    print(head + (f"{'mIoU':>8}" if miou else ""))
    label = f"LVTP {args.reduction:.0%} target"
    for name, f, c, key, tkey in (("unpruned", base_flops, base_counted, "base", "unpruned"),
                                  (label, flops, counted, "lvtp", "pruned")):
        t = timing[tkey]
        spread = f"{t['min']:.1f}-{t['max']:.1f}"
        row = f"{name:<22}{f / 1e9:>12.3f}{c / 1e9:>10.3f}{t['median']:>13.1f}{spread:>16}"
        print(row + (f"{miou[key]:>8.2f}" if miou else ""))
    print()
    print(f"GFLOPs cut {1 - flops / base_flops:.1%} (FlopCounterMode: {1 - counted / base_counted:.1%}); "
          f"pixels agreeing with the unpruned prediction {agree:.1%}")
    for line in format_timing(timing, label):
        print(line)
    if miou:
        print(f"mIoU on these {len(labelled)} labelled image(s): {miou['base']:.2f} unpruned, {miou['lvtp']:.2f} pruned "
              f"({miou['lvtp'] - miou['base']:+.2f}); the val-split numbers are in docs/results.md")
    if args.out:
        written = _demo_pngs(args.out, inputs, preds, records, pruned, size, p)
        print(f"wrote {', '.join(written)}")
    lvtp_kernels.unpatch(pruned)
    return 0


def resize_to(img, hw):
    from .data.camvid import resize_image

    if tuple(img.shape[-2:]) == tuple(hw):
        return img
    return resize_image(img, tuple(hw)).round().clamp(0, 255).to(torch.uint8)


def _demo_pngs(out_dir, inputs, preds, records, model, size, p):
    import numpy as np
    from PIL import Image

    from .viz import class_legend, colorize, compose, figure_columns, stage_overlay, token_stage_map

    with writing(out_dir, "--out"):
        os.makedirs(out_dir, exist_ok=True)
    grid = (size[0] // model.cfg.patch_size, size[1] // model.cfg.patch_size)
    fate = token_stage_map(records, records[0].x_at_stage.shape[1], p) if records else None
    layers = [r.layer for r in records]
    written = []
    for i, (name, img, lbl) in enumerate(inputs):
        rgb = img.permute(1, 2, 0).numpy()
        small = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
        panels = [("image", small)]
        if lbl is not None:
            panels.append(("label", colorize(lbl)))
        panels += [("unpruned", colorize(preds["base"][i])), ("LVTP", colorize(preds["lvtp"][i]))]
        if fate is not None:
            panels.append(("tokens kept / pruned after blocks " + "/".join(map(str, layers)),
                           stage_overlay(small, fate[i], grid)))
        panels.append(("legend", class_legend(size[0], size[1], stages=layers if fate is not None else None)))
        path = os.path.join(out_dir, f"{name}_lvtp.png")
        with writing(path, "--out"):
            compose(panels, columns=figure_columns(len(panels), (3, 4, 5))).save(path)  # no empty cell
        written.append(path)
    return written


# --------------------------------------------------------------------------- train-reference
def cmd_train_reference(args) -> int:
    from .train import train_reference

    check_camvid_dir(args.data, (args.train_split, args.val_split), args.limit)
    check_output_dir(args.out, "--out")
    record = train_reference(
        args.data, args.out, epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=args.seed, arch=args.arch,
        stem=args.stem, img_size=args.size, eval_every=args.eval_every, limit=args.limit, threads=args.threads,
        bf16=args.bf16, progress=not args.no_progress, log=print, train_split=args.train_split,
        val_split=args.val_split, scale=args.scale,
    )
    print(json.dumps({k: v for k, v in record.items() if k != "val_per_class"}))
    return 0


def cmd_eval(args) -> int:
    from .evaluate import markdown_table, pareto_plot, run_eval

    check_camvid_dir(args.data, (args.split,), args.limit)
    check_output_file(args.json, "--json")
    if args.json:
        check_output_file(os.path.splitext(args.json)[0] + ".md", "--json")
    check_output_file(args.plot, "--plot")
    model = load_model_arg(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run_eval(args.data, args.split, model=model, model_path=args.model, reductions=args.reductions,
                   methods=args.methods, limit=args.limit, batch=args.batch, progress=not args.no_progress,
                   log=print, bootstrap=args.bootstrap)
    table = markdown_table(res)
    print()
    print(table)
    stem = os.path.splitext(args.json)[0] if args.json else None
    if args.json:
        with writing(args.json, "--json"):
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
            with open(stem + ".md", "w") as f:
                f.write(table)
        print(f"wrote {args.json}, {stem}.md")
    plot = args.plot or (stem + ".png" if stem else None)
    if plot:
        with writing(plot, "--plot" if args.plot else "--json"):
            os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)
            pareto_plot(res, plot)
        print(f"wrote {plot}")
    return 0


# --------------------------------------------------------------------------- bench (checks; the commands are bench.py's)
def _check_bench_args(args) -> None:
    """Up-front checks of ``lvtp bench e2e|ops`` arguments that bench.py would otherwise
    meet only after minutes of timing (output paths) or as an obscure error."""
    if args.bench_cmd == "e2e":
        for flag, v, low in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0), ("--batch", args.batch, 1),
                             ("--threads", args.threads, 1)):
            if v is not None and v < low:
                raise CLIError(f"{flag} must be >= {low}, got {v}")
        if not args.max_seconds > 0:
            raise CLIError(f"--max-seconds must be > 0, got {args.max_seconds}")
        check_output_file(args.json, "--json")
        check_output_file(args.md, "--md")
    elif args.bench_cmd == "ops":
        check_output_file(args.md, "--md")


# --------------------------------------------------------------------------- main
def version_string() -> str:
    import lvtp_kernels

    return f"lvtp {lvtp_kernels.__version__} (torch {torch.__version__}, python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvtp", description="LVTP token pruning for ViT segmentation",
                                     epilog="Set LVTP_DEBUG=1 to see the traceback of an error.")
    parser.add_argument("--version", action="version", version=version_string())
    sub = parser.add_subparsers(dest="command", required=True)

    p_info = sub.add_parser("info", help="versions and which backend runs each op")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_info.set_defaults(func=cmd_info)

    p_demo = sub.add_parser("demo", help="the bundled CamVid model, unpruned and pruned, on bundled val photos")
    p_demo.add_argument("--image", help="an RGB image file (default: 3 bundled CamVid val photos with labels)")
    p_demo.add_argument("--model", default=None, help="checkpoint from `lvtp train-reference` (default: bundled)")
    p_demo.add_argument("--arch", default=None, choices=["vit_ti", "vit_s", "vit_b", "vit_l"],
                        help="use a random-weight model of this size instead (speed only)")
    p_demo.add_argument("--size", type=_parse_size, default=None, help="HxW the images are resized to")
    p_demo.add_argument("--reduction", type=_reduction, default=0.3, help="target GFLOPs reduction (default 0.3)")
    p_demo.add_argument("--batch", type=_positive_int, default=None, help="images per forward (cycled; default: all)")
    p_demo.add_argument("--device", type=_device_arg, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p_demo.add_argument("--rounds", "--repeats", dest="rounds", type=_positive_int, default=7,
                        help="timed rounds, unpruned and pruned interleaved, after one warm-up round (default 7; "
                        "medians, spreads and the per-round speedup are reported)")
    p_demo.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    p_demo.add_argument("--out", default="lvtp_demo", help="folder for the PNGs ('' to skip them)")
    p_demo.set_defaults(func=cmd_demo)

    p_tr = sub.add_parser("train-reference", help="train the reference ViT segmenter on CamVid (resumable)")
    p_tr.add_argument("--data", required=True, help="folder with train.txt/val.txt (e.g. ../shared/camvid)")
    p_tr.add_argument("--out", required=True, help="output folder (last.pt, log.jsonl, model.safetensors)")
    p_tr.add_argument("--epochs", type=_positive_int, default=100)
    p_tr.add_argument("--batch", type=_positive_int, default=8)
    p_tr.add_argument("--lr", type=_positive_float, default=1e-3)
    p_tr.add_argument("--seed", type=int, default=0)
    p_tr.add_argument("--arch", default="vit_ti", choices=["vit_ti", "vit_s", "vit_b", "vit_l"])
    p_tr.add_argument("--stem", default="conv", choices=["conv", "patch"])
    p_tr.add_argument("--size", type=_parse_size, default=(240, 320), help="HxW training/inference size")
    p_tr.add_argument("--eval-every", type=_positive_int, default=5, help="epochs between val evaluations")
    p_tr.add_argument("--limit", type=_positive_int, default=None, help="use only the first N images per split")
    p_tr.add_argument("--train-split", default="train",
                      help="training images: a list name or a selection such as except:0006R0 (see eval --split)")
    p_tr.add_argument("--val-split", default="val", help="val images, e.g. seq:0006R0 (the held-out sequence)")
    p_tr.add_argument("--scale", type=_scale_range, default=None,
                      help="random rescale range of the original photo, LO,HI (default 0.5,1.0)")
    p_tr.add_argument("--threads", type=_positive_int, default=None)
    p_tr.add_argument("--bf16", action="store_true", help="bf16 autocast (2x faster on AVX512-BF16 CPUs)")
    p_tr.add_argument("--no-progress", action="store_true")
    p_tr.set_defaults(func=cmd_train_reference)

    p_ev = sub.add_parser("eval", help="mIoU / boundary mIoU / GFLOPs of LVTP and baselines on a labelled split")
    p_ev.add_argument("--data", required=True, help="folder with SPLIT.txt ('image label' per line)")
    p_ev.add_argument("--split", default="val",
                      help="a list name (val, train) or a sequence-disjoint selection of the train+val pool: "
                           "seq:A[,B] or except:A[,B] (sequences 0001TP, 0006R0, 0016E5)")
    p_ev.add_argument("--model", default=None, help="checkpoint (default: the bundled reference model)")
    p_ev.add_argument("--reductions", type=_float_list, default=[0.2, 0.3, 0.45], help="e.g. 0.2,0.3,0.45")
    p_ev.add_argument("--methods", type=_method_list, default=["lvtp", "evit", "tome", "random"],
                      help="comma-separated: lvtp, evit, tome, random, lvtp-no-edge, lvtp-shannon, lvtp-equal-weights, "
                      "lvtp-no-cluster, lvtp-frozen, lvtp-high, ... or 'lvtp:alpha=0.3,entropy_mode=high' "
                      "(separate methods with ';' when one has commas)")
    p_ev.add_argument("--limit", type=_positive_int, default=None, help="first N images only")
    p_ev.add_argument("--batch", type=_positive_int, default=8)
    p_ev.add_argument("--threads", type=_positive_int, default=None)
    p_ev.add_argument("--json", default=None, help="write the results JSON here (and a .md table beside it)")
    p_ev.add_argument("--plot", default=None, help="Pareto plot PNG (default: beside --json)")
    p_ev.add_argument("--bootstrap", type=_nonnegative_int, default=1000,
                      help="bootstrap resamples over images for the 95 %% intervals (0: none)")
    p_ev.add_argument("--no-progress", action="store_true")
    p_ev.set_defaults(func=cmd_eval)

    from .bench import add_parser as add_bench_parser
    from .viz import add_viz_parser

    add_bench_parser(sub)
    add_viz_parser(sub)
    return parser


# errors a user can cause with an input or an argument: one line, exit 2
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError,
                FileExistsError)


def _command_name(args) -> str:
    name = getattr(args, "command", None) or "?"
    if name == "bench" and getattr(args, "bench_cmd", None):
        name = f"bench {args.bench_cmd}"
    return name


def _debug() -> bool:
    return os.environ.get("LVTP_DEBUG", "").strip() not in ("", "0")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``lvtp ARGS``; returns the exit status. Expected errors (bad inputs, arguments,
    files) are one stderr line ``lvtp <cmd>: <problem>`` and exit 2 (an OSError such as a
    full disk exits 1); anything else is one line with a hint, exit 1, or the traceback
    when ``LVTP_DEBUG=1``. argparse's own errors exit 2 as usual."""
    args = build_parser().parse_args(argv)
    cmd = _command_name(args)
    prefix = f"lvtp {cmd}: "
    try:
        if args.command == "bench":
            _check_bench_args(args)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prefix}interrupted", file=sys.stderr)
        return 130
    except (*USAGE_ERRORS, OSError) as exc:  # OSError covers PIL.UnidentifiedImageError
        if _debug():
            traceback.print_exc()
        msg = _strip_prefix(_strip_prefix(_one_line(exc), prefix), "error: ")
        print(prefix + msg, file=sys.stderr)
        usage = isinstance(exc, USAGE_ERRORS) or type(exc).__name__ == "UnidentifiedImageError"
        return 2 if usage else 1
    except Exception as exc:  # noqa: BLE001 - an internal error: one line unless debugging
        if _debug():
            raise
        print(f"{prefix}internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(set LVTP_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
