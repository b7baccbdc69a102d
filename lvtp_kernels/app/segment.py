"""Inference helpers shared by the CLI, the trainer and the evaluation harness."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .data.camvid import normalize, resize_image


def prepare(images: Tensor, size: Tuple[int, int]) -> Tensor:
    """(B, 3, H, W) uint8 photos -> the model's normalised input at ``size``."""
    return normalize(resize_image(images, size) / 255.0)


@torch.no_grad()
def predict(model, images: Tensor, size: Tuple[int, int], out_hw: Tuple[int, int]) -> Tensor:
    """Class map (B, *out_hw) int64: the model runs at ``size``, its logits are bilinearly
    upsampled to ``out_hw`` (the label resolution) before the argmax."""
    x = prepare(images, size).to(next(model.parameters()).device)
    logits = model(x)
    if tuple(logits.shape[-2:]) != tuple(out_hw):
        logits = F.interpolate(logits.float(), size=out_hw, mode="bilinear", align_corners=False)
    return logits.argmax(1).cpu()
