"""Data for the reference model and the evaluation harness: CamVid lists, loading,
augmentation and segmentation metrics."""

from .camvid import (
    CLASS_NAMES,
    IGNORE_INDEX,
    MEAN,
    NUM_CLASSES,
    STD,
    SegSample,
    augment,
    load_split,
    normalize,
    read_pairs,
    resize_image,
)
from .metrics import ConfusionMatrix, boundary_mask

__all__ = [
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "MEAN",
    "NUM_CLASSES",
    "STD",
    "SegSample",
    "augment",
    "load_split",
    "normalize",
    "read_pairs",
    "resize_image",
    "ConfusionMatrix",
    "boundary_mask",
]
