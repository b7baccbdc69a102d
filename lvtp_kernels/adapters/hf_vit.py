"""LVTP for Hugging Face transformers ``ViTModel``, ``ViTForImageClassification``,
``Dinov2Model``, ``Dinov2ForImageClassification``, ``Dinov2Backbone`` and the DINOv2 with
registers ``Dinov2WithRegistersModel`` / ``Dinov2WithRegistersForImageClassification`` /
``Dinov2WithRegistersBackbone`` (eager and SDPA attention, i.e. any
``config._attn_implementation``: blocks that are not a stage run their own forward).

The patched class overrides ``forward``. With active stages it runs the embeddings (the
model's own, position-embedding interpolation and ``bool_masked_pos`` included), the
layers with pruning at the stages (a stage layer's attention comes from
``torch.ops.lvtp.attention_entropy``, with DINOv2's layer scale and drop path), rebuilds
the full token map (spec step 7) and applies the final ``layernorm`` and the model's own
pooling / classifier / feature maps, so

* ``last_hidden_state`` is (B, P + patches, C) as unpatched, ``pooler_output`` and
  ``logits`` keep their shapes; ``labels=`` gives ``loss`` through ``self.loss_function``;
* ``output_hidden_states=True`` (or an index / a list of indices, as transformers 5
  selects them; or ``config.output_hidden_states``) returns ``hidden_states`` as
  unpatched: the embedding output and the output of every layer (unnormalised), each a
  full token map. The rule for layer ``L`` (shared with timm's ``forward_intermediates``):
  the tokens active after layer ``L`` (after its pruning when ``L`` is a stage) go through
  the reconstruction of every stage at or before ``L``, last first; stages after ``L`` do
  not apply. Layers before the first stage are their own outputs; ``hidden_states[-1]``
  is exactly the map ``last_hidden_state`` is the ``layernorm`` of;
* backbones (``Dinov2Backbone``, ``Dinov2WithRegistersBackbone``: what DPT
  (``DPTForDepthEstimation``), UperNet and Mask2Former-style heads load) return
  ``feature_maps`` for ``out_features`` / ``out_indices`` from those full token maps
  (``apply_layernorm`` and ``reshape_hidden_states`` as the backbone applies them):
  (B, C, H/p, W/p) maps or (B, P + patches, C) tokens, the unpatched shapes;
* a dense model that holds a supported backbone is patched through it:
  ``lvtp_kernels.patch(model.backbone, ...)`` (``patch(model)`` on the outer model raises
  a TypeError that names the backbone);
* ``output_attentions=True`` raises a ValueError (attention maps are never
  materialised); so do ``attention_mask`` / ``head_mask``; options go by keyword;
* protected tokens: the class token (and DINOv2's register tokens);
* edge term: the Sobel energy of ``pixel_values``, i.e. the *normalised* image the image
  processor gives; skipped when it is not 3-channel or the patch is not square;
* ``save_pretrained`` writes what the unpatched model would (the original class name in
  ``config.architectures``; the same weights), ``state_dict`` is unchanged, and the
  model pickles (``torch.save`` of the whole model, ``copy.deepcopy``) as a patched model.

Layouts: transformers 5 (``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``ViTModel.layers``)
is tested; the transformers 4 layout (``attention.attention.query``...,
``encoder.layer``, ``intermediate``/``output``) is recognised as well.
"""

from __future__ import annotations

from typing import Collection, Dict, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, nn

from python_ref.flops import ViTShape

from ..models.engine import warn_if_grad
from ..registry import trusted_inputs
from ._classes import hf_kind
from ._common import (
    AdapterMixin, attention_entropy, linear_flops, make_patched_class, pair, pruned_blocks,
    single_patch_size,
)

# per supported class: the submodule holding its ViT / DINOv2 base model, and its head
KINDS: Dict[str, Tuple[Optional[str], str]] = {
    "ViTModel": (None, "model"),
    "ViTForImageClassification": ("vit", "vit_classifier"),
    "Dinov2Model": (None, "model"),
    "Dinov2ForImageClassification": ("dinov2", "dinov2_classifier"),
    "Dinov2Backbone": (None, "backbone"),
    "Dinov2WithRegistersModel": (None, "model"),
    "Dinov2WithRegistersForImageClassification": ("dinov2_with_registers", "dinov2_classifier"),
    "Dinov2WithRegistersBackbone": (None, "backbone"),
}
BASE_ATTR = {kind: attr for kind, (attr, _) in KINDS.items()}
# keyword options the pruned forward understands; others must be None / False
_KNOWN = ("bool_masked_pos", "interpolate_pos_encoding", "labels", "return_dict", "output_hidden_states", "output_attentions")
_NOT_FOR_BACKBONES = ("bool_masked_pos", "interpolate_pos_encoding", "labels")


def base_model(model: nn.Module, kind: str) -> nn.Module:
    attr = BASE_ATTR[kind]
    return model if attr is None else getattr(model, attr)


def num_prefix(base: nn.Module, kind: str) -> int:
    """Protected tokens: the class token, and the register tokens of DINOv2 with registers."""
    if kind.startswith("Dinov2WithRegisters"):
        return 1 + int(getattr(base.config, "num_register_tokens", 0) or 0)
    return 1


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


def _is_set(value) -> bool:
    return value is not None and value is not False


def hidden_selection(value, n: int) -> Optional[Set[int]]:
    """The hidden-state indices (of ``n``) that ``output_hidden_states=value`` asks for:
    None when it is unset / False, all for True, else an index or a list of indices
    (negative from the end; out of range selects nothing), as transformers 5 reads it."""
    if value is None or value is False:
        return None
    if value is True:
        return set(range(n))
    items = [value] if isinstance(value, int) else value
    try:
        idx = [int(i) for i in items]
    except (TypeError, ValueError):
        raise _unsupported(f"takes output_hidden_states as a bool, an int or a list of ints, got {value!r}") from None
    return {i % n for i in idx if -n <= i < n}


def _option(kwargs: Dict[str, object], cfg, name: str):
    value = kwargs.get(name)
    return getattr(cfg, name, None) if value is None else value


class _HFLVTPMixin(AdapterMixin):
    """Overrides ``forward`` of the supported transformers classes with the pruning, and
    ``save_pretrained`` so that it saves what the unpatched model would."""

    _lvtp_hf_kind: str

    def _lvtp_pickle_state(self) -> dict:
        """The module state without transformers 5's output-capturing hooks (local
        functions pickle cannot store; transformers installs them again when a forward
        asks for hidden states), so a patched model pickles even after such a forward."""
        if not any(_capture_hooks(m) for m in self.modules()):
            return self.__getstate__()
        return _without_capture_hooks(self, {}).__dict__

    def save_pretrained(self, *args, **kwargs):
        """The original class's ``save_pretrained``, run as the original class (so
        ``config.architectures`` names it, and a load gives an unpatched model)."""
        patched = type(self)
        self.__class__ = patched._lvtp_original_class
        try:
            return self.save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = patched

    def forward(self, pixel_values: Optional[Tensor] = None, *args, **kwargs):
        st = self._lvtp
        if not st.stages:
            return super().forward(pixel_values, *args, **kwargs)
        if args:
            raise _unsupported("takes its options by keyword (pixel_values may be positional)")
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        cfg = self.config
        if _option(kwargs, cfg, "output_attentions"):
            raise _unsupported("never materialises attention maps: output_attentions=True is not supported")
        for key, value in kwargs.items():
            if key not in _KNOWN and _is_set(value):
                raise _unsupported(f"does not support {key}=")
        kind = self._lvtp_hf_kind
        head = KINDS[kind][1]
        if head == "backbone":
            for key in _NOT_FOR_BACKBONES:
                if _is_set(kwargs.get(key)):
                    raise _unsupported(f"backbone ({kind}) takes no {key}=")
        elif head == "model" and kwargs.get("labels") is not None:
            raise _unsupported(f"{kind} takes no labels")
        base = base_model(self, kind)
        p = num_prefix(base, kind)
        n_states = len(layers(base)) + 1  # the embedding output, then every layer's
        selected = hidden_selection(_option(kwargs, cfg, "output_hidden_states"), n_states)
        need = set(selected or ())
        if head == "backbone":
            feature_idx = [i for i, stage in enumerate(self.stage_names) if stage in self.out_features]
            need |= set(feature_idx)
        emb, final, inter = _features(
            base, kind, st, pixel_values, kwargs.get("bool_masked_pos"), kwargs.get("interpolate_pos_encoding"),
            {i - 1 for i in need if i >= 1}, p,
        )
        states = {0: emb, **{i + 1: t for i, t in inter.items()}}
        hidden_states = None if selected is None else tuple(states[i] if i in selected else None for i in range(n_states))
        if head == "backbone":
            out = self._lvtp_backbone_output(base, pixel_values, states, feature_idx, hidden_states, p)
        else:
            out = _head_output(self, kind, head, base.layernorm(final), hidden_states, kwargs.get("labels"), p)
        if _option(kwargs, cfg, "return_dict") is False:
            return out.to_tuple()
        return out

    def _lvtp_backbone_output(self, base, pixel_values, states, feature_idx, hidden_states, p):
        """``feature_maps`` as the DINOv2 backbones build them from their hidden states."""
        from transformers.modeling_outputs import BackboneOutput

        cfg = self.config
        maps = []
        for i in feature_idx:
            h = states[i]
            if getattr(cfg, "apply_layernorm", True):
                h = base.layernorm(h)
            if getattr(cfg, "reshape_hidden_states", True):
                h = h[:, p:]
                b, _, height, width = pixel_values.shape
                ph, pw = pair(base.embeddings.patch_embeddings.patch_size)
                # (height // ph, width // pw) as transformers reshapes it
                h = h.reshape(b, height // ph, width // pw, -1).permute(0, 3, 1, 2).contiguous()
            maps.append(h)
        return BackboneOutput(feature_maps=tuple(maps), hidden_states=hidden_states)


def _head_output(model: nn.Module, kind: str, head: str, seq: Tensor, hidden_states, labels, p: int):
    from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

    if head == "model":
        if kind == "ViTModel":
            pooled = model.pooler(seq) if getattr(model, "pooler", None) is not None else None
        else:
            pooled = seq[:, 0, :]
        return BaseModelOutputWithPooling(last_hidden_state=seq, pooler_output=pooled, hidden_states=hidden_states)
    if head == "vit_classifier":
        logits = model.classifier(seq[:, 0, :])
    else:  # DINOv2: class token and the mean of the patch tokens (registers excluded)
        logits = model.classifier(torch.cat([seq[:, 0], seq[:, p:].mean(dim=1)], dim=1))
    loss = model.loss_function(labels, logits, model.config) if labels is not None else None
    return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)


def _features(
    base: nn.Module, kind: str, st, pixel_values: Tensor, bool_masked_pos, interpolate_pos_encoding,
    take: Collection[int] = (), p: int = 1,
) -> Tuple[Tensor, Tensor, Dict[int, Tensor]]:
    """Embeddings and the pruned layers: the embedding output, the full token map after
    the last layer (before the final ``layernorm``) and ``{layer: full token map}`` for
    each layer in ``take``, all (B, P + patches, C)."""
    emb = base.embeddings
    dtype = emb.patch_embeddings.projection.weight.dtype
    if pixel_values.dtype != dtype:
        pixel_values = pixel_values.to(dtype)
    if kind.startswith("ViT"):
        x = emb(pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=bool(interpolate_pos_encoding))
    elif KINDS[kind][1] == "backbone":
        x = emb(pixel_values)
    else:
        x = emb(pixel_values, bool_masked_pos=bool_masked_pos)
    warn_if_grad(x)
    with torch.no_grad(), trusted_inputs():  # the lvtp ops take no gradients
        final, inter = pruned_blocks(
            st, list(layers(base)), x, pixel_values, single_patch_size(pair(base.config.patch_size)), p,
            block_entropy, _run_layer, take,
        )
    return x, final, inter


def _capture_hooks(m: nn.Module):
    """The ids of ``m``'s forward hooks that transformers' output capturing installed."""
    return [k for k, fn in m._forward_hooks.items() if "output_capturing" in (getattr(fn, "__module__", "") or "")
            and (getattr(fn, "__module__", "") or "").startswith("transformers.")]


def _without_capture_hooks(m: nn.Module, memo: Dict[int, nn.Module]) -> nn.Module:
    """A shallow copy of the module tree of ``m`` (parameters and buffers shared) without
    the output-capturing hooks, each copy marked as not hooked."""
    if id(m) in memo:
        return memo[id(m)]
    clone = object.__new__(type(m))
    memo[id(m)] = clone
    state = m.__getstate__()
    drop = set(_capture_hooks(m))
    if drop:
        for key in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            if key in state:
                state[key] = type(state[key])((k, v) for k, v in state[key].items() if k not in drop)
    state.pop("_output_capturing_hooks_installed", None)
    state["_modules"] = {n: (None if c is None else _without_capture_hooks(c, memo)) for n, c in state["_modules"].items()}
    clone.__dict__.update(state)
    return clone


def _share_output_recording(cls: type, patched: type) -> None:
    """transformers 5 looks up what a model records (``output_hidden_states``...) by its
    class name (``_CAN_RECORD_REGISTRY``, filled at ``__init__``): the patched class
    records what the original does, so an unpruned forward still returns them."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # transformers 4: no registry
        return
    dict.__setitem__(_CAN_RECORD_REGISTRY, str(patched), getattr(cls, "_can_record_outputs", None))


_PATCHED: Dict[type, type] = {}


class HFViT:
    """The transformers ViT / DINOv2 family (see the module docstring)."""

    name = "transformers ViT / DINOv2 (with registers) models, classifiers and backbones"

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
            num_protected=num_prefix(base, kind),
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
        _share_output_recording(cls, patched)
        return patched


_HFLVTPMixin._lvtp_family = HFViT  # what pickle rebuilds the patched class with
