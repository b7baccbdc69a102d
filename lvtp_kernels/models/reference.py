"""The bundled reference model: a ViT-Ti/16 segmenter (conv stem) trained on CamVid train
by ``lvtp train-reference`` and shipped in fp16 (see assets/README.md)."""

from __future__ import annotations

import os
from typing import Optional

import torch

from .vit import ViTSegmenter

REFERENCE_NAME = "camvid_vit_ti_convstem"
REFERENCE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                              f"{REFERENCE_NAME}.pt")


def load_reference(path: Optional[str] = None, dtype: torch.dtype = torch.float32,
                   device: Optional[str] = None) -> ViTSegmenter:
    """The CamVid reference model in eval mode (``path``: another checkpoint written by
    ``lvtp train-reference``, its ``model.pt`` or ``last.pt``)."""
    from ..train import load_checkpoint

    path = path or REFERENCE_PATH
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"load_reference: {path!r} not found; train one with `lvtp train-reference --data DIR --out OUT` "
            "and pass OUT/model.pt"
        )
    model = load_checkpoint(path, dtype)
    model._lvtp_source = os.path.basename(path)
    return model.to(device) if device else model


def reference_info(path: Optional[str] = None) -> dict:
    """Config and training record stored with the checkpoint."""
    payload = torch.load(path or REFERENCE_PATH, map_location="cpu", weights_only=True)
    return {"config": payload.get("config"), "meta": payload.get("meta", {})}
