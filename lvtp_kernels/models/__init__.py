"""Models: a plain ViT segmenter, the bundled CamVid reference model, and the LVTP patch."""

from .patching import is_patched, last_records, patch, unpatch
from .reference import REFERENCE_PATH, load_reference, reference_info
from .vit import PRESETS, ViTConfig, ViTSegmenter, build_model, vit_config

__all__ = [
    "ViTConfig", "ViTSegmenter", "PRESETS", "build_model", "vit_config", "patch", "unpatch", "is_patched",
    "last_records", "load_reference", "reference_info", "REFERENCE_PATH",
]
