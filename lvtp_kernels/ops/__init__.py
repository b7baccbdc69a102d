"""Triton kernels of the lvtp ops, one file per op family.

Importing a family registers its ``triton`` backend with :mod:`lvtp_kernels.registry`
(CUDA tensors always; CPU tensors too when ``TRITON_INTERPRET=1``, which is how the
tests run the same kernels on a machine without a GPU).

The families are imported when they can run here (a GPU, or the interpreter); otherwise
each op gets a lazy ``triton`` backend for CUDA tensors that imports its family on first
use, so ``import lvtp_kernels`` does not pay for importing Triton on a CPU-only machine.
When Triton does not import, the backend is registered as unavailable with the reason,
which ``lvtp info`` shows.
"""

from __future__ import annotations

import importlib
from typing import Dict, Tuple

import torch

from .. import registry
from ._common import interpreting, triton_status

# family module -> {op: launcher name}
FAMILIES: Dict[str, Dict[str, str]] = {
    "tsallis": {"tsallis_entropy": "tsallis_entropy"},
    "attention": {"attention_entropy": "attention_entropy"},
    "edge": {"patch_edge_energy": "patch_edge_energy"},
    "gather_scatter": {
        "gather_tokens": "gather_tokens",
        "scatter_tokens": "scatter_tokens",
        "reconstruct_stage": "reconstruct_stage",
    },
}


def _lazy(family: str, launcher: str):
    def run(*args):
        return getattr(importlib.import_module(f"{__name__}.{family}"), launcher)(*args)

    run.__name__ = f"lazy_{launcher}"
    return run


def _load() -> None:
    ok, _ = triton_status() if (interpreting() or torch.cuda.is_available()) else (False, "")
    for family, ops in FAMILIES.items():
        if ok:
            importlib.import_module(f"{__name__}.{family}")  # registers its ops
            continue
        for op, launcher in ops.items():
            registry.register_backend(op, "triton", _lazy(family, launcher), devices=("cuda",), available=triton_status)


_load()
