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

import sys
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from python_ref.flops import schedule_for_flops
from python_ref.ops import DEFAULT_QS
from python_ref.pipeline import RECONSTRUCT_MODES, StageRecord, active_stages

from .. import _validate as V
from ..registry import trusted_inputs
from .vit import ViTSegmenter

SUPPORTED = (ViTSegmenter,)

# The spec's defaults for every option of the method (spec steps 1-7).
SPEC_DEFAULTS: Dict[str, object] = dict(
    qs=DEFAULT_QS, alpha=0.5, entropy_mode="low", clusters=8, iters=10, use_edge=True, reconstruct="residual",
    weights="dynamic", allocation="ranked",
)
# The package's defaults: the spec's, except where the CamVid val ablation
# (docs/results.md) measured a better choice; every spec choice stays selectable.
DEFAULTS: Dict[str, object] = dict(
    SPEC_DEFAULTS, alpha=0.3, entropy_mode="high", allocation="proportional", reconstruct="nearest", iters=3
)


@dataclass
class LVTPState:
    """Everything a patched model's forward needs, shared by all its stages."""

    schedule: List[Tuple[int, float]]  # as given, sorted by layer
    stages: Dict[int, float]  # the stages that prune (keep_ratio < 1.0)
    qs: Tuple[float, ...] = DEFAULT_QS
    alpha: float = 0.5
    entropy_mode: str = "low"
    clusters: int = 8
    iters: int = 10
    use_edge: bool = True
    reconstruct: str = "residual"
    weights: str = "dynamic"  # "dynamic" (spec step 2) or "equal" (mean of the orders, an ablation)
    allocation: str = "ranked"  # "ranked" (spec step 5.3) or "proportional" (per-cluster budget shares)
    keep_records: bool = False  # keep the last forward's stage records (see last_records)
    last_records: List[StageRecord] = field(default_factory=list)


def reconstruct(x_final: Tensor, records: Sequence[StageRecord], mode: str, clusters: int) -> Tensor:
    """Spec step 7: one ``torch.ops.lvtp.reconstruct_stage`` per stage, from the last to
    the first (python_ref.pipeline.reconstruct is the loop reference).

    Per stage the kept tokens' residuals ``x_j(final) - x_j(s)`` are averaged per cluster
    in fp32 or wider (``clusters`` bounds the cluster ids) and added to the pruned tokens
    of the same cluster; a cluster without a kept token adds nothing (frozen).
    """
    if mode not in RECONSTRUCT_MODES:
        raise ValueError(f"reconstruct: mode must be one of {RECONSTRUCT_MODES}, got {mode!r}")
    full = x_final
    for rec in reversed(records):
        full = torch.ops.lvtp.reconstruct_stage(
            full, rec.x_at_stage.to(full.dtype), rec.keep_idx, rec.prune_idx, rec.cluster_id, clusters, mode
        )
    return full


# ---------------------------------------------------------------------- the engine
# What every patched model family shares (the package's ViT here, timm and Hugging Face
# models in lvtp_kernels.adapters): the edge term, one pruning step per stage, and the
# reconstruction at the end. All of it runs inside registry.trusted_inputs(): the tensors
# come from the model's own blocks and from lvtp ops, so the ops' data checks (a device
# sync each on a GPU) are skipped.


def stage_edge(st: LVTPState, image: Optional[Tensor], patch_size: int, num_prefix: int) -> Optional[Tensor]:
    """The per-token edge energy (B, P + patches) of the input, or None when the edge term
    has no weight (``use_edge=False`` or ``alpha == 1``) or there is no image."""
    if image is None or not st.use_edge or st.alpha >= 1.0:
        return None
    e = torch.ops.lvtp.patch_edge_energy(image, patch_size)
    return torch.cat([e.new_zeros(e.shape[0], num_prefix), e], dim=1) if num_prefix else e


def prune_step(
    st: LVTPState, layer: int, x: Tensor, ent: Tensor, edge: Optional[Tensor], num_prefix: int,
    records: List[StageRecord],
) -> Tuple[Tensor, Optional[Tensor]]:
    """Spec steps 2-6 at stage ``layer``: select on (x, ent, edge), keep the kept tokens,
    record the stage for the reconstruction. Returns the kept tokens and their edge."""
    if st.weights == "equal":  # one averaged order, whose dynamic weight is 1 (an ablation)
        ent = ent.mean(dim=-1, keepdim=True)
    r = st.stages[layer]
    if st.allocation == "ranked":
        keep_idx, prune_idx, cluster_id = torch.ops.lvtp.select(
            x, ent, edge, r, num_prefix, st.alpha, st.entropy_mode, st.clusters, st.iters
        )
    else:
        keep_idx, prune_idx, cluster_id = torch.ops.lvtp.select_tokens(
            x, ent, edge, r, num_prefix, st.alpha, st.entropy_mode, st.clusters, st.iters, st.allocation
        )
    kept = torch.ops.lvtp.gather_tokens(x, keep_idx)
    records.append(StageRecord(layer, x, keep_idx, prune_idx, cluster_id))
    if edge is not None:
        edge = torch.ops.lvtp.gather_tokens(edge[..., None], keep_idx)[..., 0]
    return kept, edge


def finish(st: LVTPState, x: Tensor, records: List[StageRecord]) -> Tensor:
    """Spec step 7: the full token map back from the last stage's tokens."""
    if st.keep_records:
        st.last_records = records
    return reconstruct(x, records, st.reconstruct, st.clusters)


def warn_if_grad(x: Tensor) -> None:
    if torch.is_grad_enabled() and x.requires_grad:
        warnings.warn(
            "an LVTP-patched model runs its pruned blocks without gradients (inference only); "
            "call it under torch.no_grad() or torch.inference_mode()",
            stacklevel=4,
        )


class _LVTPMixin:
    """Overrides ``forward_blocks`` of a supported model with the progressive pruning."""

    _lvtp: LVTPState

    def forward_blocks(self, x: Tensor, image: Tensor) -> Tensor:
        st = self._lvtp
        if not st.stages:
            return super().forward_blocks(x, image)
        warn_if_grad(x)
        with torch.no_grad(), trusted_inputs():  # the lvtp ops take no gradients
            return self._pruned_blocks(x, image, st)

    def _pruned_blocks(self, x: Tensor, image: Tensor, st: LVTPState) -> Tensor:
        p = self.num_prefix_tokens
        edge = stage_edge(st, image, self.cfg.patch_size, p)
        records: List[StageRecord] = []
        for i, blk in enumerate(self.blocks):
            if i not in st.stages:
                x = blk(x)
                continue
            # attention and its entropies in one op: the N x N map is never materialised
            # by the fused kernels (spec step 1 from lvtp.attention_entropy)
            x, ent = blk.forward_entropy(x, st.qs)
            x, edge = prune_step(st, i, x, ent, edge, p, records)
        return finish(st, x, records)


_PATCHED_CLASSES: Dict[type, type] = {}


def _patched_class(cls: type) -> type:
    """``LVTP<cls>``, made once per class and published in this module so that pickle
    (``torch.save`` of a whole patched model) finds it by name."""
    if cls not in _PATCHED_CLASSES:
        name = f"LVTP{cls.__name__}"
        if cls is not ViTSegmenter:
            name = f"LVTP_{cls.__module__.replace('.', '_')}_{cls.__qualname__.replace('.', '_')}"
        patched = type(name, (_LVTPMixin, cls), {"_lvtp_original_class": cls, "__module__": __name__})
        patched.__qualname__ = name
        setattr(sys.modules[__name__], name, patched)
        _PATCHED_CLASSES[cls] = patched
    return _PATCHED_CLASSES[cls]


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
    layers: Optional[Sequence[int]] = None,
    img_size: Optional[Tuple[int, int]] = None,
    keep_records: bool = False,
) -> nn.Module:
    """Patch ``model`` in place for LVTP and return it.

    Give either ``flops_reduction`` (a schedule is solved with ``schedule_for_flops`` for
    images of ``img_size``, default the model's, with stages after ``layers``, default
    depth * {1/4, 1/2, 3/4}) or an explicit ``schedule`` of (layer, keep_ratio) pairs.
    ``keep_records=True`` keeps the last forward's stage records (``last_records``).
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
