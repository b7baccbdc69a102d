"""Baselines and ablations that share LVTP's model, stage layers and reconstruction.

A *method* turns a :class:`~lvtp_kernels.models.vit.ViTSegmenter` and a schedule into
logits. Every token-reducing method here prunes (or merges) at the same stage layers to
the same token counts as LVTP, so the blocks cost the same; what differs is which tokens
survive and how the dense map is rebuilt:

* ``lvtp``: the package's patch (``lvtp_kernels.patch``), spec steps 1-7.
* ``evit``: EViT-style (Liang et al., ICLR 2022) keep the top-K tokens by the class
  token's head-mean attention; the pruned ones are rebuilt by the same residual
  reconstruction, with clusters from the same semantic k-means as LVTP's step 5.1
  (initialised at evenly spaced ranks of the EViT score).
* ``random``: K tokens uniformly at random (seeded per image batch), same reconstruction.
* ``tome``: ToMe (Bolya et al., ICLR 2023): bipartite soft matching on the attention
  keys (head mean, cosine), size-weighted merge, proportional attention
  (``log size`` added to the logits) after merging, and unmerge (each merged token
  copies its destination's final features) for the dense map, as ToMe for dense
  prediction does. It merges at the stage layers to the same counts;
  ``tome-every-layer`` merges a little after every block instead (the paper's
  setting), at the same analytic GFLOPs.
* LVTP ablations are patch options (see :data:`METHODS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from python_ref.ops import budget
from python_ref.pipeline import StageRecord, active_stages

from ..models.patching import DEFAULTS, SPEC_DEFAULTS, patch, reconstruct, unpatch
from ..models.vit import ViTSegmenter


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "lvtp" (patch options), "evit", "random", "tome"
    options: Dict[str, object] = field(default_factory=dict)
    help: str = ""
    every_layer: bool = False  # reduce after every block (ToMe's own setting) instead of LVTP's stage layers

    def stage_layers(self, depth: int) -> Optional[List[int]]:
        """The layers this method reduces after (None: LVTP's default stage layers)."""
        return list(range(depth - 1)) if self.every_layer else None


METHODS: Dict[str, Method] = {
    m.name: m
    for m in [
        Method("lvtp", "lvtp", {}, "LVTP with the package defaults (patching.DEFAULTS)"),
        Method("evit", "evit", {}, "EViT-style: top-K by class-token attention"),
        Method("tome", "tome", {}, "ToMe: bipartite soft matching, size-weighted merge, unmerge"),
        Method("tome-every-layer", "tome", {}, "ToMe merging after every block (its paper's setting), same GFLOPs",
               every_layer=True),
        Method("random", "random", {}, "random K tokens"),
        # the spec's method exactly as written (patching.SPEC_DEFAULTS)
        Method("lvtp-spec", "lvtp", dict(SPEC_DEFAULTS), "LVTP with the spec's defaults"),
        # one change to the package defaults each
        Method("lvtp-no-edge", "lvtp", {"use_edge": False}, "ablation: no edge term (u = h)"),
        Method("lvtp-shannon", "lvtp", {"qs": (1.0,)}, "ablation: Shannon entropy only (qs=[1])"),
        Method("lvtp-equal-weights", "lvtp", {"weights": "equal"}, "ablation: fixed equal scale weights"),
        Method("lvtp-no-cluster", "lvtp", {"clusters": 1}, "ablation: no clustering (top-K by u)"),
        Method("lvtp-residual", "lvtp", {"reconstruct": "residual"}, "ablation: per-cluster mean residual (spec)"),
        Method("lvtp-nearest", "lvtp", {"reconstruct": "nearest"}, "ablation: nearest-token residual"),
        Method("lvtp-frozen", "lvtp", {"reconstruct": "frozen"}, "ablation: frozen reconstruction"),
        Method("lvtp-ranked", "lvtp", {"allocation": "ranked"}, "ablation: one global ranking (spec step 5.3)"),
        Method("lvtp-proportional", "lvtp", {"allocation": "proportional"}, "ablation: per-cluster budget shares"),
        Method("lvtp-low", "lvtp", {"entropy_mode": "low"}, "ablation: entropy_mode low"),
        Method("lvtp-high", "lvtp", {"entropy_mode": "high"}, "ablation: entropy_mode high"),
        Method("lvtp-edge-only", "lvtp", {"alpha": 0.0}, "ablation: edge term only (alpha=0)"),
        Method("lvtp-entropy-only", "lvtp", {"alpha": 1.0}, "ablation: entropy term only (alpha=1)"),
        Method("lvtp-iters10", "lvtp", {"iters": 10}, "ablation: the spec's 10 k-means iterations"),
        Method("lvtp-iters1", "lvtp", {"iters": 1}, "ablation: one k-means iteration"),
        Method("lvtp-exact", "lvtp", {"precision": "exact"}, "ablation: the float64 exact selection"),
    ]
}


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise ValueError(v)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in allowed:
            raise ValueError(v)
        return v

    return parse


# Options of ``lvtp:key=value,...`` method specs and their parsers (lists use '/').
LVTP_OPTIONS: Dict[str, Callable[[str], object]] = {
    "alpha": float,
    "qs": lambda v: tuple(float(q) for q in v.split("/")),
    "entropy_mode": _choice("low", "high"),
    "clusters": int,
    "iters": int,
    "use_edge": _bool,
    "reconstruct": _choice("residual", "frozen", "nearest"),
    "weights": _choice("dynamic", "equal"),
    "allocation": _choice("ranked", "proportional"),
    "precision": _choice("exact", "fast"),
    "spatial": float,
}


def parse_method(spec: str) -> Method:
    """A name of :data:`METHODS`, or ``lvtp:key=value,key=value`` for any patch options
    (e.g. ``lvtp:alpha=0.3,entropy_mode=high``)."""
    if spec in METHODS:
        return METHODS[spec]
    if spec.startswith("lvtp:"):
        opts: Dict[str, object] = {}
        for item in spec[5:].split(","):
            if "=" not in item:
                raise ValueError(f"method {spec!r}: expected key=value, got {item!r}")
            k, v = (t.strip() for t in item.split("=", 1))
            if k not in LVTP_OPTIONS:
                raise ValueError(f"method {spec!r}: unknown option {k!r}; known: {', '.join(LVTP_OPTIONS)}")
            try:
                opts[k] = LVTP_OPTIONS[k](v)
            except ValueError:
                raise ValueError(f"method {spec!r}: bad value {v!r} for option {k!r}") from None
        return Method(spec, "lvtp", opts, "custom LVTP options")
    raise ValueError(f"unknown method {spec!r}; known: {', '.join(METHODS)} or lvtp:key=value,...")


# --------------------------------------------------------------------------- shared pieces
def semantic_clusters(x: Tensor, score: Tensor, p: int, clusters: int, iters: int) -> Tensor:
    """LVTP's step 5.1 clustering for any score: k-means on the L2-normalised
    non-protected features, initialised at evenly spaced ranks of ``score`` (descending,
    ties by lower index); (B, N) int32, -1 for protected tokens."""
    b, n, _ = x.shape
    m = n - p
    k = min(clusters, m)
    feats = x[:, p:].float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    order = torch.sort(-score[:, p:].double(), dim=1, stable=True).indices
    ranks = torch.tensor([(r * m) // k for r in range(k)], device=x.device)
    init = torch.gather(feats, 1, order[:, ranks][..., None].expand(-1, -1, feats.shape[-1]))
    _, assign = torch.ops.lvtp.kmeans(feats, init.contiguous(), iters)
    cid = torch.full((b, n), -1, dtype=torch.int32, device=x.device)
    cid[:, p:] = assign.to(torch.int32)
    return cid


def topk_split(score: Tensor, p: int, k: int) -> Tuple[Tensor, Tensor]:
    """keep_idx (B, p+k) = protected + the k best non-protected by score (ties by lower
    index), ascending; prune_idx the rest, ascending."""
    b, n = score.shape
    order = torch.sort(-score[:, p:].double(), dim=1, stable=True).indices + p
    keep = torch.sort(order[:, :k], dim=1).values
    prune = torch.sort(order[:, k:], dim=1).values
    protected = torch.arange(p, device=score.device).expand(b, p)
    return torch.cat([protected, keep], dim=1), prune


def _pruned_forward(model: ViTSegmenter, image: Tensor, schedule, scorer: Callable, clusters: Optional[int] = None,
                    iters: Optional[int] = None, mode: Optional[str] = None) -> Tensor:
    """The patched model's forward with ``scorer(x, attn) -> (B, N)`` choosing the tokens;
    clustering and reconstruction default to LVTP's (``patching.DEFAULTS``)."""
    clusters = int(DEFAULTS["clusters"]) if clusters is None else clusters
    iters = int(DEFAULTS["iters"]) if iters is None else iters
    mode = str(DEFAULTS["reconstruct"]) if mode is None else mode
    x, grid = model.embed(image)
    p = model.num_prefix_tokens
    stages = active_stages(schedule, len(model.blocks))
    records: List[StageRecord] = []
    for i, blk in enumerate(model.blocks):
        if i not in stages:
            x = blk(x)
            continue
        x, attn = blk(x, return_attn=True)
        score = scorer(x, attn)
        k = budget(x.shape[1], p, stages[i])
        keep_idx, prune_idx = topk_split(score, p, k)
        cid = semantic_clusters(x, score, p, clusters, iters)
        records.append(StageRecord(i, x, keep_idx, prune_idx, cid))
        x = torch.ops.lvtp.gather_tokens(x, keep_idx)
    x = reconstruct(x, records, mode, clusters)
    x = model.norm(x)
    return model.decoder(x[:, p:], grid, (image.shape[-2], image.shape[-1]))


def evit_score(x: Tensor, attn: Tensor) -> Tensor:
    """Head-mean attention of the class token (query 0) to every token."""
    return attn[:, :, 0, :].mean(dim=1)


class RandomScorer:
    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: Tensor, attn: Tensor) -> Tensor:
        return torch.rand(x.shape[:2], generator=self.gen).to(x.device)


# --------------------------------------------------------------------------- ToMe
def _attn_with_keys(blk, x: Tensor, size: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Block attention with ToMe's proportional attention; returns (x + attn, keys mean)."""
    a = blk.attn
    b, n, c = x.shape
    qkv = a.qkv(blk.norm1(x)).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    bias = None
    if size is not None:
        bias = size.log()[:, None, None, :].to(q.dtype)  # (B, 1, 1, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    x = x + a.proj(out.transpose(1, 2).reshape(b, n, c))
    return x, k.mean(dim=1)


def bipartite_merge(x: Tensor, metric: Tensor, size: Tensor, r: int, p: int):
    """One round of ToMe's bipartite soft matching: alternate non-protected tokens into
    sets A (even) and B (odd); each A token's most similar B token (cosine on ``metric``);
    the r most similar A tokens are merged (size-weighted mean) into their B match.

    Returns (x', size', src, dst_tokens): ``src`` (B, N) maps every input token to its
    output index, ``dst_tokens`` (B, N - r) is the input token that holds each output slot."""
    bsz, n, c = x.shape
    dev = x.device
    ids = torch.arange(p, n, device=dev)
    a_ids, b_ids = ids[0::2], ids[1::2]
    r = min(r, a_ids.numel())
    m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = m[:, a_ids] @ m[:, b_ids].transpose(1, 2)  # (B, |A|, |B|)
    best, dst = scores.max(dim=-1)  # (B, |A|)
    order = torch.sort(-best, dim=1, stable=True).indices
    merged_a, kept_a = order[:, :r], torch.sort(order[:, r:], dim=1).values
    # outputs: protected, kept A, all of B (in index order within each group)
    keep_tokens = torch.cat([torch.arange(p, device=dev).expand(bsz, p), a_ids[kept_a],
                             b_ids.expand(bsz, -1)], dim=1)  # (B, n - r)
    n_out = keep_tokens.shape[1]
    src = torch.empty(bsz, n, dtype=torch.long, device=dev)
    src.scatter_(1, keep_tokens, torch.arange(n_out, device=dev).expand(bsz, -1))
    b_pos = p + kept_a.shape[1]  # output index of the first B token
    dst_of_merged = torch.gather(dst, 1, merged_a) + b_pos  # (B, r)
    src.scatter_(1, a_ids[merged_a], dst_of_merged)
    xs = (x * size[..., None]).float()
    out = torch.zeros(bsz, n_out, c, dtype=torch.float32, device=dev).scatter_add_(
        1, src[..., None].expand(-1, -1, c), xs)
    new_size = torch.zeros(bsz, n_out, dtype=size.dtype, device=dev).scatter_add_(1, src, size)
    out = (out / new_size[..., None].float()).to(x.dtype)
    return out, new_size, src, keep_tokens


def tome_forward(model: ViTSegmenter, image: Tensor, schedule) -> Tensor:
    """ToMe at LVTP's stage layers and token counts, with unmerge before the dense head."""
    x, grid = model.embed(image)
    p = model.num_prefix_tokens
    stages = active_stages(schedule, len(model.blocks))
    bsz, n0, _ = x.shape
    where = torch.arange(n0, device=x.device).expand(bsz, -1).clone()  # original token -> current index
    size: Optional[Tensor] = None
    for i, blk in enumerate(model.blocks):
        x, metric = _attn_with_keys(blk, x, size)
        x = x + blk.mlp(blk.norm2(x))
        if i in stages:
            if size is None:
                size = torch.ones(bsz, x.shape[1], dtype=torch.float32, device=x.device)
            target = p + budget(x.shape[1], p, stages[i])
            while x.shape[1] > target:  # a round merges at most half of the tokens
                x, size, src, holders = bipartite_merge(x, metric, size, x.shape[1] - target, p)
                # a later round at the same layer matches on the destinations' keys
                metric = torch.gather(metric, 1, holders[..., None].expand(-1, -1, metric.shape[-1]))
                where = torch.gather(src, 1, where)
    x = torch.gather(x, 1, where[..., None].expand(-1, -1, x.shape[-1]))  # unmerge
    x = model.norm(x)
    return model.decoder(x[:, p:], grid, (image.shape[-2], image.shape[-1]))


# --------------------------------------------------------------------------- entry point
def make_runner(model: ViTSegmenter, method: Method, schedule, seed: int = 0) -> Callable[[Tensor], Tensor]:
    """A callable image -> logits running ``method`` on ``model`` at ``schedule``.

    For ``lvtp`` methods the model is patched (call :func:`release` after use)."""
    if method.kind == "lvtp":
        opts = dict(method.options)
        layers = opts.pop("layers", None)
        sched = schedule
        if layers is not None:
            raise ValueError("make_runner: layers are set through the schedule, not method options")
        patch(model, schedule=sched, **opts)
        return model
    if method.kind == "evit":
        return lambda img: _pruned_forward(model, img, schedule, evit_score)
    if method.kind == "random":
        scorer = RandomScorer(seed)
        return lambda img: _pruned_forward(model, img, schedule, scorer)
    if method.kind == "tome":
        return lambda img: tome_forward(model, img, schedule)
    raise ValueError(f"make_runner: unknown method kind {method.kind!r}")


def release(model: ViTSegmenter) -> None:
    unpatch(model)
