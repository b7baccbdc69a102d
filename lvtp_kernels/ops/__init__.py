"""The ``torch.ops.lvtp`` ops, one module per op family.

Each family module holds, side by side, every op's schema, input check, fake kernel and
backend list (an :class:`lvtp_kernels.registry.OpSpec`); its Triton kernels are in
``<family>_triton.py`` beside it (imported on first use), its C++/CUDA kernels in
``csrc/<family>_cpu.cpp`` / ``csrc/<family>_cuda.cu``.

    family     ops                                  Triton              csrc
    tsallis    tsallis_entropy                      tsallis_triton      -
    attention  attention_entropy                    attention_triton    attention_cpu.cpp
    edge       patch_edge_energy                    edge_triton         edge_cpu.cpp
    select     kmeans, select, prune                -                   select_cpu.cpp, kmeans_cuda.cu, select_cuda.cu
    tokens     gather_tokens, scatter_tokens,       tokens_triton       tokens_cpu.cpp
               reconstruct_stage

Importing this package defines every op (prune, a composite of tsallis_entropy, select
and gather_tokens, after its parts), then lists them in the order above.
"""

from __future__ import annotations

from . import tsallis  # noqa: F401,I001  (each family module defines its ops; this order is `lvtp info`'s)
from . import attention  # noqa: F401
from . import edge  # noqa: F401
from . import select  # noqa: F401
from . import tokens  # noqa: F401
from .select import select_tokens  # noqa: F401  (deprecated alias of torch.ops.lvtp.select)
from .. import registry  # noqa: E402

PRUNE = select._define_prune()

FAMILIES = {
    "tsallis": ("tsallis_entropy",),
    "attention": ("attention_entropy",),
    "edge": ("patch_edge_energy",),
    "select": ("kmeans", "select", "prune"),
    "tokens": ("gather_tokens", "scatter_tokens", "reconstruct_stage"),
}

registry.set_order([op for ops in FAMILIES.values() for op in ops])
