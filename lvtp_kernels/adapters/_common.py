"""What the timm and Hugging Face adapters share: the pruned block loop (with the full
token maps of intermediate layers), pickling of patched models and helpers.

Intermediate layers (``timm forward_intermediates``, transformers ``hidden_states`` and
backbone ``feature_maps``): the full token map after block ``L`` is rebuilt from the
tokens active after block ``L`` (after its pruning when ``L`` is a stage) with the
reconstruction of every stage at or before ``L`` (``patching.reconstruct``, last stage
first, the model's ``reconstruct`` mode); stages after ``L`` do not apply. A pruned token
thus carries its stage features plus the residual its kept neighbours gathered up to
``L``. Before the first stage this is the block's own output; after the last block it is
exactly what ``forward_features`` / ``last_hidden_state`` rebuild (before the final norm).
"""

from __future__ import annotations

import sys
from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from python_ref.pipeline import StageRecord

from ..models.patching import LVTPState, _LVTPMixin, finish, prune_step, reconstruct, stage_edge


def attention_entropy(q: Tensor, k: Tensor, v: Tensor, qs: Sequence[float], scale: float) -> Tuple[Tensor, Tensor]:
    """(B, H, N, D) q, k, v -> attention output (B, H, N, D) and the per-token entropies
    (B, N, len(qs)) from ``torch.ops.lvtp.attention_entropy`` (no N x N map is kept)."""
    return torch.ops.lvtp.attention_entropy(q, k, v, [float(t) for t in qs], float(scale))


def edge_for(st: LVTPState, image: Optional[Tensor], patch_size: Optional[int], tokens: Tensor, num_prefix: int):
    """The edge energy of ``image`` per token, or None when there is no edge term or the
    image cannot give one for these tokens (not 3 channels, no single square patch size,
    or a patch grid that is not the token grid, e.g. a padded or unusual stem)."""
    if image is None or patch_size is None or image.dim() != 4 or image.shape[1] != 3:
        return None
    if image.shape[-2] // patch_size * (image.shape[-1] // patch_size) + num_prefix != tokens.shape[1]:
        return None
    return stage_edge(st, image, patch_size, num_prefix)


def pruned_blocks_with_intermediates(
    st: LVTPState,
    blocks: Sequence[nn.Module],
    x: Tensor,
    image: Optional[Tensor],
    patch_size: Optional[int],
    num_prefix: int,
    block_entropy: Callable[[nn.Module, Tensor, Sequence[float]], Tuple[Tensor, Tensor]],
    run_block: Callable[[nn.Module, Tensor], Tensor],
    take: Collection[int] = (),
) -> Tuple[Tensor, Dict[int, Tensor]]:
    """Spec steps 1-7 over ``blocks``: blocks that are not a stage run as they are
    (``run_block``), a stage block runs ``block_entropy`` and prunes after it. Returns the
    full token map after the last of ``blocks`` and ``{i: full token map after block i}``
    for each ``i`` in ``take`` (the module docstring's rule: the reconstruction of the
    stages up to ``i``). Call inside ``torch.no_grad()`` and ``trusted_inputs()``."""
    edge = edge_for(st, image, patch_size, x, num_prefix)
    records: List[StageRecord] = []
    inter: Dict[int, Tensor] = {}
    last = len(blocks) - 1
    for i, blk in enumerate(blocks):
        if i in st.stages:
            x, ent = block_entropy(blk, x, st.qs)
            x, edge = prune_step(st, i, x, ent, edge, num_prefix, records)
        else:
            x = run_block(blk, x)
        if i in take and i != last:
            inter[i] = reconstruct(x, records, st.reconstruct, st.clusters)
    full = finish(st, x, records)
    if last in take:
        inter[last] = full
    return full, inter


def single_patch_size(p) -> Optional[int]:
    """An int patch size from an int or an (h, w) pair; None when h != w."""
    if isinstance(p, int):
        return p
    p = tuple(int(t) for t in p)
    return p[0] if len(set(p)) == 1 else None


def pair(p) -> Tuple[int, int]:
    if isinstance(p, int):
        return (p, p)
    p = tuple(int(t) for t in p)
    return (p[0], p[0]) if len(p) == 1 else (p[0], p[1])


def linear_flops(m: Optional[nn.Module]) -> float:
    """FLOPs of one token through ``m`` when it is an nn.Linear (else 0)."""
    return 2.0 * m.in_features * m.out_features if isinstance(m, nn.Linear) else 0.0


def rebuild_patched(original_cls: type) -> nn.Module:
    """Unpickling helper: an empty instance of the patched class of ``original_cls``
    (made on demand, so a fresh process that never patched anything can load it);
    pickle then restores its ``__dict__`` (weights and the LVTP state)."""
    from . import find_adapter_for_class

    family = find_adapter_for_class(original_cls)
    if family is None:
        raise TypeError(f"cannot unpickle an LVTP-patched {original_cls.__qualname__}: no adapter supports it")
    patched = family.patched_class(original_cls)
    return patched.__new__(patched)


class AdapterMixin(_LVTPMixin):
    """What every adapter's patched class shares: pickling (``torch.save`` of the whole
    model, ``copy.deepcopy``) by the original class, so the patched class is rebuilt on
    load, wherever it is loaded."""

    def __reduce_ex__(self, protocol):
        return (rebuild_patched, (type(self)._lvtp_original_class,), self._lvtp_pickle_state())

    def _lvtp_pickle_state(self) -> dict:
        """The state pickle stores (``nn.Module.__getstate__``); adapters may drop what
        cannot be pickled and is rebuilt on demand."""
        return self.__getstate__()


def make_patched_class(cls: type, mixin: type, module_name: str, registry: Dict[type, type]) -> type:
    """``LVTP_<module>_<class>``: ``mixin`` over ``cls``, made once per class and published
    in ``module_name`` (its name in tracebacks and reprs; pickling goes through
    :func:`rebuild_patched`)."""
    if cls not in registry:
        name = f"LVTP_{cls.__module__.replace('.', '_')}_{cls.__qualname__.replace('.', '_')}"
        patched = type(name, (mixin, cls), {"_lvtp_original_class": cls, "__module__": module_name})
        patched.__qualname__ = name
        setattr(sys.modules[module_name], name, patched)
        registry[cls] = patched
    return registry[cls]


__all__ = [
    "AdapterMixin", "_LVTPMixin", "attention_entropy", "edge_for", "pruned_blocks_with_intermediates",
    "make_patched_class", "rebuild_patched",
]
