"""Segmentation metrics: mIoU from a confusion matrix, and the boundary band of a label map."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix (rows: label, cols: prediction); pixels whose
    label is outside [0, C) (void) or outside ``mask`` are not counted."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, label: Tensor, mask: Optional[Tensor] = None) -> None:
        if pred.shape != label.shape:
            raise ValueError(f"ConfusionMatrix.update: pred {tuple(pred.shape)} and label {tuple(label.shape)} differ")
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= self.num_classes):
            raise ValueError(f"ConfusionMatrix.update: predictions must lie in [0, {self.num_classes}), "
                             f"got values in [{int(pred.min())}, {int(pred.max())}]")
        valid = (label >= 0) & (label < self.num_classes)
        if mask is not None:
            valid &= mask
        idx = label[valid].long() * self.num_classes + pred[valid].long()
        self.mat += torch.bincount(idx.cpu(), minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def iou(self) -> Tensor:
        """Per-class IoU, NaN for a class absent from both labels and predictions."""
        m = self.mat.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes present in the labels (classes never labelled are skipped)."""
        iou = self.iou()
        present = self.mat.sum(1) > 0
        return float(iou[present].mean()) * 100.0 if bool(present.any()) else float("nan")

    def pixel_acc(self) -> float:
        return float(self.mat.diag().sum()) / max(1, int(self.mat.sum())) * 100.0

    def per_class(self, names: List[str]) -> Dict[str, Optional[float]]:
        """Per-class IoU in percent; None (JSON null) for a class absent from labels and predictions."""
        return {n: (None if v != v else float(v) * 100.0) for n, v in zip(names, self.iou().tolist())}


def miou_of(mats: Tensor) -> Tensor:
    """mIoU in percent of (..., C, C) confusion matrices, ``ConfusionMatrix.miou`` batched:
    the mean IoU over the classes present in each matrix's labels."""
    m = mats.double()
    inter = m.diagonal(dim1=-2, dim2=-1)
    rows = m.sum(-1)
    union = m.sum(-2) + rows - inter
    present = rows > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
    return iou.sum(-1) / present.sum(-1).clamp_min(1) * 100.0


def bootstrap_counts(n: int, resamples: int, seed: int = 0) -> Tensor:
    """(resamples, n) int64: how often each of ``n`` images is drawn in each bootstrap
    resample (n draws with replacement). Summing per-image confusion matrices with these
    weights gives the resampled dataset's matrix; the same counts for two methods on the
    same images give a paired bootstrap of their difference."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (resamples, n), generator=gen)
    return torch.zeros(resamples, n, dtype=torch.int64).scatter_add_(1, idx, torch.ones_like(idx))


def resampled_miou(per_image: Tensor, counts: Tensor) -> Tensor:
    """(n, C, C) per-image matrices, (R, n) counts -> (R,) mIoU of each resample."""
    n, c, _ = per_image.shape
    mats = counts.double() @ per_image.reshape(n, c * c).double()
    return miou_of(mats.reshape(-1, c, c))


def percentile_ci(samples: Tensor, level: float = 0.95) -> List[float]:
    """[lo, hi] percentile interval of bootstrap ``samples``."""
    a = (1.0 - level) / 2.0
    q = torch.quantile(samples.double(), torch.tensor([a, 1.0 - a], dtype=torch.float64))
    return [float(q[0]), float(q[1])]


def boundary_mask(label: Tensor, width: int = 5) -> Tensor:
    """Pixels within ``width`` px (Chebyshev distance) of a label change, void counted as a
    label: (H, W) or (B, H, W) -> bool of the same shape."""
    lbl = label.long()
    squeeze = lbl.ndim == 2
    if squeeze:
        lbl = lbl[None]
    # a pixel is on an edge when a 4-neighbour has another label
    edge = torch.zeros_like(lbl, dtype=torch.bool)
    edge[:, 1:, :] |= lbl[:, 1:, :] != lbl[:, :-1, :]
    edge[:, :-1, :] |= lbl[:, 1:, :] != lbl[:, :-1, :]
    edge[:, :, 1:] |= lbl[:, :, 1:] != lbl[:, :, :-1]
    edge[:, :, :-1] |= lbl[:, :, 1:] != lbl[:, :, :-1]
    band = F.max_pool2d(edge[:, None].float(), kernel_size=2 * width + 1, stride=1, padding=width)[:, 0] > 0
    return band[0] if squeeze else band
