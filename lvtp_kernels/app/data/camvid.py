"""CamVid (11 classes, SegNet split) as laid out in ``../shared/camvid``: ``SPLIT.txt``
lists "image label" paths relative to the data folder; labels are 8-bit class maps with
11 = void (ignored by the loss and the metrics)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CLASS_NAMES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_INDEX = 11
# ImageNet statistics: the model's input normalisation.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class SegSample:
    name: str
    image: Tensor  # (3, H, W) uint8
    label: Tensor  # (H, W) uint8 (int64 after loading is not needed)


# The video sequences of the train+val pool (a frame's name starts with its sequence).
# val is one sequence, 0016E5, which also gives 204 of the 367 train frames: val figures
# flatter a model and any choice tuned on them. Sequence-disjoint hold-outs avoid that.
SEQUENCES = ("0001TP", "0006R0", "0016E5")
POOL_SPLITS = ("train", "val")


def sequence_of(path_or_name: str) -> str:
    """A frame's sequence: the part of its file name before the first ``_``."""
    return os.path.basename(path_or_name).split("_")[0]


def _list_pairs(data_dir: str, split: str) -> List[Tuple[str, str]]:
    lst = os.path.join(data_dir, f"{split}.txt")
    if not os.path.isfile(lst):
        raise FileNotFoundError(f"split list {lst!r} not found (expected 'image label' lines)")
    pairs = []
    with open(lst) as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{lst}:{ln}: expected 'image label', got {line.strip()!r}")
            pairs.append(tuple(os.path.join(data_dir, p) for p in parts))
    if not pairs:
        raise ValueError(f"split list {lst!r} is empty")
    return pairs


def read_pairs(data_dir: str, split: str) -> List[Tuple[str, str]]:
    """The (image, label) paths of a split, made absolute. ``split`` is the name of a list
    ``SPLIT.txt`` in ``data_dir`` ("train", "val"), or a sequence-disjoint selection from the
    train+val pool: ``seq:A[,B]`` (the frames of those sequences) or ``except:A[,B]`` (every
    frame of the other sequences), e.g. train on ``except:0006R0``, score on ``seq:0006R0``."""
    kind, _, names = split.partition(":")
    if not names:
        return _list_pairs(data_dir, split)
    if kind not in ("seq", "except"):
        raise ValueError(f"split {split!r}: a selection is seq:NAMES or except:NAMES (NAMES: comma-separated "
                         f"sequences, e.g. {','.join(SEQUENCES[:2])})")
    pool = [p for name in POOL_SPLITS for p in _list_pairs(data_dir, name)]
    present = sorted({sequence_of(p[0]) for p in pool})
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = sorted(wanted - set(present))
    if unknown or not wanted:
        raise ValueError(f"split {split!r}: unknown sequence(s) {unknown}; the train+val pool has {present}")
    chosen = [p for p in pool if (sequence_of(p[0]) in wanted) == (kind == "seq")]
    if not chosen:
        raise ValueError(f"split {split!r} selects no frame (the pool has {present})")
    return chosen


def read_image(path, what: str = "image") -> Tensor:
    """The image file ``path`` as a (3, H, W) uint8 tensor. A missing, unreadable, corrupt
    or not RGB-convertible file raises an error (ValueError, FileNotFoundError or
    PermissionError) whose message starts with ``what`` and names the file."""
    from PIL import Image

    p = str(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{what} {p!r} not found")
    if os.path.isdir(p):
        raise ValueError(f"{what} {p!r} is a folder, not an image file")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"{what} {p!r} is not readable (permission denied)")
    try:
        with Image.open(p) as im:
            im.load()  # decodes now: a truncated file fails here, not later
            rgb = im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{what} {p!r} is too large to decode safely ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - whatever PIL raises, the file is at fault
        if type(exc).__name__ == "UnidentifiedImageError":
            why = "not an image file PIL can read (corrupt, or another format)"
        else:
            msg = " ".join(str(exc).split())[:600] or type(exc).__name__
            why = f"cannot be decoded as an RGB image ({type(exc).__name__}: {msg})"
        raise ValueError(f"{what} {p!r}: {why}") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{what} {p!r}: expected an H x W RGB image, got an array of shape {arr.shape}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_label(path: str) -> Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 2:
        raise ValueError(f"label {path!r} must be a single-channel class map, got shape {arr.shape}")
    return torch.from_numpy(arr.copy())


def load_split(data_dir: str, split: str, limit: Optional[int] = None) -> List[SegSample]:
    """Every (image, label) of a split, decoded into memory (CamVid train is ~190 MB)."""
    pairs = read_pairs(data_dir, split)[:limit]
    out = []
    for img_path, lbl_path in pairs:
        img, lbl = read_image(img_path), read_label(lbl_path)
        if img.shape[1:] != lbl.shape:
            raise ValueError(f"{img_path}: image {tuple(img.shape[1:])} and label {tuple(lbl.shape)} differ in size")
        out.append(SegSample(os.path.splitext(os.path.basename(img_path))[0], img, lbl))
    return out


def normalize(images: Tensor) -> Tensor:
    """(B, 3, H, W) uint8 or [0, 1] float -> the model's input (ImageNet mean/std)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_image(image: Tensor, size: Tuple[int, int]) -> Tensor:
    """(3, H, W) or (B, 3, H, W) uint8 -> float in [0, 255] at ``size`` (bilinear, antialiased)."""
    x = image.float()
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0] if squeeze else x


def augment(sample: SegSample, out_hw: Tuple[int, int], gen: torch.Generator,
            scale: Tuple[float, float] = (0.5, 1.0), jitter: float = 0.25) -> Tuple[Tensor, Tensor]:
    """Training augmentation: random rescale of the original, random crop (void-padded)
    to ``out_hw``, horizontal flip, brightness/contrast/saturation jitter.

    Returns (3, h, w) float in [0, 255] and (h, w) int64 labels."""
    img, lbl = sample.image.float()[None], sample.label[None, None].float()
    _, _, h0, w0 = img.shape
    s = float(torch.empty(()).uniform_(*scale, generator=gen))
    h, w = max(1, round(h0 * s)), max(1, round(w0 * s))
    img = F.interpolate(img, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    lbl = F.interpolate(lbl, size=(h, w), mode="nearest")
    oh, ow = out_hw
    ph, pw = max(0, oh - h), max(0, ow - w)
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), value=0.0)
        lbl = F.pad(lbl, (0, pw, 0, ph), value=float(IGNORE_INDEX))
        h, w = h + ph, w + pw
    y = int(torch.randint(0, h - oh + 1, (), generator=gen))
    x = int(torch.randint(0, w - ow + 1, (), generator=gen))
    img, lbl = img[..., y : y + oh, x : x + ow], lbl[..., y : y + oh, x : x + ow]
    if bool(torch.rand((), generator=gen) < 0.5):
        img, lbl = img.flip(-1), lbl.flip(-1)
    if jitter > 0:
        b, c, sat = (1.0 + (torch.rand(3, generator=gen) * 2 - 1) * jitter).tolist()
        img = img * b
        mean = img.mean()
        img = (img - mean) * c + mean
        grey = (0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3])
        img = (img - grey) * sat + grey
        img = img.clamp(0.0, 255.0)
    return img[0], lbl[0, 0].long()
