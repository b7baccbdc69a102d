"""Adapters: LVTP patching for model families other than the package's own ViT.

``lvtp_kernels.patch(model, ...)`` asks :func:`find_adapter` for the family of a model
that is not a :class:`lvtp_kernels.models.ViTSegmenter`. Supported:

* timm ``VisionTransformer`` (``timm.models.vision_transformer``) and every model built on
  it (ViT, DeiT, DeiT-III, DINOv2 in timm, register tokens, no class token, ...):
  :mod:`lvtp_kernels.adapters.timm_vit`.
* Hugging Face transformers ``ViTModel``, ``ViTForImageClassification``, ``Dinov2Model``,
  ``Dinov2ForImageClassification``, ``Dinov2Backbone`` and the DINOv2-with-registers
  ``Dinov2WithRegistersModel`` / ``...ForImageClassification`` / ``...Backbone`` (eager and
  SDPA attention): :mod:`lvtp_kernels.adapters.hf_vit`.

A dense model that holds one of these as a submodule (transformers
``DPTForDepthEstimation`` / ``UperNetForSemanticSegmentation`` with a DINOv2 backbone, a
user's decoder around a timm ViT) is patched through that submodule:
``lvtp_kernels.patch(model.backbone, ...)``; ``patch(model)`` raises a TypeError that names
the submodule (:func:`supported_submodules`).

Recognition goes by the class's MRO (module and class names), so importing this package
imports neither timm nor transformers; an adapter module is imported only for a model
whose class comes from its library.

An adapter ("family") has ``name``, ``depth(model)``, ``vit_shape(model, img_size=None,
**cost_options)`` (the cost model, python_ref.flops.ViTShape) and ``patched_class(cls)``
(a subclass made once per class, with ``_lvtp_original_class = cls``; pickling rebuilds
it from the original class, :func:`find_adapter_for_class`).
"""

from __future__ import annotations

from typing import List

from torch import nn

from ._classes import _HF_CLASSES, _TIMM_CLASSES, SUPPORTED_NAMES, _mro_match, hf_kind  # noqa: F401


def find_adapter(model: nn.Module):
    """The adapter of ``model``'s family, or None when no adapter supports it."""
    return find_adapter_for_class(type(model))


def find_adapter_for_class(cls: type):
    """The adapter of the model class ``cls``, or None."""
    if _mro_match(cls, _TIMM_CLASSES) is not None:
        from . import timm_vit

        return timm_vit.TimmViT
    if _mro_match(cls, _HF_CLASSES) is not None:
        from . import hf_vit

        return hf_vit.HFViT
    return None


def supported_submodules(model: nn.Module, limit: int = 3) -> List[str]:
    """Dotted names (``"backbone"``, ``"encoder.vit"``) of the outermost submodules of
    ``model`` that an adapter patches, at most ``limit`` of them; for the error that
    tells what to patch in a model no adapter supports as a whole."""
    found: List[str] = []
    for name, sub in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in found):
            continue
        if find_adapter(sub) is not None:
            found.append(name)
            if len(found) >= limit:
                break
    return found


__all__ = ["SUPPORTED_NAMES", "find_adapter", "find_adapter_for_class", "hf_kind", "supported_submodules"]
