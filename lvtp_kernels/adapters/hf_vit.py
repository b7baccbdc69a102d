"""LVTP for Hugging Face transformers ``ViTModel``, ``ViTForImageClassification``,
``Dinov2Model`` and ``Dinov2ForImageClassification`` (eager and SDPA attention, i.e. any
``config._attn_implementation``: blocks that are not a stage run their own forward).

The patched class overrides ``forward``. With active stages it runs the embeddings (the
model's own, position-embedding interpolation and ``bool_masked_pos`` included), the
layers with pruning at the stages (a stage layer's attention comes from
``torch.ops.lvtp.attention_entropy``, with DINOv2's layer scale and drop path), rebuilds
the full token map (spec step 7) and applies the final ``layernorm`` and the model's own
pooling / classifier, so

* ``last_hidden_state`` is (B, 1 + patches, C) as unpatched, ``pooler_output`` and
  ``logits`` keep their shapes; ``labels=`` gives ``loss`` through ``self.loss_function``;
* ``output_attentions=True`` and ``output_hidden_states=True`` raise a ValueError
  (attention maps are never materialised; per-layer hidden states have pruned token
  counts); so do ``attention_mask`` / ``head_mask``; options go by keyword;
* protected tokens: the class token;
* edge term: the Sobel energy of ``pixel_values``, i.e. the *normalised* image the image
  processor gives; skipped when it is not 3-channel or the patch is not square.

Layouts: transformers 5 (``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``ViTModel.layers``)
is tested; the transformers 4 layout (``attention.attention.query``...,
``encoder.layer``, ``intermediate``/``output``) is recognised as well.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from python_ref.flops import ViTShape

from ..models.patching import _LVTPMixin, warn_if_grad
from ..registry import trusted_inputs
from . import hf_kind
from ._common import attention_entropy, linear_flops, make_patched_class, pair, pruned_blocks, single_patch_size

# the submodule holding the ViT / DINOv2 base model of each supported class
BASE_ATTR = {"ViTModel": None, "ViTForImageClassification": "vit", "Dinov2Model": None, "Dinov2ForImageClassification": "dinov2"}
# keyword options the pruned forward understands; others must be None / False
_KNOWN = ("bool_masked_pos", "interpolate_pos_encoding", "labels", "return_dict")
_MUST_BE_UNSET = ("attention_mask", "head_mask")


def base_model(model: nn.Module, kind: str) -> nn.Module:
    attr = BASE_ATTR[kind]
    return model if attr is None else getattr(model, attr)


def layers(base: nn.Module) -> nn.ModuleList:
    found = getattr(base, "layers", None)  # transformers 5 ViTModel
    if found is None:
        enc = getattr(base, "encoder", None)
        found = getattr(enc, "layer", None) if enc is not None else None
    if found is None:
        raise TypeError(f"patch: cannot find the transformer layers of {type(base).__name__} (no .layers / .encoder.layer)")
    return found


def _attention_parts(att: nn.Module):
    """(q, k, v, out) projections, heads, head_dim, scale of a ViT / DINOv2 attention."""
    if hasattr(att, "q_proj"):  # transformers 5
        heads, hd = int(att.num_attention_heads), int(att.head_dim)
        scale = getattr(att, "scaling", None) or hd**-0.5
        return att.q_proj, att.k_proj, att.v_proj, att.o_proj, heads, hd, scale
    s, o = getattr(att, "attention", None), getattr(att, "output", None)  # transformers 4
    if s is not None and o is not None and hasattr(s, "query"):
        heads, hd = int(s.num_attention_heads), int(s.attention_head_size)
        scale = getattr(s, "scaling", None) or hd**-0.5
        return s.query, s.key, s.value, nn.Sequential(o.dense, o.dropout), heads, hd, scale
    raise TypeError(f"patch: unsupported attention layout {type(att).__name__}")


def check(model: nn.Module) -> None:
    kind = hf_kind(type(model))
    for i, layer in enumerate(layers(base_model(model, kind))):
        if not (hasattr(layer, "layernorm_before") or hasattr(layer, "layer_scale1")):
            raise TypeError(f"patch: layer {i} ({type(layer).__name__}) is neither a ViT nor a DINOv2 layer")
        _attention_parts(layer.attention)


def _attention(att: nn.Module, h: Tensor, qs: Sequence[float]) -> Tuple[Tensor, Tensor]:
    qp, kp, vp, op, heads, hd, scale = _attention_parts(att)
    b, n, _ = h.shape
    q, k, v = (p(h).view(b, n, heads, hd).transpose(1, 2) for p in (qp, kp, vp))
    out, ent = attention_entropy(q, k, v, qs, scale)
    return op(out.transpose(1, 2).reshape(b, n, heads * hd)), ent


def block_entropy(layer: nn.Module, x: Tensor, qs: Sequence[float]) -> Tuple[Tensor, Tensor]:
    """The layer's forward with its attention from ``lvtp.attention_entropy``."""
    if hasattr(layer, "layernorm_before"):  # ViT
        y, ent = _attention(layer.attention, layer.layernorm_before(x), qs)
        if hasattr(layer, "mlp"):  # transformers 5
            drop = layer.dropout
            x = x + drop(y)
            x = x + drop(layer.mlp(layer.layernorm_after(x)))
        else:  # transformers 4: ViTOutput adds the residual
            x = x + y
            x = layer.output(layer.intermediate(layer.layernorm_after(x)), x)
        return x, ent
    y, ent = _attention(layer.attention, layer.norm1(x), qs)  # DINOv2
    x = layer.drop_path(layer.layer_scale1(y)) + x
    x = layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x)))) + x
    return x, ent


def _run_layer(layer: nn.Module, x: Tensor) -> Tensor:
    out = layer(x)
    return out[0] if isinstance(out, tuple) else out


def _unsupported(msg: str) -> ValueError:
    return ValueError(f"an LVTP-patched transformers model {msg}")


class _HFLVTPMixin(_LVTPMixin):
    """Overrides ``forward`` of the supported transformers classes with the pruning."""

    _lvtp_hf_kind: str

    def forward(self, pixel_values: Optional[Tensor] = None, *args, **kwargs):
        st = self._lvtp
        if not st.stages:
            return super().forward(pixel_values, *args, **kwargs)
        if args:
            raise _unsupported("takes its options by keyword (pixel_values may be positional)")
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        cfg = self.config
        if kwargs.get("output_attentions") or getattr(cfg, "output_attentions", False):
            raise _unsupported("never materialises attention maps: output_attentions=True is not supported")
        if kwargs.get("output_hidden_states") or getattr(cfg, "output_hidden_states", False):
            raise _unsupported("does not return per-layer hidden states (pruned layers see fewer tokens)")
        for key, value in kwargs.items():
            if key not in _KNOWN and value is not None and value is not False:
                raise _unsupported(f"does not support {key}=")
        kind = self._lvtp_hf_kind
        base = base_model(self, kind)
        seq = _features(base, kind, st, pixel_values, kwargs.get("bool_masked_pos"), kwargs.get("interpolate_pos_encoding"))
        from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

        if kind in ("ViTModel", "Dinov2Model"):
            if kwargs.get("labels") is not None:
                raise _unsupported(f"{kind} takes no labels")
            if kind == "ViTModel":
                pooled = self.pooler(seq) if getattr(self, "pooler", None) is not None else None
            else:
                pooled = seq[:, 0, :]
            out = BaseModelOutputWithPooling(last_hidden_state=seq, pooler_output=pooled)
        else:
            if kind == "ViTForImageClassification":
                logits = self.classifier(seq[:, 0, :])
            else:
                logits = self.classifier(torch.cat([seq[:, 0], seq[:, 1:].mean(dim=1)], dim=1))
            labels = kwargs.get("labels")
            loss = None
            if labels is not None:
                loss = self.loss_function(labels, logits, self.config)
            out = ImageClassifierOutput(loss=loss, logits=logits)
        if kwargs.get("return_dict") is False:
            return out.to_tuple()
        return out


def _features(base: nn.Module, kind: str, st, pixel_values: Tensor, bool_masked_pos, interpolate_pos_encoding) -> Tensor:
    """Embeddings, the pruned layers and the final layernorm: (B, 1 + patches, C)."""
    emb = base.embeddings
    dtype = emb.patch_embeddings.projection.weight.dtype
    if pixel_values.dtype != dtype:
        pixel_values = pixel_values.to(dtype)
    if kind.startswith("ViT"):
        x = emb(pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=bool(interpolate_pos_encoding))
    else:
        x = emb(pixel_values, bool_masked_pos=bool_masked_pos)
    warn_if_grad(x)
    with torch.no_grad(), trusted_inputs():  # the lvtp ops take no gradients
        x = pruned_blocks(
            st, list(layers(base)), x, pixel_values, single_patch_size(pair(base.config.patch_size)), 1,
            block_entropy, _run_layer,
        )
    return base.layernorm(x)


_PATCHED: Dict[type, type] = {}


class HFViT:
    """The transformers ViT / DINOv2 family (see the module docstring)."""

    name = "transformers ViTModel / ViTForImageClassification / Dinov2Model / Dinov2ForImageClassification"

    @staticmethod
    def depth(model: nn.Module) -> int:
        check(model)
        return len(layers(base_model(model, hf_kind(type(model)))))

    @staticmethod
    def vit_shape(model: nn.Module, img_size: Optional[Tuple[int, int]] = None, **cost_options) -> ViTShape:
        """The cost model on images of ``img_size`` (default ``config.image_size``). The
        patch embedding, the pooler and the classifier (one token) are fixed costs
        (``stem_flops``); the MLP ratio is read off the layer's linear layers (so a SwiGLU
        MLP is costed by its three projections)."""
        check(model)
        kind = hf_kind(type(model))
        base = base_model(model, kind)
        cfg = base.config
        h, w = pair(img_size if img_size is not None else cfg.image_size)
        ph, pw = pair(cfg.patch_size)
        dim, heads, chans = int(cfg.hidden_size), int(cfg.num_attention_heads), int(cfg.num_channels)
        num_patches = (h // ph) * (w // pw)
        layer = layers(base)[0]
        attn_lin = {id(m) for m in layer.attention.modules() if isinstance(m, nn.Linear)}
        mlp_macs = sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, nn.Linear) and id(m) not in attn_lin)
        fixed = linear_flops(getattr(getattr(base, "pooler", None), "dense", None)) + linear_flops(getattr(model, "classifier", None))
        return ViTShape(
            depth=len(layers(base)),
            embed_dim=dim,
            num_heads=heads,
            num_patches=num_patches,
            mlp_ratio=mlp_macs / (2.0 * dim * dim),
            num_protected=1,
            patch_size=ph,
            in_chans=chans,
            num_classes=0,
            image_hw=(h, w),
            stem_flops=2.0 * num_patches * dim * chans * ph * pw + fixed,
            **cost_options,
        )

    @staticmethod
    def patched_class(cls: type) -> type:
        patched = make_patched_class(cls, _HFLVTPMixin, __name__, _PATCHED)
        patched._lvtp_hf_kind = hf_kind(cls)
        return patched
