"""Models: a plain ViT segmenter and the LVTP patch."""

from .patching import is_patched, last_records, patch, unpatch
from .vit import PRESETS, ViTConfig, ViTSegmenter, build_model, vit_config

__all__ = ["ViTConfig", "ViTSegmenter", "PRESETS", "build_model", "vit_config", "patch", "unpatch", "is_patched", "last_records"]
