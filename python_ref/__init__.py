"""Pure-PyTorch reference of LVTP: every op of ``torch.ops.lvtp`` and the progressive pipeline.

This package never imports ``lvtp_kernels``; it is the numerical reference that the
kernels and the model patch are tested against (see ../shared/lvtp-spec.md).
"""

from .ops import (
    attention_entropy,
    gather_tokens,
    kmeans,
    patch_edge_energy,
    prune,
    scatter_tokens,
    select,
    tsallis_entropy,
)
from .pipeline import reconstruct_stage

__all__ = [
    "attention_entropy",
    "gather_tokens",
    "kmeans",
    "patch_edge_energy",
    "prune",
    "scatter_tokens",
    "select",
    "tsallis_entropy",
    "reconstruct_stage",
]
