"""Pictures a user looks at to trust the method: predictions and which tokens each stage
pruned. Pillow only (no plotting library needed)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

# The usual CamVid colours (SegNet tutorial), void black.
CAMVID_PALETTE = np.array(
    [
        [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
        [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [0, 0, 0],
    ],
    dtype=np.uint8,
)
# Token fate colours: kept to the end, pruned at stage 1, 2, 3, ...
STAGE_COLOURS = np.array([[40, 200, 90], [230, 60, 50], [250, 160, 40], [250, 230, 60], [160, 90, 220]], dtype=np.uint8)


def colorize(label: Tensor) -> np.ndarray:
    """(H, W) class map -> (H, W, 3) uint8 (ids outside the palette are black)."""
    lbl = label.cpu().numpy().astype(np.int64)
    lbl = np.where((lbl >= 0) & (lbl < len(CAMVID_PALETTE)), lbl, len(CAMVID_PALETTE) - 1)
    return CAMVID_PALETTE[lbl]


def token_stage_map(records, num_tokens: int, num_protected: int) -> Tensor:
    """(B, num_tokens - P) int64: 0 for a patch token kept to the end, s for a token pruned
    at stage s (1-based), from a patched model's ``last_records``."""
    if not records:
        raise ValueError("token_stage_map: no stage records (patch with keep_records=True and run a forward)")
    b = records[0].keep_idx.shape[0]
    device = records[0].keep_idx.device
    positions = torch.arange(num_tokens, device=device).expand(b, -1)
    fate = torch.zeros(b, num_tokens, dtype=torch.int64, device=device)
    for s, rec in enumerate(records, start=1):
        pruned = positions.gather(1, rec.prune_idx.long())
        fate.scatter_(1, pruned, s)
        positions = positions.gather(1, rec.keep_idx.long())
    return fate[:, num_protected:].cpu()


def stage_overlay(image_rgb: np.ndarray, fate: Tensor, grid: Tuple[int, int], alpha: float = 0.45) -> np.ndarray:
    """Tint each patch of ``image_rgb`` (H, W, 3) by its fate (kept / pruned at stage s)."""
    h, w = grid
    f = fate.view(h, w).numpy()
    colours = STAGE_COLOURS[np.clip(f, 0, len(STAGE_COLOURS) - 1)]
    ph, pw = image_rgb.shape[0] // h, image_rgb.shape[1] // w
    tint = np.kron(colours, np.ones((ph, pw, 1), dtype=np.uint8))
    out = image_rgb.copy()
    out[: tint.shape[0], : tint.shape[1]] = (
        (1 - alpha) * image_rgb[: tint.shape[0], : tint.shape[1]] + alpha * tint
    ).astype(np.uint8)
    # grid lines between pruned and kept patches are implicit in the tint
    return out


def heatmap(values: Tensor, grid: Tuple[int, int], out_hw: Tuple[int, int]) -> np.ndarray:
    """(h*w,) values in [0, 1] -> a (H, W, 3) uint8 false-colour map (dark blue .. yellow)."""
    v = values.float().view(1, 1, *grid).clamp(0, 1)
    v = torch.nn.functional.interpolate(v, size=out_hw, mode="nearest")[0, 0].numpy()
    r = np.clip(1.5 * v - 0.2, 0, 1)
    g = np.clip(1.2 * v, 0, 1) * 0.9
    b = np.clip(0.6 - v, 0, 1) + 0.2 * v
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def compose(panels: Sequence[Tuple[str, np.ndarray]], columns: Optional[int] = None, pad: int = 6,
            title_h: int = 18) -> "Image.Image":
    """A titled grid of equally sized RGB panels."""
    from PIL import Image, ImageDraw

    cols = columns or len(panels)
    rows = (len(panels) + cols - 1) // cols
    h, w = panels[0][1].shape[:2]
    canvas = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + title_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (title, arr) in enumerate(panels):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (w + pad), pad + r * (h + title_h + pad)
        draw.text((x0, y0 + 2), title, fill=(0, 0, 0))
        if arr.shape[:2] != (h, w):
            arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.NEAREST))
        canvas.paste(Image.fromarray(arr), (x0, y0 + title_h))
    return canvas


def stage_legend(num_stages: int, layers: Sequence[int]) -> List[Tuple[str, Tuple[int, int, int]]]:
    items = [("kept", tuple(STAGE_COLOURS[0]))]
    for s in range(1, num_stages + 1):
        items.append((f"pruned after block {layers[s - 1]}", tuple(STAGE_COLOURS[min(s, len(STAGE_COLOURS) - 1)])))
    return items


# --------------------------------------------------------------------------- legend
DIMMED_COLOUR = (200, 200, 200)  # stage_kept_overlay's grey


def class_legend(h: int, w: int, stages: Optional[Sequence[int]] = None, dimmed: bool = False,
                 heat: bool = False) -> np.ndarray:
    """An (h, w, 3) uint8 legend panel: a swatch and the name of each CamVid class in
    ``CAMVID_PALETTE`` (void last); with ``stages`` (the blocks after which tokens are
    pruned) the token-fate colours of :func:`stage_overlay`; with ``dimmed`` the grey of
    :func:`stage_kept_overlay`; with ``heat`` the low..high ramp of :func:`heatmap`.
    Entries flow top to bottom in as many columns as the height needs."""
    from PIL import Image, ImageDraw

    from .data.camvid import CLASS_NAMES

    classes = [(name, tuple(int(c) for c in CAMVID_PALETTE[i])) for i, name in enumerate(CLASS_NAMES)]
    classes.append(("void (not scored)", tuple(int(c) for c in CAMVID_PALETTE[len(CLASS_NAMES)])))
    sections = [("CamVid classes", classes)]
    tokens = []
    if stages:
        tokens += stage_legend(len(stages), list(stages))
    if dimmed:
        tokens.append(("pruned by that stage", DIMMED_COLOUR))
    if heat:
        tokens.append(("edge / score: low .. high", None))  # None: the heatmap ramp
    if tokens:
        sections.append(("tokens", tokens))

    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    line = max(12, min(20, h // 13))
    per_col = max(1, (h - 4) // line)
    # lay the entries out: a section starts a new column when it fits in one but not in what is left
    slots, col, row = [], 0, 0
    for title, items in sections:
        need = 1 + len(items)
        if row and row + need > per_col and need <= per_col:
            col, row = col + 1, 0
        for entry in [(title, "title")] + items:
            if row >= per_col:
                col, row = col + 1, 0
            slots.append((col, row, entry))
            row += 1
    cols = col + 1
    cw = w // cols
    sw = max(6, line - 5)
    ramp = heatmap(torch.linspace(0, 1, 16), (1, 16), (1, 16))[0]
    for col, row, (text, colour) in slots:
        x0, y0 = 3 + col * cw, 2 + row * line
        if colour == "title":
            draw.text((x0, y0), text, fill=(0, 0, 0))
            continue
        box = (x0, y0 + (line - sw) // 2, x0 + sw * (3 if colour is None else 1), y0 + (line - sw) // 2 + sw)
        if colour is None:
            seg = (box[2] - box[0]) / len(ramp)
            for k, c in enumerate(ramp):
                draw.rectangle((int(box[0] + k * seg), box[1], int(box[0] + (k + 1) * seg), box[3]),
                               fill=tuple(int(v) for v in c))
            draw.rectangle(box, outline=(90, 90, 90))
        else:
            draw.rectangle(box, fill=colour, outline=(90, 90, 90))
        draw.text((box[2] + 4, y0), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def figure_columns(n_panels: int, choices: Sequence[int] = (4, 5)) -> int:
    """The column count of ``choices`` that leaves the fewest empty cells for ``n_panels``
    (the narrower on a tie)."""
    return min(choices, key=lambda c: ((-n_panels) % c, c))


# --------------------------------------------------------------------------- lvtp viz


def stage_kept_overlay(image_rgb: np.ndarray, fate: Tensor, grid: Tuple[int, int], stage: int) -> np.ndarray:
    """``image_rgb`` with the patches pruned at stages 1..``stage`` dimmed to grey: what the
    blocks after that stage still see."""
    h, w = grid
    f = fate.view(h, w).numpy()
    gone = (f >= 1) & (f <= stage)
    ph, pw = image_rgb.shape[0] // h, image_rgb.shape[1] // w
    mask = np.kron(gone.astype(np.uint8), np.ones((ph, pw), dtype=np.uint8)).astype(bool)
    out = image_rgb.copy()
    region = out[: mask.shape[0], : mask.shape[1]]
    region[mask] = (0.25 * region[mask] + 0.75 * 200).astype(np.uint8)
    return out


def _normalise01(v: Tensor) -> Tensor:
    v = v.double()
    lo, hi = v.min(), v.max()
    return ((v - lo) / (hi - lo)).float() if hi > lo else torch.zeros_like(v, dtype=torch.float32)


def viz_panels(model, photo: Tensor, reduction: float = 0.3, size: Optional[Tuple[int, int]] = None):
    """The ``lvtp viz`` figure's panels for the package's ViT segmenter ``model`` on one
    (3, H, W) uint8 ``photo``: the image, its edge energy (spec step 3), the fused score
    ``u`` at the first stage (step 4, min-max scaled), the tokens still active after each
    stage, every token's fate, and the unpruned and pruned predictions. The model is
    patched for the forward (``flops_reduction=reduction``) and unpatched after.
    Returns (panels, schedule)."""
    import lvtp_kernels
    from PIL import Image
    from python_ref.ops import fused_importance

    from .segment import prepare

    size = tuple(size or model.cfg.img_size)
    p, patch = model.num_prefix_tokens, model.cfg.patch_size
    grid = (size[0] // patch, size[1] // patch)
    x = prepare(photo[None], size).to(next(model.parameters()).device)
    rgb = np.asarray(Image.fromarray(photo.permute(1, 2, 0).cpu().numpy()).resize((size[1], size[0]), Image.BILINEAR))
    try:
        with torch.inference_mode():
            base = model(x).argmax(1)[0].cpu()
            lvtp_kernels.patch(model, flops_reduction=reduction, img_size=size, keep_records=True)
            pruned = model(x).argmax(1)[0].cpu()
            records = lvtp_kernels.last_records(model)
            st = model._lvtp
            edge = torch.ops.lvtp.patch_edge_energy(x, patch)  # (1, h*w), of the model's input
            first = st.schedule[0][0] if st.schedule else 0
            tokens, _ = model.embed(x)
            for blk in model.blocks[:first]:
                tokens = blk(tokens)
            _, ent = model.blocks[first].forward_entropy(tokens, st.qs)
            full_edge = torch.cat([edge.new_zeros(1, p), edge], dim=1) if st.use_edge else None
            u = fused_importance(ent, full_edge, p, st.alpha, st.entropy_mode)[0, p:]
            schedule = list(st.schedule)
    finally:
        lvtp_kernels.unpatch(model)
    panels = [
        ("image", rgb),
        ("edge energy (Sobel, per patch)", heatmap(edge[0].cpu(), grid, size)),
        (f"fused score u after block {first}", heatmap(_normalise01(u.cpu()), grid, size)),
    ]
    if records:
        fate = token_stage_map(records, records[0].x_at_stage.shape[1], p)[0]
        for s, rec in enumerate(records, start=1):
            kept = rec.keep_idx.shape[1] - p
            panels.append((f"stage {s}: {kept} tokens kept after block {rec.layer}", stage_kept_overlay(rgb, fate, grid, s)))
        layers = "/".join(str(r.layer) for r in records)
        panels.append((f"fate: green kept, red/orange/yellow pruned after {layers}", stage_overlay(rgb, fate, grid)))
    else:
        panels.append(("no stage prunes (reduction 0): every token kept", rgb))
    panels += [("prediction, unpruned", colorize(base)), (f"prediction, LVTP {reduction:.0%}", colorize(pruned))]
    return panels, schedule


def run_viz(args) -> int:
    """``lvtp viz IMAGE [--model PATH] [--reduction 0.3] --out FILE.png``. A bad input raises
    an error naming the file or argument (``lvtp.cli.main`` prints it as one line)."""
    from pathlib import Path

    from .args import check_output_file, load_model_arg, writing
    from .data.camvid import read_image

    photo = read_image(args.image, "image")
    check_output_file(args.out, "--out")
    model = load_model_arg(args.model)
    panels, schedule = viz_panels(model, photo, args.reduction)
    h, w = panels[0][1].shape[:2]
    panels.append(("legend", class_legend(h, w, stages=[layer for layer, _ in schedule] if schedule else None,
                                          dimmed=bool(schedule), heat=True)))
    out = Path(args.out)
    with writing(out, "--out"):
        out.parent.mkdir(parents=True, exist_ok=True)
        compose(panels, columns=figure_columns(len(panels))).save(out, format="PNG")
    stages = ", ".join(f"block {layer}: keep {r:.2f}" for layer, r in schedule)
    print(f"lvtp viz: wrote {out} ({len(panels)} panels; schedule {stages or 'none'})")
    return 0


def add_viz_parser(subparsers) -> None:
    """Register ``lvtp viz`` on the CLI's subparsers (handler: :func:`run_viz`)."""
    from .args import _reduction

    p = subparsers.add_parser(
        "viz", help="one figure: image, edge energy, fused score, tokens kept per stage, predictions"
    )
    p.add_argument("image", help="an RGB image file")
    p.add_argument("--model", default=None, help="checkpoint from `lvtp train-reference` or a bundled model's name "
                   "(default: the bundled CamVid model)")
    p.add_argument("--reduction", type=_reduction, default=0.3, help="target GFLOPs reduction (default 0.3)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.set_defaults(func=run_viz)
