"""What the timm and Hugging Face adapters share beyond the patch engine
(lvtp_kernels/models/engine.py: the pruned block loop, its intermediate-layer rule and
make_patched_class): pickling of patched models and small shape helpers."""

from __future__ import annotations

import importlib
from typing import Optional, Tuple

from torch import nn

from ..models.engine import _LVTPMixin, attention_entropy, make_patched_class, pruned_blocks  # noqa: F401


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


def rebuild_patched(original_cls: type, family=None) -> nn.Module:
    """Unpickling helper: an empty instance of ``family``'s patched class of
    ``original_cls`` (made on demand, so a fresh process that never patched anything can
    load it); pickle then restores its ``__dict__`` (weights and the LVTP state). Pickles of
    0.1 name no family: it is then looked up by class."""
    if family is None:  # an 0.1 pickle
        family = importlib.import_module("lvtp_kernels.adapters").find_adapter_for_class(original_cls)
        if family is None:
            raise TypeError(f"cannot unpickle an LVTP-patched {original_cls.__qualname__}: no adapter supports it")
    patched = family.patched_class(original_cls)
    return patched.__new__(patched)


class AdapterMixin(_LVTPMixin):
    """What every adapter's patched class shares: pickling (``torch.save`` of the whole
    model, ``copy.deepcopy``) by the original class and the adapter (``_lvtp_family``, set
    by each adapter), so the patched class is rebuilt on load, wherever it is loaded."""

    _lvtp_family: type

    def __reduce_ex__(self, protocol):
        return (rebuild_patched, (type(self)._lvtp_original_class, type(self)._lvtp_family),
                self._lvtp_pickle_state())

    def _lvtp_pickle_state(self) -> dict:
        """The state pickle stores (``nn.Module.__getstate__``); adapters may drop what
        cannot be pickled and is rebuilt on demand."""
        return self.__getstate__()


__all__ = ["AdapterMixin", "attention_entropy", "make_patched_class", "pruned_blocks", "rebuild_patched"]
