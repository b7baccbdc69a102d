"""One-call LVTP patch of a ViT segmenter (ToMe style: swap ``__class__``, touch no weight).

    lvtp_kernels.patch(model, flops_reduction=0.3)
    lvtp_kernels.patch(model, schedule=[(3, 0.7), (6, 0.7), (9, 0.7)])
    lvtp_kernels.unpatch(model)

The patched forward prunes after each stage's block with ``torch.ops.lvtp.prune``
(steps 1-5), carries the edge energy along with the tokens, and rebuilds the full token
map before the final norm (step 7), so the dense head runs unchanged. A stage whose
keep_ratio is 1.0 is skipped: with 1.0 everywhere the patched model computes exactly
what the unpatched one does. Patched models are for inference: the pruned part of the
forward runs under ``torch.no_grad()`` (the lvtp ops take no gradients).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from python_ref.flops import schedule_for_flops
from python_ref.pipeline import RECONSTRUCT_MODES, StageRecord, active_stages

from .. import _validate as V
from ..registry import trusted_inputs
from .engine import (  # noqa: F401  (DEFAULTS, SPEC_DEFAULTS, LVTPState, reconstruct: documented here)
    DEFAULTS, SPEC_DEFAULTS, GraphCache, LVTPState, _LVTPMixin, make_patched_class, pruned_blocks, reconstruct, warn_if_grad,
)
from .vit import ViTSegmenter

SUPPORTED = (ViTSegmenter,)

class _OwnViTMixin(_LVTPMixin):
    """Overrides ``forward_blocks`` of the package's ViT with the engine's pruned loop."""

    def forward_blocks(self, x: Tensor, image: Tensor) -> Tensor:
        st = self._lvtp
        if not st.stages:
            return super().forward_blocks(x, image)
        warn_if_grad(x)
        with torch.no_grad(), trusted_inputs():  # the lvtp ops take no gradients
            # a stage block gives attention and its entropies in one op (lvtp.attention_entropy:
            # the N x N map is never materialised by the fused kernels)
            full, _ = pruned_blocks(st, self.blocks, x, image, self.cfg.patch_size, self.num_prefix_tokens,
                                    block_entropy=lambda blk, t, qs: blk.forward_entropy(t, qs),
                                    run_block=lambda blk, t: blk(t))
            return full


_PATCHED_CLASSES: Dict[type, type] = {}


def _patched_class(cls: type) -> type:
    """``LVTPViTSegmenter`` (``LVTP_<module>_<class>`` for a subclass), published here."""
    return make_patched_class(cls, _OwnViTMixin, __name__, _PATCHED_CLASSES,
                              name="LVTPViTSegmenter" if cls is ViTSegmenter else None)


LVTPViTSegmenter = _patched_class(ViTSegmenter)


class _OwnViT:
    """The model family of the package's own ViTSegmenter. Adapters for other families
    (lvtp_kernels.adapters) have the same three methods."""

    name = "lvtp_kernels.models.vit.ViTSegmenter"

    @staticmethod
    def depth(model: nn.Module) -> int:
        return len(model.blocks)

    @staticmethod
    def vit_shape(model: nn.Module, img_size=None, **cost_options):
        return model.vit_shape(img_size, **cost_options)

    @staticmethod
    def patched_class(cls: type) -> type:
        return _patched_class(cls)


def model_family(model: nn.Module):
    """The adapter that patches ``model``: the package's ViT, else one of
    ``lvtp_kernels.adapters``; a TypeError lists what is supported."""
    if isinstance(model, SUPPORTED):
        return _OwnViT
    try:
        from .. import adapters
    except ImportError:  # the adapters are optional until they exist
        adapters = None
    family = adapters.find_adapter(model) if adapters is not None else None
    if family is None:
        names = [_OwnViT.name] + (list(adapters.SUPPORTED_NAMES) if adapters is not None else [])
        subs = adapters.supported_submodules(model) if adapters is not None else []
        hint = ""
        if subs:  # a dense model around a supported backbone (DPT, UperNet, a custom decoder)
            plain = all(part.isidentifier() for part in subs[0].split("."))
            ref = f"model.{subs[0]}" if plain else f"model.get_submodule({subs[0]!r})"
            hint = (
                f"; it holds a supported backbone: patch that submodule instead, "
                f"lvtp_kernels.patch({ref}, ...) (supported submodules: {', '.join(subs)})"
            )
        raise TypeError(f"patch: unsupported model {type(model).__name__}{hint}; supported: {', '.join(names)}")
    return family


def is_patched(model: nn.Module) -> bool:
    return isinstance(model, _LVTPMixin)


def last_records(model: nn.Module) -> List[StageRecord]:
    """The stage records of the last forward of a model patched with ``keep_records=True``:
    per stage its layer, the active features, keep_idx, prune_idx and cluster_id."""
    if not is_patched(model):
        raise ValueError("last_records: the model is not patched")
    if not model._lvtp.keep_records:
        raise ValueError("last_records: patch the model with keep_records=True first")
    return model._lvtp.last_records


def patch(
    model: nn.Module,
    flops_reduction: Optional[float] = None,
    schedule: Optional[Sequence[Tuple[int, float]]] = None,
    *,
    qs: Sequence[float] = DEFAULTS["qs"],
    alpha: float = DEFAULTS["alpha"],
    entropy_mode: str = DEFAULTS["entropy_mode"],
    clusters: int = DEFAULTS["clusters"],
    iters: int = DEFAULTS["iters"],
    use_edge: bool = DEFAULTS["use_edge"],
    reconstruct: str = DEFAULTS["reconstruct"],
    weights: str = DEFAULTS["weights"],
    allocation: str = DEFAULTS["allocation"],
    precision: str = DEFAULTS["precision"],
    spatial: float = DEFAULTS["spatial"],
    cuda_graph: bool = False,
    layers: Optional[Sequence[int]] = None,
    img_size: Optional[Tuple[int, int]] = None,
    keep_records: bool = False,
) -> nn.Module:
    """Patch ``model`` in place for LVTP and return it.

    Give either ``flops_reduction`` (a schedule is solved with ``schedule_for_flops`` for
    images of ``img_size``, default the model's, with stages after ``layers``, default
    depth * {1/4, 1/2, 3/4}) or an explicit ``schedule`` of (layer, keep_ratio) pairs.
    ``keep_records=True`` keeps the last forward's stage records (``last_records``).
    ``precision``: the selection's arithmetic, "fast" (default: float32, no host sync,
    python_ref/fast.py) or "exact" (float64, the ``lvtp.select`` op's contract).
    ``spatial`` (default 0: off): weight of each patch's position beside its unit-norm
    features in the k-means (an ablation of [I], docs/results.md).
    ``cuda_graph=True``: calls on CUDA tensors without gradients replay a CUDA graph of the
    whole forward, captured per input signature on first use (``engine.GraphCache``: the
    outputs are the graph's buffers, overwritten by the next call of that signature).
    Patching a patched model replaces its settings.
    """
    family = model_family(model)
    if (flops_reduction is None) == (schedule is None):
        raise ValueError("patch: give exactly one of flops_reduction= or schedule=")
    if schedule is not None and (layers is not None or img_size is not None):
        raise ValueError("patch: layers= and img_size= shape a solved schedule; they do not apply with schedule=")
    V.qs_list("patch", qs)
    V.alpha_value("patch", alpha)
    V.entropy_mode_value("patch", entropy_mode)
    V.positive_int("patch", "clusters", clusters)
    V.positive_int("patch", "iters", iters)
    if reconstruct not in RECONSTRUCT_MODES:
        raise ValueError(f"patch: reconstruct must be one of {RECONSTRUCT_MODES}, got {reconstruct!r}")
    if weights not in ("dynamic", "equal"):
        raise ValueError(f"patch: weights must be 'dynamic' or 'equal', got {weights!r}")
    if allocation not in ("ranked", "proportional"):
        raise ValueError(f"patch: allocation must be 'ranked' or 'proportional', got {allocation!r}")
    if precision not in ("exact", "fast"):
        raise ValueError(f"patch: precision must be 'exact' or 'fast', got {precision!r}")
    if not isinstance(spatial, (int, float)) or isinstance(spatial, bool) or not (0.0 <= float(spatial) < float("inf")):
        raise ValueError(f"patch: spatial must be a finite number >= 0, got {spatial!r}")
    if flops_reduction is not None:
        shape = family.vit_shape(
            model, img_size, num_orders=len(qs), clusters=clusters, iters=iters, use_edge=use_edge and alpha < 1.0,
            reconstruct=reconstruct,
        )
        schedule = schedule_for_flops(shape, float(flops_reduction), layers)
    try:
        stages = active_stages(schedule, family.depth(model))
    except ValueError as exc:
        raise ValueError(f"patch: {exc}") from None
    model._lvtp = LVTPState(
        schedule=sorted((int(layer), float(r)) for layer, r in schedule),
        stages=stages,
        qs=tuple(float(q) for q in qs),
        alpha=float(alpha),
        entropy_mode=entropy_mode,
        clusters=int(clusters),
        iters=int(iters),
        use_edge=bool(use_edge),
        reconstruct=reconstruct,
        weights=weights,
        allocation=allocation,
        precision=precision,
        spatial=float(spatial),
        graphs=GraphCache() if cuda_graph else None,
        keep_records=bool(keep_records),
    )
    if not is_patched(model):
        model.__class__ = family.patched_class(model.__class__)
    return model


def cost_shape(model: nn.Module, img_size: Optional[Tuple[int, int]] = None):
    """The cost model (``ViTShape``) of a patched model with its LVTP options, for
    ``lvtp_kernels.flops.vit_flops(cost_shape(model), model._lvtp.schedule)``."""
    family = model_family(model)
    if not is_patched(model):
        return family.vit_shape(model, img_size)
    st = model._lvtp
    return family.vit_shape(
        model, img_size, num_orders=len(st.qs), clusters=st.clusters, iters=st.iters, use_edge=st.use_edge and st.alpha < 1.0,
        reconstruct=st.reconstruct,
    )


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the original class back, the LVTP state removed."""
    if is_patched(model):
        model.__class__ = model._lvtp_original_class
        del model._lvtp
    return model
