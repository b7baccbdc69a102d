"""The bundled reference model: a ViT-Ti/16 segmenter (conv stem) trained on CamVid train
by ``lvtp train-reference`` and shipped as fp16 safetensors with its config beside it
(see assets/README.md)."""

from __future__ import annotations

import os
from typing import Optional

import torch

from .checkpoint import load_checkpoint, read_checkpoint
from .vit import ViTSegmenter

REFERENCE_NAME = "camvid_vit_ti_convstem"
REFERENCE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                              f"{REFERENCE_NAME}.safetensors")


ASSETS = os.path.dirname(REFERENCE_PATH)


def bundled_models() -> list:
    """Names of the checkpoints shipped in lvtp_kernels/assets (``load_reference(name)``)."""
    return sorted(f[: -len(".safetensors")] for f in os.listdir(ASSETS) if f.endswith(".safetensors"))


def load_reference(path: Optional[str] = None, dtype: torch.dtype = torch.float32,
                   device: Optional[str] = None) -> ViTSegmenter:
    """The CamVid reference model in eval mode. ``path``: a bundled model's name
    (``bundled_models()``, default ``"camvid_vit_ti_convstem"``) or a checkpoint file
    written by ``lvtp train-reference``: its ``model.safetensors`` (config in the metadata or
    in a ``.json`` beside it), ``last.pt``, or a v1 ``model.pt``."""
    path = path or REFERENCE_PATH
    if not os.path.exists(path) and os.path.isfile(os.path.join(ASSETS, f"{path}.safetensors")):
        path = os.path.join(ASSETS, f"{path}.safetensors")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"load_reference: {path!r} is neither a file nor a bundled model {bundled_models()}; train one with "
            "`lvtp train-reference --data DIR --out OUT` and pass OUT/model.safetensors"
        )
    model = load_checkpoint(path, dtype)
    model._lvtp_source = os.path.basename(path)
    return model.to(device) if device else model


def reference_info(path: Optional[str] = None) -> dict:
    """Config and training record stored with the checkpoint."""
    config, _, meta = read_checkpoint(path or REFERENCE_PATH)
    return {"config": config, "meta": meta}
