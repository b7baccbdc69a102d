"""Reference of the progressive pipeline: stages, frozen tokens and reconstruction (spec steps 6, 7).

``progressive_forward`` runs a list of transformer blocks with pruning stages and
returns the rebuilt full token map; ``reconstruct`` is step 7 on its own. Both work on
any blocks: a block is a callable ``x -> x`` and ``block_with_attn(block, x)`` returns
``(x, attn)`` with the block's softmax attention probabilities (B, H, N, N).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import ops

RECONSTRUCT_MODES = ("residual", "frozen", "nearest")


def active_stages(schedule: Sequence[Tuple[int, float]], depth: int) -> Dict[int, float]:
    """Check a schedule of (layer, keep_ratio) pairs for a model of ``depth`` blocks and
    return ``{layer: keep_ratio}`` of the stages that prune (keep_ratio < 1.0 is a stage;
    1.0 is skipped). Raises ValueError for a malformed pair, a layer outside
    [0, depth - 1] or named twice, or a keep_ratio outside (0, 1]."""
    stages: Dict[int, float] = {}
    seen = set()
    for item in schedule:
        try:
            layer, ratio = item
            layer, ratio = int(layer), float(ratio)
        except (TypeError, ValueError):
            raise ValueError(f"schedule entries must be (layer, keep_ratio) pairs, got {item!r}") from None
        if not 0 <= layer < depth:
            raise ValueError(f"schedule layer must be in [0, {depth - 1}], got {layer}")
        if layer in seen:
            raise ValueError(f"schedule names layer {layer} twice")
        if math.isnan(ratio) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"schedule keep_ratio must be in (0, 1], got {ratio} at layer {layer}")
        seen.add(layer)
        if ratio < 1.0:
            stages[layer] = ratio
    return dict(sorted(stages.items()))


@dataclass
class StageRecord:
    """What a pruning stage stores (step 6). Indices refer to the stage's input token set."""

    layer: int
    x_at_stage: Tensor  # (B, N_in, C): every active token right after block ``layer``
    keep_idx: Tensor  # (B, P+K) int64, ascending
    prune_idx: Tensor  # (B, N_in-P-K) int64, ascending
    cluster_id: Tensor  # (B, N_in) int32, -1 for protected tokens


def reconstruct(x_final: Tensor, records: Sequence[StageRecord], mode: str = "residual") -> Tensor:
    """Step 7: rebuild every original position from the final active tokens.

    Stages are rebuilt from the last to the first, so a token kept at stage s but pruned
    later enters stage s's residual with its own reconstruction as its "final" features.
    A pruned token in a cluster with no kept token falls back to "frozen".
    """
    if mode not in RECONSTRUCT_MODES:
        raise ValueError(f"reconstruct: mode must be one of {RECONSTRUCT_MODES}, got {mode!r}")
    full = x_final
    for rec in reversed(records):
        b, n_in, c = rec.x_at_stage.shape
        rebuilt = torch.empty(b, n_in, c, dtype=full.dtype, device=full.device)
        for i in range(b):
            kept, pruned = rec.keep_idx[i], rec.prune_idx[i]
            frozen = rec.x_at_stage[i, pruned].to(full.dtype)
            if mode == "nearest":
                frozen = frozen + nearest_residual(
                    full[i : i + 1], rec.x_at_stage[i : i + 1], kept[None], pruned[None], rec.cluster_id[i : i + 1]
                )[0]
            if mode == "residual":
                delta = full[i] - rec.x_at_stage[i, kept].to(full.dtype)  # x_j(final) - x_j(s)
                cid_kept = rec.cluster_id[i, kept]
                cid_pruned = rec.cluster_id[i, pruned]
                for cl in torch.unique(cid_pruned).tolist():
                    in_kept = cid_kept == cl
                    if bool(in_kept.any()):
                        frozen[cid_pruned == cl] += delta[in_kept].mean(dim=0)
            rebuilt[i, kept] = full[i]
            rebuilt[i, pruned] = frozen
        full = rebuilt
    return full


def nearest_keys(x_stage: Tensor, keep_idx: Tensor, prune_idx: Tensor, cluster_id: Tensor) -> Tensor:
    """For each pruned token, the position in ``keep_idx`` of the most similar kept
    non-protected token at the stage (cosine similarity of the stage features, computed in
    float32 or wider; ties to the earlier position), (B, N-K) int64."""
    acc = torch.promote_types(x_stage.dtype, torch.float32)
    c = x_stage.shape[-1]
    xs = x_stage.to(acc)
    xs = xs / xs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kept = torch.gather(xs, 1, keep_idx.long()[..., None].expand(-1, -1, c))
    pruned = torch.gather(xs, 1, prune_idx.long()[..., None].expand(-1, -1, c))
    sim = pruned @ kept.transpose(1, 2)  # (B, N-K, K)
    protected = cluster_id.gather(1, keep_idx.long()) < 0  # never a source
    sim = sim.masked_fill(protected[:, None, :], float("-inf"))
    return sim.argmax(dim=-1)


def nearest_residual(full: Tensor, x_stage: Tensor, keep_idx: Tensor, prune_idx: Tensor, cluster_id: Tensor) -> Tensor:
    """``"nearest"`` reconstruction: each pruned token receives the residual
    ``x_j(final) - x_j(s)`` of its most similar kept token j (:func:`nearest_keys`)."""
    c = full.shape[-1]
    j = nearest_keys(x_stage, keep_idx, prune_idx, cluster_id)[..., None].expand(-1, -1, c)
    kept_at_stage = torch.gather(x_stage.to(full.dtype), 1, keep_idx.long()[..., None].expand(-1, -1, c))
    return torch.gather(full, 1, j) - torch.gather(kept_at_stage, 1, j)


def reconstruct_stage(
    full: Tensor, x_stage: Tensor, keep_idx: Tensor, prune_idx: Tensor, cluster_id: Tensor, clusters: int, mode: str
) -> Tensor:
    """Step 7 for one stage, vectorised: rebuild the stage's (B, N_s, C) token map.

    ``full`` (B, K, C) are the final features of the tokens kept at the stage (in
    ``keep_idx`` order), ``x_stage`` (B, N_s, C) the features when the stage pruned.
    Kept positions get ``full``; a pruned token of cluster c gets its stage features plus
    (``"residual"``) the mean over kept tokens of cluster c of ``full - x_stage``, summed in
    float32 (float64 for float64 inputs); a cluster with no kept token adds nothing.
    ``"nearest"`` adds the residual of the single most similar kept token instead
    (:func:`nearest_residual`); ``"frozen"`` adds nothing.
    ``cluster_id`` is (B, N_s) with ids in [-1, clusters) (-1: protected, never averaged).
    Returns a new contiguous tensor of ``full``'s dtype.
    """
    if mode not in RECONSTRUCT_MODES:
        raise ValueError(f"reconstruct_stage: mode must be one of {RECONSTRUCT_MODES}, got {mode!r}")
    b, n_s, c = x_stage.shape
    xs = x_stage.to(full.dtype)
    pruned = torch.gather(xs, 1, prune_idx.long()[..., None].expand(-1, -1, c))
    if mode == "nearest":
        pruned = pruned + nearest_residual(full, xs, keep_idx, prune_idx, cluster_id)
    if mode == "residual":
        acc = torch.promote_types(full.dtype, torch.float32)
        kept_at_stage = torch.gather(xs, 1, keep_idx.long()[..., None].expand(-1, -1, c))
        delta = (full - kept_at_stage).to(acc)
        cid = cluster_id.long()
        cid_kept = cid.gather(1, keep_idx.long())
        slot = torch.where(cid_kept >= 0, cid_kept, clusters)  # protected tokens: a spare slot
        sums = delta.new_zeros(b, clusters + 1, c).scatter_add_(1, slot[..., None].expand(-1, -1, c), delta)
        counts = delta.new_zeros(b, clusters + 1).scatter_add_(1, slot, torch.ones_like(delta[..., 0]))
        mean = sums / counts.clamp_min(1.0)[..., None]
        cid_pruned = cid.gather(1, prune_idx.long())
        slot_p = torch.where(cid_pruned >= 0, cid_pruned, clusters)
        pruned = (pruned.to(acc) + mean.gather(1, slot_p[..., None].expand(-1, -1, c))).to(full.dtype)
    out = torch.empty((b, n_s, c), dtype=full.dtype, device=full.device)
    out.scatter_(1, keep_idx.long()[..., None].expand(-1, -1, c), full)
    out.scatter_(1, prune_idx.long()[..., None].expand(-1, -1, c), pruned)
    return out


def progressive_forward(
    x: Tensor,
    blocks: Sequence[Callable[[Tensor], Tensor]],
    schedule: Sequence[Tuple[int, float]],
    block_with_attn: Callable[[Callable, Tensor], Tuple[Tensor, Tensor]],
    edge: Optional[Tensor] = None,
    num_protected: int = 1,
    reconstruct_mode: str = "residual",
    **prune_kwargs,
) -> Tuple[Tensor, List[StageRecord]]:
    """Steps 6 and 7: run ``blocks`` on x (B, N0, C) with pruning after each stage's layer.

    ``edge`` is (B, N0) (values at protected positions unused) and is carried along with
    the tokens. A stage whose keep_ratio is 1.0 is skipped. Returns the rebuilt
    (B, N0, C) map (before the final norm) and the stage records.
    """
    stages = active_stages(schedule, len(blocks))
    records: List[StageRecord] = []
    for i, blk in enumerate(blocks):
        if i not in stages:
            x = blk(x)
            continue
        x, attn = block_with_attn(blk, x)
        kept, keep_idx, prune_idx, cluster_id = ops.prune(
            x, attn, edge, keep_ratio=stages[i], num_protected=num_protected, **prune_kwargs
        )
        records.append(StageRecord(i, x, keep_idx, prune_idx, cluster_id))
        x = kept
        if edge is not None:
            edge = ops.gather_tokens(edge[..., None], keep_idx)[..., 0]
    return reconstruct(x, records, reconstruct_mode), records
