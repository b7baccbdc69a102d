"""The patch engine: what every patched model family shares (the package's ViT in
models/patching.py, timm and Hugging Face models in lvtp_kernels.adapters).

* ``LVTPState``: the options and schedule of a patched model, shared by all its stages;
* ``pruned_blocks``: the one pruned block loop (spec steps 1-7) with the full token maps
  of intermediate layers; ``prune_step`` / ``stage_edge`` / ``finish`` its parts;
* ``reconstruct``: spec step 7, one ``lvtp.reconstruct_stage`` per stage;
* ``make_patched_class``: ``mixin`` over a model class, made once and published by name.

All of it runs inside ``registry.trusted_inputs()``: the tensors come from the model's own
blocks and from lvtp ops, so the ops' data checks (a device sync each on a GPU) are skipped.
Backends are resolved once per device type (``registry.kernels``, :func:`lvtp_ops`) and
called directly, without the dispatcher's per-call work; under ``torch.compile`` the
forward calls ``torch.ops.lvtp`` instead (opaque custom ops with fake kernels).

Intermediate layers (timm ``forward_intermediates``, transformers ``hidden_states`` and
backbone ``feature_maps``): the full token map after block ``L`` is rebuilt from the
tokens active after block ``L`` (after its pruning when ``L`` is a stage) with the
reconstruction of every stage at or before ``L`` (last stage first, the model's
``reconstruct`` mode); stages after ``L`` do not apply. Before the first stage this is
the block's own output; after the last block it is exactly what the final map is.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from torch.utils._python_dispatch import _get_current_dispatch_mode as _dispatch_mode

from .. import registry as _registry

from python_ref.ops import DEFAULT_QS
from python_ref.pipeline import RECONSTRUCT_MODES, StageRecord

# The spec's defaults for every option of the method (spec steps 1-7).
SPEC_DEFAULTS: Dict[str, object] = dict(
    qs=DEFAULT_QS, alpha=0.5, entropy_mode="low", clusters=8, iters=10, use_edge=True, reconstruct="residual",
    weights="dynamic", allocation="ranked", precision="exact", spatial=0.0,
)
# The package's defaults: the spec's, except where the CamVid val ablation
# (docs/results.md) measured a better choice; every spec choice stays selectable.
DEFAULTS: Dict[str, object] = dict(
    SPEC_DEFAULTS, alpha=0.3, entropy_mode="high", allocation="proportional", reconstruct="nearest", iters=3,
    precision="fast",  # [H]: float32 selection, no host sync (docs/design.md "Two precisions")
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
    precision: str = "exact"  # the selection's: "exact" (float64) or "fast" (float32, python_ref/fast.py)
    spatial: float = 0.0  # [I] ablation: weight of the patch position beside the unit-norm features in k-means
    keep_records: bool = False  # keep the last forward's stage records (see last_records)
    graphs: Optional["GraphCache"] = None  # patch(..., cuda_graph=True): the captured forwards
    last_records: List[StageRecord] = field(default_factory=list)


def lvtp_ops(t: Tensor):
    """The lvtp ops for tensors like ``t``: the resolved backends of its device type
    (``registry.kernels``: every argument given, no checks), or ``torch.ops.lvtp`` while
    torch.compile traces (custom ops with fakes), a dispatch mode is active (FlopCounterMode,
    fake tensors: they must see the ops) or the profiler records (it names the ops)."""
    if (torch.compiler.is_compiling() or _dispatch_mode() is not None or t.device.type == "meta"
            or torch._C._autograd._profiler_enabled()):  # the profiler names each lvtp op (bench --breakdown)
        return torch.ops.lvtp
    return _registry.kernels(t.device.type)


def reconstruct(x_final: Tensor, records: Sequence[StageRecord], mode: str, clusters: int,
                precision: str = "exact") -> Tensor:
    """Spec step 7: one ``torch.ops.lvtp.reconstruct_stage`` per stage, from the last to
    the first (python_ref.pipeline.reconstruct is the loop reference).

    Per stage the kept tokens' residuals ``x_j(final) - x_j(s)`` are averaged per cluster
    in fp32 or wider (``clusters`` bounds the cluster ids) and added to the pruned tokens
    of the same cluster; a cluster without a kept token adds nothing (frozen).
    ``precision="fast"`` lets a backend use its fast variant (Triton: the "nearest" stage
    in one fused launch, keys equal except at float32 near-ties).
    """
    if mode not in RECONSTRUCT_MODES:
        raise ValueError(f"reconstruct: mode must be one of {RECONSTRUCT_MODES}, got {mode!r}")
    full = x_final
    ops = lvtp_ops(x_final)
    stage = ops.variant("reconstruct_stage", "fast") if precision == "fast" and isinstance(ops, _registry.Kernels) \
        else ops.reconstruct_stage
    for rec in reversed(records):
        full = stage(
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
    e = lvtp_ops(image).patch_edge_energy(image, patch_size)
    return torch.cat([e.new_zeros(e.shape[0], num_prefix), e], dim=1) if num_prefix else e


def prune_step(
    st: LVTPState, layer: int, x: Tensor, ent: Tensor, edge: Optional[Tensor], num_prefix: int,
    records: List[StageRecord], pos: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Spec steps 2-6 at stage ``layer``: select on (x, ent, edge), keep the kept tokens,
    record the stage for the reconstruction. Returns the kept tokens, their edge and their
    positions. ``pos`` (B, N, 2), when given with ``st.spatial > 0``: the clustering sees
    ``[x / |x|, spatial * pos]`` (an ablation of [I]: spatially coherent clusters, so the
    proportional allocation spreads the budget over the image)."""
    if st.weights == "equal":  # one averaged order, whose dynamic weight is 1 (an ablation)
        ent = ent.mean(dim=-1, keepdim=True)
    r = st.stages[layer]
    ops = lvtp_ops(x)
    feats = x
    if pos is not None and st.spatial > 0:
        unit = x / x.float().norm(dim=-1, keepdim=True).clamp_min(1e-12).to(x.dtype)
        feats = torch.cat([unit, (st.spatial * pos).to(x.dtype)], dim=-1)
    keep_idx, prune_idx, cluster_id = ops.select(
        feats, ent, edge, r, num_prefix, st.alpha, st.entropy_mode, st.clusters, st.iters, st.allocation, st.precision
    )
    kept = ops.gather_tokens(x, keep_idx)
    records.append(StageRecord(layer, x, keep_idx, prune_idx, cluster_id))
    if edge is not None:
        edge = ops.gather_tokens(edge[..., None], keep_idx)[..., 0]
    if pos is not None:
        pos = ops.gather_tokens(pos, keep_idx)
    return kept, edge, pos


def token_positions(image: Tensor, patch_size: int, num_prefix: int, like: Tensor) -> Tensor:
    """(B, P + h*w, 2) patch centres in [-0.5, 0.5] (row, column; 0 for the P prefix tokens),
    in ``like``'s dtype and device."""
    h, w = image.shape[-2] // patch_size, image.shape[-1] // patch_size
    rows = (torch.arange(h, device=like.device, dtype=torch.float32) + 0.5) / h - 0.5
    cols = (torch.arange(w, device=like.device, dtype=torch.float32) + 0.5) / w - 0.5
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(h * w, 2)
    grid = torch.cat([grid.new_zeros(num_prefix, 2), grid], dim=0)
    return grid.to(like.dtype).expand(like.shape[0], -1, -1).contiguous()


def finish(st: LVTPState, x: Tensor, records: List[StageRecord]) -> Tensor:
    """Spec step 7: the full token map back from the last stage's tokens."""
    if st.keep_records:
        st.last_records = records
    return reconstruct(x, records, st.reconstruct, st.clusters, st.precision)


def warn_if_grad(x: Tensor) -> None:
    if torch.is_grad_enabled() and x.requires_grad:
        warnings.warn(
            "an LVTP-patched model runs its pruned blocks without gradients (inference only); "
            "call it under torch.no_grad() or torch.inference_mode()",
            stacklevel=4,
        )


class _LVTPMixin:
    """The base of every patched class (``is_patched``); ``_lvtp`` holds its LVTPState.

    With ``patch(..., cuda_graph=True)`` a call whose tensor arguments are all on one CUDA
    device, made without gradients, replays a CUDA graph of the whole forward captured on
    the first call of each (shapes, dtypes, device, keyword names) (:class:`GraphCache`)."""

    _lvtp: LVTPState

    def __call__(self, *args, **kwargs):
        cache = getattr(self._lvtp, "graphs", None)
        if cache is not None and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            key = GraphCache.key(args, kwargs)
            if key is not None:
                return cache.run(key, lambda *a, **k: super(_LVTPMixin, self).__call__(*a, **k), args, kwargs)
        return super().__call__(*args, **kwargs)


class GraphCache:
    """CUDA graphs of a patched model's forward, one per input signature.

    The first call of a signature warms the forward up twice on a side stream, then
    captures it; later calls copy their tensors into the captured inputs and replay. The
    returned outputs are the graph's own buffers: the next call of the same signature
    overwrites them (clone what must outlive it), as with torch.compile's CUDA graphs.
    Possible because the fast selection never syncs with the host and every shape follows
    from the input's (the budgets are fixed by the schedule)."""

    def __init__(self, max_graphs: int = 8):
        self.max_graphs = max_graphs
        self.graphs: Dict[tuple, tuple] = {}

    def __getstate__(self):  # pickles and deep copies start with no graphs (they hold device state)
        return {"max_graphs": self.max_graphs}

    def __setstate__(self, state):
        self.max_graphs, self.graphs = state["max_graphs"], {}

    @staticmethod
    def key(args, kwargs) -> Optional[tuple]:
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)]
        if not tensors or any(not t.is_cuda for t in tensors) or len({t.device for t in tensors}) != 1:
            return None
        sig = tuple((tuple(a.shape), a.dtype) if isinstance(a, Tensor) else ("value", repr(a)) for a in args)
        kw = tuple(sorted((k, (tuple(v.shape), v.dtype) if isinstance(v, Tensor) else repr(v))
                          for k, v in kwargs.items()))
        return (tensors[0].device, sig, kw)

    def run(self, key, fn, args, kwargs):
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                self.graphs.pop(next(iter(self.graphs)))
            s_args = [a.clone() if isinstance(a, Tensor) else a for a in args]
            s_kwargs = {k: v.clone() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
            side = torch.cuda.Stream(device=key[0])
            side.wait_stream(torch.cuda.current_stream(key[0]))
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn(*s_args, **s_kwargs)
            torch.cuda.current_stream(key[0]).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fn(*s_args, **s_kwargs)
            entry = self.graphs[key] = (graph, s_args, s_kwargs, out)
        graph, s_args, s_kwargs, out = entry
        for dst, src in zip(s_args, args):
            if isinstance(dst, Tensor):
                dst.copy_(src)
        for k, v in kwargs.items():
            if isinstance(v, Tensor):
                s_kwargs[k].copy_(v)
        graph.replay()
        return out


def attention_entropy(q: Tensor, k: Tensor, v: Tensor, qs: Sequence[float], scale: float) -> Tuple[Tensor, Tensor]:
    """(B, H, N, D) q, k, v -> attention output (B, H, N, D) and the per-token entropies
    (B, N, len(qs)) from ``torch.ops.lvtp.attention_entropy`` (no N x N map is kept)."""
    return lvtp_ops(q).attention_entropy(q, k, v, [float(t) for t in qs], float(scale))


def edge_for(st: LVTPState, image: Optional[Tensor], patch_size: Optional[int], tokens: Tensor, num_prefix: int):
    """The edge energy of ``image`` per token, or None when there is no edge term or the
    image cannot give one for these tokens (not 3 channels, no single square patch size,
    or a patch grid that is not the token grid, e.g. a padded or unusual stem)."""
    if image is None or patch_size is None or image.dim() != 4 or image.shape[1] != 3:
        return None
    if image.shape[-2] // patch_size * (image.shape[-1] // patch_size) + num_prefix != tokens.shape[1]:
        return None
    return stage_edge(st, image, patch_size, num_prefix)


def pruned_blocks(
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
    pos = None
    if st.spatial > 0 and image is not None and patch_size is not None and image.dim() == 4 and \
            image.shape[-2] // patch_size * (image.shape[-1] // patch_size) + num_prefix == x.shape[1]:
        pos = token_positions(image, patch_size, num_prefix, x)
    records: List[StageRecord] = []
    inter: Dict[int, Tensor] = {}
    last = len(blocks) - 1
    for i, blk in enumerate(blocks):
        if i in st.stages:
            x, ent = block_entropy(blk, x, st.qs)
            x, edge, pos = prune_step(st, i, x, ent, edge, num_prefix, records, pos)
        else:
            x = run_block(blk, x)
        if i in take and i != last:
            inter[i] = reconstruct(x, records, st.reconstruct, st.clusters, st.precision)
    full = finish(st, x, records)
    if last in take:
        inter[last] = full
    return full, inter


def make_patched_class(cls: type, mixin: type, module_name: str, registry: Dict[type, type],
                       name: Optional[str] = None) -> type:
    """``name`` (default ``LVTP_<module>_<class>``): ``mixin`` over ``cls``, made once per
    class and published in ``module_name``, so that tracebacks, reprs and pickle find it
    by name."""
    if cls not in registry:
        name = name or f"LVTP_{cls.__module__.replace('.', '_')}_{cls.__qualname__.replace('.', '_')}"
        patched = type(name, (mixin, cls), {"_lvtp_original_class": cls, "__module__": module_name})
        patched.__qualname__ = name
        setattr(sys.modules[module_name], name, patched)
        registry[cls] = patched
    return registry[cls]
