"""The ``lvtp`` command line: ``info``, ``demo``, ``train-reference``, ``eval``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

ASSETS = Path(__file__).resolve().parent / "assets"
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


# --------------------------------------------------------------------------- demo
def _parse_size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 240x320, got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return h, w


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _reduction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {v}")
    return v


def load_photo(path: Path):
    """An RGB image file as a (3, H, W) uint8 tensor."""
    from .data.camvid import read_image

    return read_image(str(path))


def _median_ms(fn, repeats: int, device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _demo_inputs(args):
    """[(name, uint8 image, label or None)] of the demo."""
    from .data.camvid import read_label

    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} not found")
        return [(path.stem, load_photo(path), None)]
    return [(name, load_photo(ASSETS / f"{name}.png"), read_label(str(ASSETS / f"{name}_label.png")))
            for name in DEMO_IMAGES]


def cmd_demo(args: argparse.Namespace) -> int:
    import lvtp_kernels
    from lvtp_kernels.data.camvid import CLASS_NAMES, NUM_CLASSES
    from lvtp_kernels.data.metrics import ConfusionMatrix
    from lvtp_kernels.flops import count_flops, vit_flops
    from lvtp_kernels.models import build_model, load_reference
    from lvtp_kernels.models.patching import cost_shape
    from lvtp_kernels.segment import prepare

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("lvtp demo: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    try:
        inputs = _demo_inputs(args)
    except FileNotFoundError as exc:
        print(f"lvtp demo: {exc}", file=sys.stderr)
        return 2
    if args.arch:
        size = args.size or (240, 320)
        model = build_model(args.arch, seed=0, img_size=size)
        what = f"{args.arch}/16 segmenter, random weights (seed 0): agreement, not accuracy, is meaningful"
    else:
        try:
            model = load_reference(args.model)
        except FileNotFoundError as exc:
            print(f"lvtp demo: {exc}", file=sys.stderr)
            return 2
        size = args.size or model.cfg.img_size
        what = f"CamVid reference model ({getattr(model, '_lvtp_source', 'reference')}, val mIoU in docs/results.md)"
    model = model.to(device)
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
        base_ms = _median_ms(lambda: model(x), args.repeats, device)
        base_flops = vit_flops(model.vit_shape(size))
        base_counted = count_flops(model, x) / batch
        try:
            lvtp_kernels.patch(model, flops_reduction=args.reduction, img_size=size, keep_records=True)
        except ValueError as exc:
            print(f"lvtp demo: {exc}", file=sys.stderr)
            return 2
        logits = model(x)
        records = lvtp_kernels.last_records(model)
        ms = _median_ms(lambda: model(x), args.repeats, device)
        flops = vit_flops(cost_shape(model, size), model._lvtp.schedule)
        counted = count_flops(model, x) / batch

    p = model.num_prefix_tokens
    print()
    print(f"{'stage':<6}{'after block':>12}{'keep ratio':>12}{'tokens in':>11}{'tokens kept':>13}")
    for s, rec in enumerate(records):
        n_in, n_kept = rec.x_at_stage.shape[1], rec.keep_idx.shape[1]
        ratio = dict(model._lvtp.schedule)[rec.layer]
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
    head = f"{'':<22}{'GFLOPs/img':>12}{'counted':>10}{'ms (median)':>13}"
    print(head + (f"{'mIoU':>8}" if miou else ""))
    label = f"LVTP {args.reduction:.0%} target"
    for name, f, c, t, key in (("unpruned", base_flops, base_counted, base_ms, "base"), (label, flops, counted, ms, "lvtp")):
        row = f"{name:<22}{f / 1e9:>12.3f}{c / 1e9:>10.3f}{t:>13.1f}"
        print(row + (f"{miou[key]:>8.2f}" if miou else ""))
    print()
    print(
        f"GFLOPs cut {1 - flops / base_flops:.1%} (FlopCounterMode: {1 - counted / base_counted:.1%}); "
        f"time {base_ms / ms:.2f}x; pixels agreeing with the unpruned prediction {agree:.1%}"
    )
    if miou:
        print(f"mIoU on these {len(labelled)} labelled image(s): {miou['base']:.2f} unpruned, {miou['lvtp']:.2f} pruned "
              f"({miou['lvtp'] - miou['base']:+.2f}); the val-split numbers are in docs/results.md")
    if args.out:
        written = _demo_pngs(args.out, inputs, preds, records, model, size, p)
        print(f"wrote {', '.join(written)}")
    lvtp_kernels.unpatch(model)
    return 0


def resize_to(img, hw):
    from .data.camvid import resize_image

    if tuple(img.shape[-2:]) == tuple(hw):
        return img
    return resize_image(img, tuple(hw)).round().clamp(0, 255).to(torch.uint8)


def _demo_pngs(out_dir, inputs, preds, records, model, size, p):
    import numpy as np
    from PIL import Image

    from .viz import colorize, compose, stage_overlay, token_stage_map

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
            panels.append(("tokens: green kept, red/orange/yellow pruned after blocks " + "/".join(map(str, layers)),
                           stage_overlay(small, fate[i], grid)))
        path = os.path.join(out_dir, f"{name}_lvtp.png")
        compose(panels, columns=len(panels) if len(panels) <= 3 else 3).save(path)
        written.append(path)
    return written


# --------------------------------------------------------------------------- train-reference
def cmd_train_reference(args) -> int:
    from .train import train_reference

    if not os.path.isfile(os.path.join(args.data, "train.txt")):
        print(f"lvtp train-reference: error: --data {args.data!r} has no train.txt", file=sys.stderr)
        return 2
    record = train_reference(
        args.data, args.out, epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=args.seed, arch=args.arch,
        stem=args.stem, img_size=args.size, eval_every=args.eval_every, limit=args.limit, threads=args.threads,
        bf16=args.bf16, progress=not args.no_progress,
    )
    print(json.dumps({k: v for k, v in record.items() if k != "val_per_class"}))
    return 0


# --------------------------------------------------------------------------- eval
def _float_list(text: str) -> List[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (0.0 <= v < 1.0) for v in vals):
        raise argparse.ArgumentTypeError(f"reductions must be in [0, 1), got {text!r}")
    return vals


def _method_list(text: str) -> List[str]:
    from .baselines import parse_method

    names = [t.strip() for t in text.split(";" if ";" in text else ",") if t.strip()]
    for n in names:
        try:
            parse_method(n)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def cmd_eval(args) -> int:
    from .evaluate import markdown_table, pareto_plot, run_eval

    if not os.path.isfile(os.path.join(args.data, f"{args.split}.txt")):
        print(f"lvtp eval: error: --data {args.data!r} has no {args.split}.txt", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        res = run_eval(args.data, args.split, model_path=args.model, reductions=args.reductions, methods=args.methods,
                       limit=args.limit, batch=args.batch, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lvtp eval: error: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(res)
    print()
    print(table)
    stem = os.path.splitext(args.json)[0] if args.json else None
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(table)
        print(f"wrote {args.json}, {stem}.md")
    plot = args.plot or (stem + ".png" if stem else None)
    if plot:
        pareto_plot(res, plot)
        print(f"wrote {plot}")
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvtp", description="LVTP token pruning for ViT segmentation")
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
    p_demo.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p_demo.add_argument("--repeats", type=_positive_int, default=5, help="timed runs (median reported)")
    p_demo.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    p_demo.add_argument("--out", default="lvtp_demo", help="folder for the PNGs ('' to skip them)")
    p_demo.set_defaults(func=cmd_demo)

    p_tr = sub.add_parser("train-reference", help="train the reference ViT segmenter on CamVid (resumable)")
    p_tr.add_argument("--data", required=True, help="folder with train.txt/val.txt (e.g. ../shared/camvid)")
    p_tr.add_argument("--out", required=True, help="output folder (last.pt, log.jsonl, model.pt)")
    p_tr.add_argument("--epochs", type=_positive_int, default=100)
    p_tr.add_argument("--batch", type=_positive_int, default=8)
    p_tr.add_argument("--lr", type=float, default=1e-3)
    p_tr.add_argument("--seed", type=int, default=0)
    p_tr.add_argument("--arch", default="vit_ti", choices=["vit_ti", "vit_s", "vit_b", "vit_l"])
    p_tr.add_argument("--stem", default="conv", choices=["conv", "patch"])
    p_tr.add_argument("--size", type=_parse_size, default=(240, 320), help="HxW training/inference size")
    p_tr.add_argument("--eval-every", type=_positive_int, default=5, help="epochs between val evaluations")
    p_tr.add_argument("--limit", type=_positive_int, default=None, help="use only the first N images per split")
    p_tr.add_argument("--threads", type=_positive_int, default=None)
    p_tr.add_argument("--bf16", action="store_true", help="bf16 autocast (2x faster on AVX512-BF16 CPUs)")
    p_tr.add_argument("--no-progress", action="store_true")
    p_tr.set_defaults(func=cmd_train_reference)

    p_ev = sub.add_parser("eval", help="mIoU / boundary mIoU / GFLOPs of LVTP and baselines on a labelled split")
    p_ev.add_argument("--data", required=True, help="folder with SPLIT.txt ('image label' per line)")
    p_ev.add_argument("--split", default="val")
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
    p_ev.add_argument("--no-progress", action="store_true")
    p_ev.set_defaults(func=cmd_eval)

    from .bench import add_parser as add_bench_parser
    from .viz import add_viz_parser

    add_bench_parser(sub)
    add_viz_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
