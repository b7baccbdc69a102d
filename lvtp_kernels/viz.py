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
