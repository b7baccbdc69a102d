"""Adapters: LVTP patching for model families other than the package's own ViT.

``lvtp_kernels.patch(model, ...)`` asks :func:`find_adapter` for the family of a model
that is not a :class:`lvtp_kernels.models.ViTSegmenter`. Supported:

* timm ``VisionTransformer`` (``timm.models.vision_transformer``) and every model built on
  it (ViT, DeiT, DeiT-III, DINOv2 in timm, register tokens, no class token, ...):
  :mod:`lvtp_kernels.adapters.timm_vit`.
* Hugging Face transformers ``ViTModel``, ``ViTForImageClassification``, ``Dinov2Model``
  and ``Dinov2ForImageClassification`` (eager and SDPA attention):
  :mod:`lvtp_kernels.adapters.hf_vit`.

Recognition goes by the class's MRO (module and class names), so importing this package
imports neither timm nor transformers; an adapter module is imported only for a model
whose class comes from its library.

An adapter ("family") has ``name``, ``depth(model)``, ``vit_shape(model, img_size=None,
**cost_options)`` (the cost model, python_ref.flops.ViTShape) and ``patched_class(cls)``
(a subclass made once per class, with ``_lvtp_original_class = cls``).
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import nn

SUPPORTED_NAMES: Tuple[str, ...] = (
    "timm.models.vision_transformer.VisionTransformer (ViT, DeiT, DINOv2 in timm, ...)",
    "transformers ViTModel",
    "transformers ViTForImageClassification",
    "transformers Dinov2Model",
    "transformers Dinov2ForImageClassification",
)

# (module prefix, class name) -> adapter; matched against every class of the model's MRO
_TIMM_CLASSES = (("timm.", "VisionTransformer"),)
_HF_CLASSES = (
    ("transformers.models.vit.", "ViTModel"),
    ("transformers.models.vit.", "ViTForImageClassification"),
    ("transformers.models.dinov2.", "Dinov2Model"),
    ("transformers.models.dinov2.", "Dinov2ForImageClassification"),
)


def _mro_match(cls: type, table) -> Optional[type]:
    for c in cls.__mro__:
        mod = getattr(c, "__module__", "") or ""
        for prefix, name in table:
            if c.__name__ == name and mod.startswith(prefix):
                return c
    return None


def hf_kind(cls: type) -> Optional[str]:
    """The supported transformers class name in ``cls``'s MRO, or None."""
    c = _mro_match(cls, _HF_CLASSES)
    return None if c is None else c.__name__


def find_adapter(model: nn.Module):
    """The adapter of ``model``'s family, or None when no adapter supports it."""
    cls = type(model)
    if _mro_match(cls, _TIMM_CLASSES) is not None:
        from . import timm_vit

        return timm_vit.TimmViT
    if _mro_match(cls, _HF_CLASSES) is not None:
        from . import hf_vit

        return hf_vit.HFViT
    return None


__all__ = ["SUPPORTED_NAMES", "find_adapter", "hf_kind"]
