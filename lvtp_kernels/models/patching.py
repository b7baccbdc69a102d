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

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from python_ref.flops import schedule_for_flops
from python_ref.pipeline import RECONSTRUCT_MODES, StageRecord

from .. import _validate as V
from .vit import ViTSegmenter

SUPPORTED = (ViTSegmenter,)


@dataclass
class LVTPState:
    """Everything a patched model's forward needs, shared by all its stages."""

    schedule: List[Tuple[int, float]]
    qs: Tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    alpha: float = 0.5
    entropy_mode: str = "low"
    clusters: int = 8
    iters: int = 10
    use_edge: bool = True
    reconstruct: str = "residual"
    keep_records: bool = False  # keep the last forward's stage records (for demos / viz)
    last_records: List[StageRecord] = field(default_factory=list)

    @property
    def stages(self) -> Dict[int, float]:
        return {layer: r for layer, r in self.schedule if r < 1.0}


def reconstruct(x_final: Tensor, records: Sequence[StageRecord], mode: str, clusters: int) -> Tensor:
    """Spec step 7, vectorised over the batch (python_ref.pipeline.reconstruct is the reference).

    Per stage, from the last to the first: the kept tokens' residuals
    ``x_j(final) - x_j(s)`` are averaged per cluster (``clusters`` bounds the cluster ids)
    and added to the pruned tokens of the same cluster; an empty cluster adds nothing.
    """
    if mode not in RECONSTRUCT_MODES:
        raise ValueError(f"reconstruct: mode must be one of {RECONSTRUCT_MODES}, got {mode!r}")
    full = x_final
    for rec in reversed(records):
        x_s = rec.x_at_stage.to(full.dtype)
        pruned = torch.ops.lvtp.gather_tokens(x_s, rec.prune_idx)
        if mode == "residual":
            b, _, c = full.shape
            delta = full - torch.ops.lvtp.gather_tokens(x_s, rec.keep_idx)
            cid_kept = rec.cluster_id.gather(1, rec.keep_idx).long()
            slot = torch.where(cid_kept >= 0, cid_kept, clusters)  # protected tokens: a spare slot
            sums = full.new_zeros(b, clusters + 1, c).scatter_add_(1, slot[..., None].expand(-1, -1, c), delta)
            counts = full.new_zeros(b, clusters + 1).scatter_add_(1, slot, torch.ones_like(delta[..., 0]))
            mean = sums / counts.clamp_min(1.0)[..., None]
            cid_pruned = rec.cluster_id.gather(1, rec.prune_idx).long()
            pruned = pruned + mean.gather(1, cid_pruned[..., None].expand(-1, -1, c))
        rebuilt = torch.ops.lvtp.scatter_tokens(torch.zeros_like(x_s), full, rec.keep_idx)
        full = torch.ops.lvtp.scatter_tokens(rebuilt, pruned, rec.prune_idx)
    return full


class _LVTPMixin:
    """Overrides ``forward_blocks`` of a supported model with the progressive pruning."""

    _lvtp: LVTPState

    def forward_blocks(self, x: Tensor, image: Tensor) -> Tensor:
        st = self._lvtp
        stages = st.stages
        if not stages:
            return super().forward_blocks(x, image)
        with torch.no_grad():  # inference only: the lvtp ops take no gradients
            return self._pruned_blocks(x, image, st, stages)

    def _pruned_blocks(self, x: Tensor, image: Tensor, st: LVTPState, stages: Dict[int, float]) -> Tensor:
        p = self.num_prefix_tokens
        edge: Optional[Tensor] = None
        if st.use_edge:
            e = torch.ops.lvtp.patch_edge_energy(image, self.cfg.patch_size)
            edge = torch.cat([e.new_zeros(e.shape[0], p), e], dim=1)
        records: List[StageRecord] = []
        for i, blk in enumerate(self.blocks):
            if i not in stages:
                x = blk(x)
                continue
            x, attn = blk(x, return_attn=True)
            kept, keep_idx, prune_idx, cluster_id = torch.ops.lvtp.prune(
                x, attn, edge, stages[i], p, list(st.qs), st.alpha, st.entropy_mode, st.clusters, st.iters
            )
            records.append(StageRecord(i, x, keep_idx, prune_idx, cluster_id))
            x = kept
            if edge is not None:
                edge = torch.ops.lvtp.gather_tokens(edge[..., None], keep_idx)[..., 0]
        if st.keep_records:
            st.last_records = records
        return reconstruct(x, records, st.reconstruct, st.clusters)


_PATCHED_CLASSES: Dict[type, type] = {}


def _patched_class(cls: type) -> type:
    if cls not in _PATCHED_CLASSES:
        _PATCHED_CLASSES[cls] = type(f"LVTP{cls.__name__}", (_LVTPMixin, cls), {"_lvtp_original_class": cls})
    return _PATCHED_CLASSES[cls]


def is_patched(model: nn.Module) -> bool:
    return isinstance(model, _LVTPMixin)


def _check_schedule(schedule, depth: int) -> List[Tuple[int, float]]:
    out, seen = [], set()
    for item in schedule:
        try:
            layer, ratio = item
        except (TypeError, ValueError):
            raise ValueError(f"patch: schedule entries must be (layer, keep_ratio) pairs, got {item!r}") from None
        layer, ratio = int(layer), float(ratio)
        if not 0 <= layer < depth:
            raise ValueError(f"patch: schedule layer must be in [0, {depth - 1}], got {layer}")
        if layer in seen:
            raise ValueError(f"patch: schedule names layer {layer} twice")
        V.keep_ratio("patch", ratio)
        seen.add(layer)
        out.append((layer, ratio))
    return sorted(out)


def patch(
    model: nn.Module,
    flops_reduction: Optional[float] = None,
    schedule: Optional[Sequence[Tuple[int, float]]] = None,
    *,
    qs: Sequence[float] = (0.5, 1.0, 2.0, 3.0),
    alpha: float = 0.5,
    entropy_mode: str = "low",
    clusters: int = 8,
    iters: int = 10,
    use_edge: bool = True,
    reconstruct: str = "residual",
    layers: Optional[Sequence[int]] = None,
    img_size: Optional[Tuple[int, int]] = None,
) -> nn.Module:
    """Patch ``model`` in place for LVTP and return it.

    Give either ``flops_reduction`` (a schedule is solved with ``schedule_for_flops`` for
    images of ``img_size``, default the model's, with stages after ``layers``, default
    depth * {1/4, 1/2, 3/4}) or an explicit ``schedule`` of (layer, keep_ratio) pairs.
    Patching a patched model replaces its settings.
    """
    if not isinstance(model, SUPPORTED):
        names = ", ".join(c.__module__ + "." + c.__name__ for c in SUPPORTED)
        raise TypeError(f"patch: unsupported model {type(model).__name__}; supported: {names}")
    if (flops_reduction is None) == (schedule is None):
        raise ValueError("patch: give exactly one of flops_reduction= or schedule=")
    V.qs_list("patch", qs)
    if entropy_mode not in V.ENTROPY_MODES:
        raise ValueError(f"patch: entropy_mode must be one of {V.ENTROPY_MODES}, got {entropy_mode!r}")
    if reconstruct not in RECONSTRUCT_MODES:
        raise ValueError(f"patch: reconstruct must be one of {RECONSTRUCT_MODES}, got {reconstruct!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"patch: alpha must be in [0, 1], got {alpha}")
    V.positive_int("patch", "clusters", clusters)
    V.positive_int("patch", "iters", iters)
    if flops_reduction is not None:
        shape = model.vit_shape(
            img_size, num_orders=len(qs), clusters=clusters, iters=iters, use_edge=use_edge, reconstruct=reconstruct
        )
        schedule = schedule_for_flops(shape, float(flops_reduction), layers)
    state = LVTPState(
        schedule=_check_schedule(schedule, len(model.blocks)),
        qs=tuple(float(q) for q in qs),
        alpha=float(alpha),
        entropy_mode=entropy_mode,
        clusters=int(clusters),
        iters=int(iters),
        use_edge=bool(use_edge),
        reconstruct=reconstruct,
    )
    model._lvtp = state
    if not is_patched(model):
        model.__class__ = _patched_class(model.__class__)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the original class back, the LVTP state removed."""
    if is_patched(model):
        model.__class__ = model._lvtp_original_class
        del model._lvtp
    return model
