"""FLOPs: the analytic cost model (python_ref.flops) and FlopCounterMode support.

``count_flops(fn, *args)`` measures with ``torch.utils.flop_counter.FlopCounterMode``.
For that count to be complete this module registers flop formulas for

* every ``torch.ops.lvtp`` op that does arithmetic (the same per-element costs the
  analytic model charges: python_ref.flops), and
* ``aten._scaled_dot_product_flash_attention_for_cpu``, the CPU SDPA kernel, which
  torch's FlopCounterMode does not count (its CUDA siblings it does).
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter as _fc

from python_ref import flops as _ref_flops
from python_ref.ops import DEFAULT_QS as _DEFAULT_QS
from python_ref.flops import (  # noqa: F401  (re-exported)
    ViTShape,
    block_flops,
    default_stage_layers,
    edge_flops,
    entropy_flops,
    kmeans_flops,
    prune_flops,
    reconstruct_flops,
    stage_token_counts,
    vit_flops,
)

from . import registry as _registry  # noqa: F401  (the lvtp ops must exist)



def schedule_for_flops(model_cfg, reduction: float, layers=None, tol: float = 0.02, img_size=None):
    """Spec step 8: stages whose analytic FLOPs are within ``tol`` of ``(1 - reduction)``.

    ``model_cfg`` is a ``ViTShape``, a ``ViTConfig`` or a model with ``vit_shape()``
    (then ``img_size`` picks the input size, default the model's)."""
    shape = model_cfg.vit_shape(img_size) if hasattr(model_cfg, "vit_shape") else model_cfg
    return _ref_flops.schedule_for_flops(shape, reduction, layers, tol)


def _register(op, formula) -> None:
    packet = getattr(op, "overloadpacket", op)
    if packet not in _fc.flop_registry:
        _fc.register_flop_formula(op)(formula)


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _tsallis(attn_shape, qs, *args, out_shape=None, **kwargs):
    b, h, n, _ = attn_shape
    return entropy_flops(b, h, n, len(qs))


def _attention_entropy(q_shape, k_shape, v_shape, qs, *args, out_shape=None, **kwargs):
    b, h, n, _ = q_shape
    return _fc.sdpa_flop_count(q_shape, k_shape, v_shape) + entropy_flops(b, h, n, len(qs))


def _edge(image_shape, patch, *args, out_shape=None, **kwargs):
    b, _, height, width = image_shape
    return edge_flops(b, height, width)


def _kmeans(x_shape, init_shape, iters, *args, out_shape=None, **kwargs):
    b, n, d = x_shape
    return kmeans_flops(b, n, init_shape[1], d, iters)


def _select(tokens_shape, ent_shape, edge_shape, keep_ratio, num_protected, alpha, entropy_mode, clusters, iters,
            *args, out_shape=None, **kwargs):
    b, n, d = tokens_shape
    m = n - num_protected
    return kmeans_flops(b, m, min(clusters, m), d, iters)


def _prune(tokens_shape, attn_shape, edge_shape=None, keep_ratio=0.7, num_protected=1, qs=_DEFAULT_QS, alpha=0.5,
           entropy_mode="low", clusters=8, iters=10, *args, out_shape=None, **kwargs):
    b, n, d = tokens_shape
    return prune_flops(b, attn_shape[1], n, d, num_protected, len(qs), clusters, iters)


_register(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, _sdpa_cpu)
_register(torch.ops.lvtp.tsallis_entropy, _tsallis)
_register(torch.ops.lvtp.attention_entropy, _attention_entropy)
_register(torch.ops.lvtp.patch_edge_energy, _edge)
_register(torch.ops.lvtp.kmeans, _kmeans)
_register(torch.ops.lvtp.select, _select)
_register(torch.ops.lvtp.prune, _prune)


def _reconstruct_stage(full_shape, x_stage_shape, keep_shape, *args, out_shape=None, **kwargs):
    mode = args[-1] if args else kwargs.get("mode", "residual")
    b, n, c = x_stage_shape
    # protected kept tokens are not similarity candidates; this shape-only formula assumes one (class token)
    return b * reconstruct_flops(n, c, mode, keep_shape[1], 1 if mode == "nearest" else 0)


_register(torch.ops.lvtp.reconstruct_stage, _reconstruct_stage)


def count_flops(fn, *args, **kwargs) -> int:
    """Total FLOPs FlopCounterMode records while running ``fn(*args, **kwargs)``."""
    with _fc.FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()
