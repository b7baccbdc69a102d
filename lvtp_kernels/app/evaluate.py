"""``lvtp eval``: accuracy and cost of LVTP and the baselines on a labelled split.

For the unpruned model and each (method, target reduction): mIoU (void ignored),
boundary mIoU (pixels within 5 px of a label change; void counts as a label for the band
and is ignored for scoring), GFLOPs per image (analytic, cross-checked with
FlopCounterMode on one image), the achieved reduction, and images/s of the forward on
this machine. Predictions are upsampled to the label resolution before the argmax.
Writes JSON, a markdown table and a Pareto plot (mIoU vs GFLOPs).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from python_ref.flops import ViTShape, active_stages, budget, vit_flops

from .. import flops as lflops
from .baselines import METHODS, Method, make_runner, parse_method, release
from .data.camvid import CLASS_NAMES, NUM_CLASSES, SegSample, load_split
from .data.metrics import ConfusionMatrix, bootstrap_counts, boundary_mask, percentile_ci, resampled_miou
from ..models.patching import DEFAULTS
from ..models.vit import ViTSegmenter
from .segment import prepare

DEFAULT_METHODS = ("lvtp", "evit", "tome", "random")
DEFAULT_REDUCTIONS = (0.2, 0.3, 0.45)


@dataclass
class Scores:
    miou: float
    boundary_miou: float
    per_class: Dict[str, float]
    seconds: float
    images: int
    per_image: Optional[Tensor] = None  # (images, C, C) confusion matrix of each image
    per_image_boundary: Optional[Tensor] = None  # the same on the boundary band

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def method_shape(model: ViTSegmenter, method: Method, img_hw: Tuple[int, int]) -> ViTShape:
    """The cost model of ``method``: the transformer plus that method's own overheads."""
    if method.kind == "lvtp":
        o = dict(DEFAULTS, **method.options)
        return model.vit_shape(
            img_hw, num_orders=len(o["qs"]), clusters=int(o["clusters"]), iters=int(o["iters"]),
            use_edge=bool(o["use_edge"]) and float(o["alpha"]) < 1.0, reconstruct=str(o["reconstruct"]),
        )
    if method.kind in ("evit", "random"):  # score from the attention map: no entropy; same k-means + reconstruction
        return model.vit_shape(img_hw, num_orders=0, clusters=int(DEFAULTS["clusters"]), iters=int(DEFAULTS["iters"]),
                               use_edge=False, reconstruct=str(DEFAULTS["reconstruct"]))
    if method.kind == "tome":  # no entropy, no k-means, unmerge is a copy
        return model.vit_shape(img_hw, num_orders=0, clusters=0, iters=0, use_edge=False, reconstruct="frozen")
    raise ValueError(f"unknown method kind {method.kind!r}")


def method_schedule(model: ViTSegmenter, method: Method, reduction: float, img_hw: Tuple[int, int]):
    """The method's stages for a target reduction, solved on its own cost model, so that
    every method spends the same GFLOPs (within the solver's +-2 points)."""
    shape = method_shape(model, method, img_hw)
    return lflops.schedule_for_flops(shape, float(reduction), method.stage_layers(shape.depth))


def method_gflops(model: ViTSegmenter, method: Method, schedule, img_hw: Tuple[int, int]) -> float:
    """Analytic GFLOPs per image of ``method`` at ``schedule`` (overheads included)."""
    shape = method_shape(model, method, img_hw)
    if method.kind in ("lvtp", "evit", "random"):
        return vit_flops(shape, schedule) / 1e9
    if method.kind == "tome":  # plus matching: (n/2) x (n/2) cosine similarities of head-mean keys per stage
        total = vit_flops(shape, schedule)
        stages = active_stages(schedule, shape.depth)
        n = shape.num_patches + shape.num_protected
        hd = shape.embed_dim // shape.num_heads
        for i in range(shape.depth):
            if i in stages:
                m = n - shape.num_protected
                total += 2.0 * (m // 2) * ((m + 1) // 2) * hd
                n = shape.num_protected + budget(n, shape.num_protected, stages[i])
        return total / 1e9
    raise ValueError(f"unknown method kind {method.kind!r}")


def score_runner(run: Callable, samples: Sequence[SegSample], size, batch: int, desc: str,
                 progress: bool = True) -> Scores:
    cm, cm_b = ConfusionMatrix(NUM_CLASSES), ConfusionMatrix(NUM_CLASSES)
    per_image, per_image_b = [], []
    seconds = 0.0
    chunks = [samples[i : i + batch] for i in range(0, len(samples), batch)]
    with torch.no_grad():  # warm-up (first-call allocations, lazy init), not timed
        run(prepare(torch.stack([s.image for s in chunks[0]]), size))
    for chunk in tqdm(chunks, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
        images = torch.stack([s.image for s in chunk])
        labels = torch.stack([s.label for s in chunk]).long()
        x = prepare(images, size)
        with torch.no_grad():
            t0 = time.perf_counter()
            logits = run(x)
            seconds += time.perf_counter() - t0
        logits = torch.nn.functional.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear",
                                                 align_corners=False)
        pred = logits.argmax(1)
        band = boundary_mask(labels)
        for j in range(pred.shape[0]):  # per image, for the bootstrap over images
            one, one_b = ConfusionMatrix(NUM_CLASSES), ConfusionMatrix(NUM_CLASSES)
            one.update(pred[j], labels[j])
            one_b.update(pred[j], labels[j], band[j])
            per_image.append(one.mat)
            per_image_b.append(one_b.mat)
            cm.mat += one.mat
            cm_b.mat += one_b.mat
    return Scores(cm.miou(), cm_b.miou(), cm.per_class(list(CLASS_NAMES)), seconds, len(samples),
                  torch.stack(per_image), torch.stack(per_image_b))


def bootstrap_intervals(out: dict, scores: Dict[Optional[Tuple[float, str]], Scores], resamples: int,
                        level: float = 0.95, seed: int = 0) -> None:
    """Adds percentile bootstrap intervals over images to ``run_eval``'s result, in place.

    One set of resamples (``resamples`` draws of the images with replacement, fixed
    ``seed``) serves every method, so each difference is a *paired* bootstrap: the
    unpruned model's and a method's mIoU are computed on the same resampled images.
    Adds ``miou_ci`` / ``boundary_miou_ci`` to the baseline and every result,
    ``miou_drop_ci`` / ``boundary_miou_drop_ci`` to every result, and ``paired``: per
    target budget, the first method minus each other one (positive: the first is better),
    with its interval and a verdict that says "no difference" whenever the interval
    contains zero. ``scores`` maps None to the unpruned scores and (reduction, method) to
    each method's."""
    counts = bootstrap_counts(out["images"], resamples, seed)
    boot = {key: (resampled_miou(sc.per_image, counts), resampled_miou(sc.per_image_boundary, counts))
            for key, sc in scores.items()}
    base, base_b = boot[None]
    out["bootstrap"] = {"resamples": resamples, "level": level, "seed": seed, "unit": "image"}
    out["baseline"]["miou_ci"], out["baseline"]["boundary_miou_ci"] = percentile_ci(base, level), percentile_ci(base_b, level)
    for r in out["results"]:
        m, mb = boot[(float(r["target_reduction"]), r["method"])]
        r["miou_ci"], r["boundary_miou_ci"] = percentile_ci(m, level), percentile_ci(mb, level)
        r["miou_drop_ci"], r["boundary_miou_drop_ci"] = percentile_ci(base - m, level), percentile_ci(base_b - mb, level)
    out["paired"] = []
    methods = list(dict.fromkeys(r["method"] for r in out["results"]))
    for red in sorted({float(r["target_reduction"]) for r in out["results"]}):
        first = methods[0]
        for other in methods[1:]:
            a, ab = boot[(red, first)]
            b, bb = boot[(red, other)]
            row = {"target_reduction": red, "method": first, "versus": other}
            for key, d, full in (("miou", a - b, scores[(red, first)].miou - scores[(red, other)].miou),
                                 ("boundary_miou", ab - bb,
                                  scores[(red, first)].boundary_miou - scores[(red, other)].boundary_miou)):
                lo, hi = percentile_ci(d, level)
                row[f"{key}_diff"], row[f"{key}_diff_ci"] = full, [lo, hi]
                row[f"{key}_verdict"] = "better" if lo > 0 else "worse" if hi < 0 else "no difference"
            out["paired"].append(row)


def counted_gflops(run: Callable, image: Tensor) -> float:
    with torch.no_grad():
        return lflops.count_flops(run, image) / 1e9


def run_eval(
    data_dir: str,
    split: str = "val",
    model: Optional[ViTSegmenter] = None,
    model_path: Optional[str] = None,
    reductions: Sequence[float] = DEFAULT_REDUCTIONS,
    methods: Sequence[str] = DEFAULT_METHODS,
    limit: Optional[int] = None,
    batch: int = 8,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
    bootstrap: int = 1000,
    level: float = 0.95,
) -> dict:
    """Scores of the unpruned model and of each (method, reduction) on ``split`` (a list
    name or a sequence selection, see ``data.camvid.read_pairs``); with ``bootstrap`` > 0
    resamples, percentile intervals over images at ``level`` (``bootstrap_intervals``)."""
    from ..models import load_reference

    log = log or logging.getLogger(__name__).info
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"run_eval: bootstrap must be an integer >= 0 (resamples; 0: none), got {bootstrap!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"run_eval: level must be in (0, 1), got {level!r}")
    if model is None:
        model = load_reference(model_path)
    model.eval()
    size = model.cfg.img_size
    samples = load_split(data_dir, split, limit)
    parsed = [parse_method(m) for m in methods]
    schedules = {(float(red), m.name): method_schedule(model, m, red, size) for red in reductions for m in parsed}
    probe = prepare(samples[0].image[None], size)

    base = score_runner(model, samples, size, batch, "unpruned", progress)
    scores: Dict[Optional[Tuple[float, str]], Scores] = {None: base}
    base_gflops = vit_flops(model.vit_shape(size)) / 1e9
    base_counted = counted_gflops(model, probe)
    out = {
        "split": split,
        "images": len(samples),
        "model": getattr(model, "_lvtp_source", model_path or "reference"),
        "img_size": list(size),
        "baseline": {
            "miou": base.miou, "boundary_miou": base.boundary_miou, "gflops": base_gflops,
            "gflops_counted": base_counted, "images_per_s": base.images_per_s, "per_class": base.per_class,
        },
        "results": [],
    }
    log(f"eval: unpruned mIoU {base.miou:.2f} boundary {base.boundary_miou:.2f} GFLOPs {base_gflops:.3f} "
        f"{base.images_per_s:.1f} img/s")
    for red in reductions:
        for method in parsed:
            schedule = schedules[(float(red), method.name)]
            runner = make_runner(model, method, schedule)
            try:
                sc = score_runner(runner, samples, size, batch, f"{method.name}@{red:.2f}", progress)
                counted = counted_gflops(runner, probe)
            finally:
                release(model)
            scores[(float(red), method.name)] = sc
            g = method_gflops(model, method, schedule, size)
            res = {
                "method": method.name, "target_reduction": float(red), "reduction": 1.0 - g / base_gflops,
                "gflops": g, "gflops_counted": counted, "miou": sc.miou, "boundary_miou": sc.boundary_miou,
                "miou_drop": base.miou - sc.miou, "boundary_miou_drop": base.boundary_miou - sc.boundary_miou,
                "images_per_s": sc.images_per_s, "schedule": [list(s) for s in schedule], "per_class": sc.per_class,
            }
            out["results"].append(res)
            log(f"eval: {method.name:<20} target {red:.2f} achieved {res['reduction']:.3f} mIoU {sc.miou:.2f} "
                f"(drop {res['miou_drop']:+.2f}) boundary {sc.boundary_miou:.2f} "
                f"(drop {res['boundary_miou_drop']:+.2f}) {sc.images_per_s:.1f} img/s")
    if bootstrap > 0:
        bootstrap_intervals(out, scores, bootstrap, level)
    return out


def _ci(r: dict, key: str) -> str:
    ci = r.get(key)
    return f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""


def _ci_plain(r: dict, key: str) -> str:
    ci = r.get(key)
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def markdown_table(res: dict) -> str:
    b = res["baseline"]
    boot = res.get("bootstrap")
    lines = [
        f"Split `{res['split']}`, {res['images']} images, model input {res['img_size'][0]}x{res['img_size'][1]}."
        + (f" Brackets: {100 * boot['level']:.0f} % bootstrap intervals over images ({boot['resamples']} resamples; "
           "drops paired with the unpruned model on the same resamples)." if boot else ""),
        "",
        "| method | target | achieved | GFLOPs | mIoU | drop | boundary mIoU | drop | img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| unpruned | 0 | 0 | {b['gflops']:.3f} | {b['miou']:.2f}{_ci_plain(b, 'miou_ci')} | - | "
        f"{b['boundary_miou']:.2f}{_ci_plain(b, 'boundary_miou_ci')} | - | {b['images_per_s']:.1f} |",
    ]
    for r in res["results"]:
        lines.append(
            f"| {r['method']} | {r['target_reduction']:.2f} | {r['reduction']:.3f} | {r['gflops']:.3f} | "
            f"{r['miou']:.2f} | {r['miou_drop']:+.2f}{_ci(r, 'miou_drop_ci')} | {r['boundary_miou']:.2f} | "
            f"{r['boundary_miou_drop']:+.2f}{_ci(r, 'boundary_miou_drop_ci')} | {r['images_per_s']:.1f} |"
        )
    if res.get("paired"):
        lines += ["", "Paired differences at the same budget (positive: the first method is better; "
                  "\"no difference\" when the interval contains 0):", "",
                  "| target | methods | mIoU diff | verdict | boundary mIoU diff | verdict |",
                  "|---:|---|---:|---|---:|---|"]
        for p in res["paired"]:
            lines.append(
                f"| {p['target_reduction']:.2f} | {p['method']} - {p['versus']} | {p['miou_diff']:+.2f}"
                f"{_ci(p, 'miou_diff_ci')} | {p['miou_verdict']} | {p['boundary_miou_diff']:+.2f}"
                f"{_ci(p, 'boundary_miou_diff_ci')} | {p['boundary_miou_verdict']} |"
            )
    return "\n".join(lines) + "\n"


def pareto_plot(res: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    b = res["baseline"]
    methods = sorted({r["method"] for r in res["results"]}, key=lambda m: (m != "lvtp", m))
    for ax, key, title in ((axes[0], "miou", "mIoU"), (axes[1], "boundary_miou", "boundary mIoU")):
        for m in methods:
            rows = sorted((r for r in res["results"] if r["method"] == m), key=lambda r: r["gflops"])
            ax.plot([r["gflops"] for r in rows] + [b["gflops"]], [r[key] for r in rows] + [b[key]], marker="o",
                    label=m, linewidth=2.5 if m == "lvtp" else 1.2)
        ax.scatter([b["gflops"]], [b[key]], color="black", zorder=5, label="unpruned")
        ax.set_xlabel("GFLOPs per image")
        ax.set_ylabel(title)
        ax.set_title(f"{title} vs cost ({res['split']}, {res['images']} images)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
