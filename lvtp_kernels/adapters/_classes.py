"""Which model classes the adapters recognise: by the classes' MRO (module and class
names), so that recognising a model imports neither timm nor transformers."""

from __future__ import annotations

from typing import Optional, Tuple

SUPPORTED_NAMES: Tuple[str, ...] = (
    "timm.models.vision_transformer.VisionTransformer (ViT, DeiT, DINOv2 in timm, ...)",
    "transformers ViTModel",
    "transformers ViTForImageClassification",
    "transformers Dinov2Model",
    "transformers Dinov2ForImageClassification",
    "transformers Dinov2Backbone",
    "transformers Dinov2WithRegistersModel",
    "transformers Dinov2WithRegistersForImageClassification",
    "transformers Dinov2WithRegistersBackbone",
)

# (module prefix, class name) -> adapter; matched against every class of the model's MRO
_TIMM_CLASSES = (("timm.", "VisionTransformer"),)
_HF_CLASSES = (
    ("transformers.models.vit.", "ViTModel"),
    ("transformers.models.vit.", "ViTForImageClassification"),
    ("transformers.models.dinov2.", "Dinov2Model"),
    ("transformers.models.dinov2.", "Dinov2ForImageClassification"),
    ("transformers.models.dinov2.", "Dinov2Backbone"),
    ("transformers.models.dinov2_with_registers.", "Dinov2WithRegistersModel"),
    ("transformers.models.dinov2_with_registers.", "Dinov2WithRegistersForImageClassification"),
    ("transformers.models.dinov2_with_registers.", "Dinov2WithRegistersBackbone"),
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
