"""The ``lvtp`` command line: ``lvtp info`` and ``lvtp demo``."""

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
from typing import Optional, Sequence, Tuple

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_IMAGE = ASSETS / "camvid_val_0016E5_07959.png"


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


def load_image(path: Path, size: Tuple[int, int]):
    """An RGB image file as a (1, 3, H, W) float tensor, ImageNet-normalised."""
    import numpy as np
    import torch
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return ((x - mean) / std)[None]


def _median_ms(fn, repeats: int, device) -> float:
    import torch

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


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    import lvtp_kernels
    from lvtp_kernels.flops import count_flops, vit_flops
    from lvtp_kernels.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    image_path = Path(args.image) if args.image else DEMO_IMAGE
    if not image_path.is_file():
        print(f"lvtp demo: image {image_path} not found", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("lvtp demo: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    x = load_image(image_path, args.size).repeat(args.batch, 1, 1, 1).to(device)
    model = build_model(args.arch, seed=0, img_size=args.size).to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(
        f"lvtp demo: {args.arch}/16 segmenter (random weights, seed 0) on {image_path.name} at "
        f"{args.size[0]}x{args.size[1]}, batch {args.batch}, {where}"
    )
    with torch.inference_mode():
        base_logits = model(x)
        base_ms = _median_ms(lambda: model(x), args.repeats, device)
        base_flops = vit_flops(model.vit_shape(args.size))
        base_counted = count_flops(model, x) / args.batch

        try:
            lvtp_kernels.patch(model, flops_reduction=args.reduction, img_size=args.size, keep_records=True)
        except ValueError as exc:
            print(f"lvtp demo: {exc}", file=sys.stderr)
            return 2
        logits = model(x)
        records = lvtp_kernels.last_records(model)
        ms = _median_ms(lambda: model(x), args.repeats, device)
        flops = vit_flops(model.vit_shape(args.size), model._lvtp.schedule)
        counted = count_flops(model, x) / args.batch

    p = model.num_prefix_tokens
    print()
    print(f"{'stage':<6}{'after block':>12}{'keep ratio':>12}{'tokens in':>11}{'tokens kept':>13}")
    for s, rec in enumerate(records):
        n_in, n_kept = rec.x_at_stage.shape[1], rec.keep_idx.shape[1]
        ratio = dict(model._lvtp.schedule)[rec.layer]
        print(f"{s + 1:<6}{rec.layer:>12}{ratio:>12.3f}{n_in - p:>11}{n_kept - p:>13}")
    agree = (logits.argmax(1) == base_logits.argmax(1)).float().mean().item()
    print()
    print(f"{'':<22}{'GFLOPs/img':>12}{'counted':>10}{'ms (median)':>13}")
    print(f"{'unpruned':<22}{base_flops / 1e9:>12.3f}{base_counted / 1e9:>10.3f}{base_ms:>13.1f}")
    label = f"LVTP {args.reduction:.0%} target"
    print(f"{label:<22}{flops / 1e9:>12.3f}{counted / 1e9:>10.3f}{ms:>13.1f}")
    print()
    print(
        f"GFLOPs cut {1 - flops / base_flops:.1%} (FlopCounterMode: {1 - counted / base_counted:.1%}); "
        f"time {base_ms / ms:.2f}x; pixels agreeing with the unpruned prediction {agree:.1%}"
    )
    print("(random weights until the CamVid reference model ships: agreement, not accuracy, is shown)")
    lvtp_kernels.unpatch(model)
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvtp", description="LVTP token pruning for ViT segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    p_info = sub.add_parser("info", help="versions and which backend runs each op")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_info.set_defaults(func=cmd_info)

    p_demo = sub.add_parser("demo", help="prune the bundled ViT segmenter on a bundled real image")
    p_demo.add_argument("--image", help="an RGB image file (default: a bundled CamVid val photo)")
    p_demo.add_argument("--arch", default="vit_ti", choices=["vit_ti", "vit_s", "vit_b", "vit_l"])
    p_demo.add_argument("--size", type=_parse_size, default=(240, 320), help="HxW the image is resized to")
    p_demo.add_argument("--reduction", type=_reduction, default=0.3, help="target GFLOPs reduction (default 0.3)")
    p_demo.add_argument("--batch", type=_positive_int, default=1)
    p_demo.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p_demo.add_argument("--repeats", type=_positive_int, default=5, help="timed runs (median reported)")
    p_demo.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    p_demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
