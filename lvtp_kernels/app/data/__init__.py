"""Data for the reference model and the evaluation harness: CamVid lists, loading,
augmentation and segmentation metrics."""

from .camvid import (
    CLASS_NAMES,
    SEQUENCES,
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
    sequence_of,
)
from .metrics import ConfusionMatrix, bootstrap_counts, boundary_mask, miou_of

__all__ = [
    "CLASS_NAMES",
    "SEQUENCES",
    "bootstrap_counts",
    "miou_of",
    "sequence_of",
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
