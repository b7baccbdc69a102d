"""The segmentation head's upsample, the largest fixed cost of the GPU end-to-end runs.

    python -m benchmarks.bench_head [--quick] [--csv PATH]

`LinearDecoder` (lvtp_kernels/models/vit.py) upsamples per-patch class logits to the image.
Its logits come from ``head(tokens).transpose(1, 2).reshape(B, C, h, w)``: a channels-last
view, so ``F.interpolate`` runs its NHWC kernel and writes a channels-last output. On the
H200 run of 2026-11-28 that upsample took 2.9 ms of a 7.7 ms ViT-B/16 512x512 batch-8
fp16 forward (150 classes), far above its memory floor, and pruning cannot shorten it.
This benchmark times that layout ("reference" column: what the model does today) against
the same interpolation of contiguous NCHW logits ("ours" column: the ``.contiguous()``
copy of the small logits included). The memory floor is one read of the logits plus one
write of the upsampled map. On the CPU, NHWC is the faster layout (measured 2026-11-28);
the GPU answer decides whether the decoder should switch layouts there.
"""

from __future__ import annotations

import argparse
from typing import List

import torch
import torch.nn.functional as F

from lvtp_kernels.app import microbench as common


def _nhwc_logits(b: int, classes: int, gh: int, gw: int, dtype, device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randn(b, gh * gw, classes, generator=g, device=device).to(dtype)
    return tokens.transpose(1, 2).reshape(b, classes, gh, gw)  # as LinearDecoder builds it


def bench(shapes, dtypes, device, repeats: int) -> List[dict]:
    rows = []
    for b, classes, gh, gw, patch in shapes:
        for dtype in dtypes:
            logits = _nhwc_logits(b, classes, gh, gw, dtype, device)
            out_hw = (gh * patch, gw * patch)
            nhwc = lambda: F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)  # noqa: E731
            nchw = lambda: F.interpolate(logits.contiguous(), size=out_hw, mode="bilinear", align_corners=False)  # noqa: E731
            a, c = nhwc(), nchw()
            # the same interpolation in either layout: equal up to the kernels' rounding
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            if not torch.allclose(a.float(), c.float(), atol=tol, rtol=tol):
                raise AssertionError(f"bench_head: layouts disagree for {b}x{classes}x{gh}x{gw} {dtype}")
            ref_ms = common.time_ms(nhwc, device, repeats=repeats, max_s=1.0)
            ours_ms = common.time_ms(nchw, device, repeats=repeats, max_s=1.0)
            floor = logits.numel() * logits.element_size() + a.numel() * a.element_size()
            shape = f"B={b} C={classes} {gh}x{gw} -> {out_hw[0]}x{out_hw[1]} (ref NHWC, ours NCHW)"
            rows.append(common.row(shape, dtype, ref_ms, None, ours_ms, floor, device))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        # ViT-B/16 512x512 and ViT-L/16 1024x1024 at batch 8 (150 and 19 classes), batch 1
        shapes = [(8, 150, 32, 32, 16), (8, 19, 32, 32, 16), (1, 150, 32, 32, 16), (8, 150, 64, 64, 16)]
        dtypes = [torch.float16, torch.bfloat16]
    else:
        # the bundled model's head (11 classes, 240x320), and one 150-class map
        shapes = [(8, 11, 15, 20, 16)] if args.quick else [(8, 11, 15, 20, 16), (2, 150, 32, 32, 16)]
        dtypes = [torch.float32]
    if args.quick:
        shapes, dtypes = shapes[:1], dtypes[:1]
    rows = bench(shapes, dtypes, device, args.repeats)
    common.print_table("segmentation head upsample: NHWC (as the model) vs NCHW logits", rows, device)
    common.append_csv("bench_head", rows, device, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
