"""LVTP for timm's ``VisionTransformer`` and the models built on it (ViT, DeiT, DeiT-III,
DINOv2 in timm, register tokens, no class token, global average pooling, ...).

The patched class overrides ``forward_features`` only: patch embedding, ``_pos_embed``
(position-embedding resampling with ``dynamic_img_size`` included), ``patch_drop`` and
``norm_pre`` run as timm runs them; the blocks prune at their stages; the full token map
is rebuilt before ``norm``, so ``forward_features`` returns (B, N, C) as before and
``forward_head`` (class-token or average pooling, ``fc_norm``, ``head``) is unchanged.

* Protected tokens: the ``num_prefix_tokens`` prefix (class token and register tokens).
* Stage blocks compute their attention with ``torch.ops.lvtp.attention_entropy`` (with
  the block's ``q_norm``/``k_norm``, ``scale``, attention ``norm``, ``gate``, layer scale
  and drop path); other blocks run their own forward.
* Edge term: the Sobel energy of the model's input, i.e. the *normalised* image timm
  models take; it is skipped when the input is not 3-channel, the patch is not square, or
  the patch grid is not the token grid (``dynamic_img_pad``, an unusual stem).
* ``forward_intermediates`` (what timm's dense heads and ``features_only`` wrappers call)
  prunes too, with timm's signature and semantics (``indices`` as in
  ``feature_take_indices``, ``norm``, ``stop_early``, ``output_fmt`` "NCHW" / "NLC",
  ``intermediates_only``, ``return_prefix_tokens``, ``output_dict``): every requested
  layer comes back as a full token map, the same shape as unpatched. The rule for a
  layer ``L``: the tokens active after block ``L`` (after its pruning when ``L`` is a
  stage) go through the reconstruction (spec step 7, the model's ``reconstruct`` mode)
  of every stage at or before ``L``, last first; stages after ``L`` do not apply. So
  layers before the first stage are the blocks' own outputs, and the last block's
  intermediate is exactly ``forward_features``' map before ``norm`` (after it with
  ``norm=True``); the final features (``intermediates_only=False``) are ``norm`` of the
  map after the last block run (the last requested one with ``stop_early=True``, as timm).
* Calls with ``attn_mask``/``is_causal`` are not pruned: they raise a ValueError on a
  patched model with active stages (``forward_features`` and ``forward_intermediates``).
* A patched model pickles (``torch.save`` of the whole model, ``copy.deepcopy``) as a
  patched model; its ``state_dict`` is the unpatched one's.
"""

from __future__ import annotations

import inspect
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from python_ref.flops import ViTShape

from ..models.engine import warn_if_grad
from ..registry import trusted_inputs
from ._common import (
    AdapterMixin, attention_entropy, linear_flops, make_patched_class, pair, pruned_blocks,
    single_patch_size,
)

_IDENTITY = nn.Identity()
BLOCK_ATTRS = ("norm1", "attn", "norm2", "mlp")
ATTN_ATTRS = ("qkv", "num_heads", "proj")


def _get(m: nn.Module, *names: str) -> nn.Module:
    for n in names:
        sub = getattr(m, n, None)
        if sub is not None:
            return sub
    return _IDENTITY


def check(model: nn.Module) -> None:
    """TypeError unless every block is a pre-norm timm ``Block`` with a fused-qkv ``Attention``."""
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        missing = [a for a in BLOCK_ATTRS if not hasattr(blk, a)]
        missing += [f"attn.{a}" for a in ATTN_ATTRS if attn is not None and not hasattr(attn, a)]
        if missing or not isinstance(getattr(attn, "qkv", None), nn.Linear):
            raise TypeError(
                f"patch: block {i} of this timm VisionTransformer ({type(blk).__name__}) is not a supported "
                f"pre-norm Block with a fused-qkv Attention (missing {missing or ['attn.qkv as nn.Linear']})"
            )


def block_entropy(blk: nn.Module, x: Tensor, qs: Sequence[float]) -> Tuple[Tensor, Tensor]:
    """timm ``Block.forward`` with its attention from ``lvtp.attention_entropy``."""
    a = blk.attn
    h = blk.norm1(x)
    b, n, _ = h.shape
    heads = int(a.num_heads)
    head_dim = int(getattr(a, "head_dim", 0) or a.qkv.out_features // (3 * heads))
    gate_proj = getattr(a, "gate", None)
    gate = gate_proj(h).sigmoid() if isinstance(gate_proj, nn.Module) else None
    q, k, v = a.qkv(h).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = _get(a, "q_norm")(q), _get(a, "k_norm")(k)
    scale = getattr(a, "scale", None) or head_dim**-0.5
    out, ent = attention_entropy(q, k, v, qs, scale)
    out = out.transpose(1, 2).reshape(b, n, heads * head_dim)
    out = _get(a, "norm")(out)
    if gate is not None:
        out = out * gate
    out = _get(a, "proj_drop")(a.proj(out))
    x = x + _get(blk, "drop_path1", "drop_path")(_get(blk, "ls1")(out))
    x = x + _get(blk, "drop_path2", "drop_path")(_get(blk, "ls2")(blk.mlp(blk.norm2(x))))
    return x, ent


def _run_block(blk: nn.Module, x: Tensor) -> Tensor:
    return blk(x)


def _patch_size(model: nn.Module) -> Tuple[int, int]:
    pe = model.patch_embed
    p = getattr(pe, "patch_size", None)
    if p is None:
        p = pe.proj.kernel_size
    return pair(p)


def _no_mask(where: str, options: Dict[str, object]) -> None:
    bad = sorted(k for k, v in options.items() if v is not None and v is not False)
    if bad:
        raise ValueError(
            f"an LVTP-patched timm VisionTransformer prunes without attention masks: {where} does not support "
            f"attn_mask / is_causal / other options here (got {bad})"
        )


# forward_intermediates options the pruned version implements, with timm's defaults
_INTERMEDIATE_OPTIONS = dict(
    indices=None, return_prefix_tokens=False, norm=False, stop_early=False, output_fmt="NCHW",
    intermediates_only=False, output_dict=False,
)


class _TimmLVTPMixin(AdapterMixin):
    """Overrides ``VisionTransformer.forward_features`` and ``forward_intermediates`` with
    the progressive pruning."""

    def _lvtp_run(self, x: Tensor, blocks, take=()) -> Tuple[Tensor, Dict[int, Tensor]]:
        """The stem as timm runs it, then the pruned ``blocks``: (full map after the last
        of them, {requested block: full map}), before ``norm``."""
        image = x
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = _get(self, "patch_drop")(x)
        x = _get(self, "norm_pre")(x)
        warn_if_grad(x)
        with torch.no_grad(), trusted_inputs():  # the lvtp ops take no gradients
            return pruned_blocks(
                self._lvtp, list(blocks), x, image, single_patch_size(_patch_size(self)), int(self.num_prefix_tokens),
                block_entropy, _run_block, take,
            )

    def forward_features(self, x: Tensor, *args, **kwargs) -> Tensor:
        st = self._lvtp
        if not st.stages:
            return super().forward_features(x, *args, **kwargs)
        if args:
            raise ValueError(
                "an LVTP-patched timm VisionTransformer prunes without attention masks: "
                f"forward_features takes no attn_mask / is_causal ({len(args)} positional options given)"
            )
        _no_mask("forward_features", kwargs)
        return self.norm(self._lvtp_run(x, self.blocks)[0])

    def forward_intermediates(self, x: Tensor, *args, **kwargs):
        """timm's ``forward_intermediates`` with pruning (the module docstring gives the
        rule for the pruned tokens of an intermediate layer)."""
        st = self._lvtp
        if not st.stages:
            return super().forward_intermediates(x, *args, **kwargs)
        # bind by timm's own signature (options by position or keyword, as this timm has them)
        sig = inspect.signature(super().forward_intermediates)
        bound = sig.bind(x, *args, **kwargs)
        opts = dict(_INTERMEDIATE_OPTIONS)
        other = {}
        for name, value in bound.arguments.items():
            if name == next(iter(sig.parameters)):
                continue
            if name in opts:
                opts[name] = value
            elif sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                other.update(value)
            else:
                other[name] = value
        _no_mask("forward_intermediates", other)
        from timm.models._features import feature_take_indices

        output_fmt = opts["output_fmt"]
        assert output_fmt in ("NCHW", "NLC"), "Output format must be one of NCHW or NLC."
        take_indices, max_index = feature_take_indices(len(self.blocks), opts["indices"])
        take = sorted(set(int(i) for i in take_indices))  # block order, as timm appends them
        b, _, height, width = x.shape
        blocks = self.blocks[: max_index + 1] if opts["stop_early"] else self.blocks
        final, inter = self._lvtp_run(x, blocks, take)
        norm = opts["norm"]
        intermediates: List[Tensor] = [self.norm(inter[i]) if norm else inter[i] for i in take]
        p = int(self.num_prefix_tokens)
        prefix_tokens = None
        if p:
            prefix_tokens = [y[:, 0:p] for y in intermediates]
            intermediates = [y[:, p:] for y in intermediates]
        if output_fmt == "NCHW":
            pe = self.patch_embed
            if hasattr(pe, "dynamic_feat_size"):
                h, w = pe.dynamic_feat_size((height, width))
            else:
                h, w = pe.grid_size
            intermediates = [y.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if opts["output_dict"]:
            result = {"image_intermediates": intermediates}
            if prefix_tokens is not None and opts["return_prefix_tokens"]:
                result["image_intermediates_prefix"] = prefix_tokens
            if not opts["intermediates_only"]:
                result["image_features"] = self.norm(final)
            return result
        if opts["return_prefix_tokens"] and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        if opts["intermediates_only"]:
            return intermediates
        return self.norm(final), intermediates


_PATCHED: Dict[type, type] = {}


class TimmViT:
    """The timm VisionTransformer family (see the module docstring)."""

    name = "timm.models.vision_transformer.VisionTransformer"

    @staticmethod
    def depth(model: nn.Module) -> int:
        check(model)
        return len(model.blocks)

    @staticmethod
    def vit_shape(model: nn.Module, img_size: Optional[Tuple[int, int]] = None, **cost_options) -> ViTShape:
        """The cost model on images of ``img_size`` (default the model's ``patch_embed.img_size``).
        The patch embedding and the classifier head (one pooled token) are fixed costs
        (``stem_flops``); the head is not a per-patch decoder, so ``num_classes=0``."""
        check(model)
        pe = model.patch_embed
        h, w = pair(img_size if img_size is not None else pe.img_size)
        ph, pw = _patch_size(model)
        dim = int(model.embed_dim)
        num_patches = (h // ph) * (w // pw)
        proj = getattr(pe, "proj", None)
        in_chans = int(proj.in_channels) if isinstance(proj, nn.Conv2d) else int(getattr(model, "in_chans", 3))
        blk = model.blocks[0]
        fc1 = getattr(blk.mlp, "fc1", None)
        mlp_ratio = fc1.out_features / dim if isinstance(fc1, nn.Linear) else 4.0
        head = getattr(model, "head", None)
        stem = 2.0 * num_patches * dim * in_chans * ph * pw + linear_flops(head)
        return ViTShape(
            depth=len(model.blocks),
            embed_dim=dim,
            num_heads=int(blk.attn.num_heads),
            num_patches=num_patches,
            mlp_ratio=mlp_ratio,
            num_protected=int(model.num_prefix_tokens),
            patch_size=ph,
            in_chans=in_chans,
            num_classes=0,
            image_hw=(h, w),
            stem_flops=stem,
            **cost_options,
        )

    @staticmethod
    def patched_class(cls: type) -> type:
        return make_patched_class(cls, _TimmLVTPMixin, __name__, _PATCHED)


_TimmLVTPMixin._lvtp_family = TimmViT  # what pickle rebuilds the patched class with
