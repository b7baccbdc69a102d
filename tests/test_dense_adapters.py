"""Dense-prediction use of patched timm and Hugging Face ViTs (lvtp_kernels.adapters).

timm ``forward_intermediates``; transformers ``output_hidden_states``, the DINOv2 backbones
(``feature_maps`` for ``out_features``) and the DPT / UperNet heads built on them; saving,
``state_dict``, pickling and ``unpatch`` of patched models. Tiny randomly initialised
models keep every test to a few seconds on a CPU.

The timm tests (``-k timm``) need the second venv, as in tests/test_adapters.py:
``LVTP_DISABLE_EXT=1 LVTP_REQUIRE_TIMM=1 PYTHONPATH=$PWD .venv-timm/bin/python -m pytest
tests/test_dense_adapters.py -k timm``; in the main venv they skip (LVTP_REQUIRE_TIMM=1
turns the skip into a failure).
"""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import lvtp_kernels
from lvtp_kernels.models.patching import is_patched, reconstruct


# ----------------------------------------------------------------------------- helpers
def _timm_vit():
    try:
        from timm.models import vision_transformer
    except Exception as exc:  # ImportError, or torchvision failing to load its ops
        if os.environ.get("LVTP_REQUIRE_TIMM") == "1":
            raise
        pytest.skip(f"timm does not import here: {type(exc).__name__}: {exc}")
    return vision_transformer


def _tr():
    return pytest.importorskip("transformers", reason="transformers is not installed")


IMG = (32, 48)  # 4 x 6 = 24 patches of 8 x 8


def images(batch=2, size=IMG, seed=0):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def seeded(fn):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return fn().eval()


def timm_model(depth=6, **kw):
    vt = _timm_vit()
    return seeded(lambda: vt.VisionTransformer(
        img_size=IMG, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=5, **kw
    ))


TIMM_VARIANTS = {"cls": {}, "reg_tokens": dict(reg_tokens=2), "avg_no_cls": dict(class_token=False, global_pool="avg")}


def dinov2_config(depth=4, registers=0, **kw):
    tr = _tr()
    common = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=depth, num_attention_heads=2,
                  mlp_ratio=2, layerscale_value=0.5, num_labels=3, **kw)
    if registers:
        return tr.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
    return tr.Dinov2Config(**common)


def hf_model(kind, depth=4, **kw):
    tr = _tr()
    if kind.startswith("ViT"):
        cfg = tr.ViTConfig(image_size=list(IMG), patch_size=8, hidden_size=32, num_hidden_layers=depth, num_attention_heads=2,
                           intermediate_size=64, num_labels=3, **kw)
    else:
        cfg = dinov2_config(depth, registers=2 if "WithRegisters" in kind else 0, **kw)
    return seeded(lambda: getattr(tr, kind)(cfg))


def dpt_model(depth=4):
    tr = _tr()
    backbone = dinov2_config(depth, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = tr.DPTConfig(backbone_config=backbone, hidden_size=32, neck_hidden_sizes=[16, 16, 16, 16],
                       fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], head_hidden_size=8)
    return seeded(lambda: tr.DPTForDepthEstimation(cfg))


def upernet_model(depth=4):
    tr = _tr()
    cfg = tr.UperNetConfig(backbone_config=dinov2_config(depth, out_indices=[1, 2, 3, 4]), hidden_size=16,
                           auxiliary_in_channels=32, auxiliary_channels=16, num_labels=3, pool_scales=[1, 2])
    return seeded(lambda: tr.UperNetForSemanticSegmentation(cfg))


def assert_same(a, b, exact=True):
    """Equal nested outputs (tensors, tuples / lists, dicts, None)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k], exact)
    elif isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y, exact)
    elif a is None:
        assert b is None
    elif exact:
        assert torch.equal(a, b)
    else:
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def shapes(a):
    if isinstance(a, dict):
        return {k: shapes(v) for k, v in a.items()}
    if isinstance(a, (tuple, list)):
        return [shapes(v) for v in a]
    return None if a is None else tuple(a.shape)


def capture_block_outputs(blocks):
    """Forward hooks on ``blocks`` (a block that runs its own forward: not a stage);
    returns {block index: its (active-token) output} of the last forward."""
    got, handles = {}, []
    for i, blk in enumerate(blocks):
        handles.append(blk.register_forward_hook(lambda m, a, out, i=i: got.__setitem__(i, out[0] if isinstance(out, tuple) else out)))
    return got, handles


def rule(x_active, records, layer, st):
    """The documented rule for layer ``layer``: the stages up to it, rebuilt from its active tokens."""
    return reconstruct(x_active, [r for r in records if r.layer <= layer], st.reconstruct, st.clusters)


# ----------------------------------------------------------------------------- timm
INTERMEDIATE_CALLS = [
    dict(),
    dict(indices=2),
    dict(indices=[0, -1, 3, 3], output_fmt="NLC"),
    dict(indices=[1, 4], norm=True, return_prefix_tokens=True),
    dict(indices=[2], stop_early=True),
    dict(indices=[1, 3], stop_early=True, intermediates_only=True, output_fmt="NLC", norm=True),
    dict(indices=3, output_dict=True, return_prefix_tokens=True),
]


@pytest.mark.parametrize("variant", list(TIMM_VARIANTS))
def test_timm_forward_intermediates_keep_one_is_unpatched(variant):
    model = timm_model(**TIMM_VARIANTS[variant])
    x = images()
    with torch.no_grad():
        before = [model.forward_intermediates(x, **kw) for kw in INTERMEDIATE_CALLS]
        lvtp_kernels.patch(model, schedule=[(1, 1.0), (3, 1.0)])
        after = [model.forward_intermediates(x, **kw) for kw in INTERMEDIATE_CALLS]
    assert is_patched(model)
    for a, b in zip(before, after):
        assert_same(a, b)


@pytest.mark.parametrize("variant", list(TIMM_VARIANTS))
def test_timm_forward_intermediates_pruned_shapes_and_final_layer(variant):
    model = timm_model(**TIMM_VARIANTS[variant])
    x = images()
    p = int(model.num_prefix_tokens)
    with torch.no_grad():
        before = [model.forward_intermediates(x, **kw) for kw in INTERMEDIATE_CALLS]
        lvtp_kernels.patch(model, flops_reduction=0.3, keep_records=True)
        after = [model.forward_intermediates(x, **kw) for kw in INTERMEDIATE_CALLS]
        assert len(lvtp_kernels.last_records(model)) >= 2  # it does prune
        assert [shapes(a) for a in after] == [shapes(b) for b in before]
        features = model.forward_features(x)
        # intermediates_only=False: the final features are forward_features'
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, features) and len(inter) == 6
        assert torch.equal(model.forward_intermediates(x, output_dict=True)["image_features"], features)
        # the last layer: forward_features' reconstruction, after norm with norm=True, before it without
        last = model.forward_intermediates(x, indices=[-1], norm=True, output_fmt="NLC", intermediates_only=True,
                                           return_prefix_tokens=True)[0]
        tokens = torch.cat([last[1], last[0]], dim=1) if p else last
        assert torch.equal(tokens, features)
        norm, model.norm = model.norm, torch.nn.Identity()
        try:
            unnormed = model.forward_features(x)
        finally:
            model.norm = norm
        last = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True)[0]
        tokens = torch.cat([last[1], last[0]], dim=1) if p else last
        assert torch.equal(tokens, unnormed)
        assert isinstance(norm, torch.nn.Identity) or not torch.equal(unnormed, features)  # avg pool: fc_norm instead
        # NCHW is the NLC map reshaped, patch tokens only
        nchw = model.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
        nlc = model.forward_intermediates(x, indices=[2], intermediates_only=True, output_fmt="NLC")[0]
        assert nchw.shape == (2, 32, 4, 6) and torch.equal(nchw.flatten(2).transpose(1, 2), nlc)
    assert not torch.equal(after[0][0], before[0][0])  # pruning changed the features


@pytest.mark.parametrize("mode", ["nearest", "residual", "frozen"])
def test_timm_intermediate_layers_follow_the_documented_rule(mode):
    model = timm_model()
    x = images()
    with torch.no_grad():
        ref = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True)
        lvtp_kernels.patch(model, schedule=[(1, 0.5), (3, 0.6)], reconstruct=mode, keep_records=True)
        got, handles = capture_block_outputs(model.blocks)
        try:
            inter = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True)
        finally:
            for h in handles:
                h.remove()
    recs, st = lvtp_kernels.last_records(model), model._lvtp
    full = [torch.cat([pre, sp], dim=1) for sp, pre in inter]
    unpatched = [torch.cat([pre, sp], dim=1) for sp, pre in ref]
    assert sorted(got) == [0, 2, 4, 5]  # the stage blocks run the entropy path instead
    assert torch.equal(full[0], unpatched[0])  # before the first stage: the block's own output
    torch.testing.assert_close(full[1], unpatched[1], rtol=1e-5, atol=1e-5)  # stage 1 prunes after its block
    assert torch.equal(full[1], recs[0].x_at_stage)
    for layer in (2, 4, 5):  # rebuilt from the layer's active tokens by the stages up to it
        assert got[layer].shape[1] < 25
        assert torch.equal(full[layer], rule(got[layer], recs, layer, st))
    pruned_at_1 = recs[0].prune_idx[0]
    frozen = torch.equal(full[4][0, pruned_at_1], recs[0].x_at_stage[0, pruned_at_1])
    assert frozen == (mode == "frozen")  # "nearest" / "residual" carry the kept tokens' residuals


def test_timm_stop_early_runs_no_later_block():
    model = timm_model(reg_tokens=1)
    x = images()
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (4, 0.5)], keep_records=True)
    got, handles = capture_block_outputs(model.blocks)
    try:
        with torch.no_grad():
            final, inter = model.forward_intermediates(x, indices=[0, 2], stop_early=True, output_fmt="NLC",
                                                       return_prefix_tokens=True)
    finally:
        for h in handles:
            h.remove()
    assert sorted(got) == [0, 2]  # blocks 3, 4, 5 never ran
    assert [r.layer for r in lvtp_kernels.last_records(model)] == [1]
    assert final.shape == (2, 26, 32) and [t[0].shape for t in inter] == [(2, 24, 32)] * 2
    sp, pre = inter[1]
    assert torch.equal(final, model.norm(torch.cat([pre, sp], dim=1)))  # timm: norm of the last block run


def test_timm_forward_intermediates_rejects_masks_when_pruning():
    model = timm_model(depth=3)
    lvtp_kernels.patch(model, schedule=[(1, 0.5)])
    with pytest.raises(ValueError, match=r"got \['attn_mask'\]"):
        model.forward_intermediates(images(), attn_mask=torch.ones(2, 1, 25, 25, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got \['is_causal'\]"):
        model.forward_intermediates(images(), is_causal=True)
    with pytest.raises(AssertionError, match="NCHW or NLC"):
        model.forward_intermediates(images(), output_fmt="NHWC")


def test_timm_features_only_wrapper_patches_through_its_model():
    _timm_vit()
    import timm

    net = seeded(lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, features_only=True, out_indices=(1, 3),
                                           img_size=IMG, patch_size=8, embed_dim=32, depth=4, num_heads=2))
    x = images()
    with torch.no_grad():
        before = net(x)
        with pytest.raises(TypeError, match=r"patch\(model\.model"):
            lvtp_kernels.patch(net, flops_reduction=0.3)
        lvtp_kernels.patch(net.model, schedule=[(0, 0.5), (2, 0.5)])
        after = net(x)
    assert shapes(after) == shapes(before) == [(2, 32, 4, 6)] * 2
    assert not torch.equal(after[1], before[1])


def test_timm_state_dict_pickle_deepcopy_and_unpatch(tmp_path):
    model = timm_model(reg_tokens=1)
    x = images()
    with torch.no_grad():
        never = model.forward_intermediates(x)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (3, 0.5)])
    after = model.state_dict()
    assert list(after) == list(sd) and all(torch.equal(after[k], v) for k, v in sd.items())
    with torch.no_grad():
        pruned = model.forward_intermediates(x)
    clone = copy.deepcopy(model)
    assert is_patched(clone) and clone._lvtp.stages == {1: 0.5, 3: 0.5} and clone._lvtp is not model._lvtp
    with torch.no_grad():
        assert_same(clone.forward_intermediates(x), pruned)
    torch.save(model, tmp_path / "m.pt")
    with torch.no_grad():
        torch.save({"x": x, "want": model.forward_features(x)}, tmp_path / "io.pt")
    _load_in_fresh_process(tmp_path, "forward_features(io['x'])")
    lvtp_kernels.unpatch(model)
    with torch.no_grad():
        assert_same(model.forward_intermediates(x), never)


def _load_in_fresh_process(tmp_path, call):
    code = (
        "import sys, torch, lvtp_kernels\n"
        "from lvtp_kernels.models.patching import is_patched\n"
        f"m = torch.load({str(tmp_path / 'm.pt')!r}, weights_only=False)\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=False)\n"
        "assert any(is_patched(s) for s in m.modules()), type(m)\n"
        "with torch.no_grad():\n"
        f"    got = m.{call}\n"
        "got = getattr(got, 'last_hidden_state', getattr(got, 'predicted_depth', got))\n"
        "assert torch.equal(got, io['want']), (got - io['want']).abs().max()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=180)


# ----------------------------------------------------------------------------- transformers
HF_KINDS = ["ViTModel", "Dinov2Model", "Dinov2WithRegistersModel", "Dinov2Backbone", "Dinov2WithRegistersBackbone"]


def hf_run(model, x, **kw):
    with torch.no_grad():
        return model(pixel_values=x, **kw)


@pytest.mark.parametrize("kind", HF_KINDS + ["ViTForImageClassification", "Dinov2ForImageClassification"])
def test_hf_hidden_states_keep_one_is_unpatched(kind):
    model, x = hf_model(kind), images()
    before = hf_run(model, x, output_hidden_states=True)
    lvtp_kernels.patch(model, schedule=[(1, 1.0), (2, 1.0)])
    after = hf_run(model, x, output_hidden_states=True)
    assert len(after.hidden_states) == 5
    assert_same(after.to_tuple(), before.to_tuple())


@pytest.mark.parametrize("kind", HF_KINDS + ["Dinov2WithRegistersForImageClassification"])
def test_hf_hidden_states_pruned_are_full_maps(kind):
    from lvtp_kernels.adapters import hf_vit

    model, x = hf_model(kind), images()
    before = hf_run(model, x, output_hidden_states=True)
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (2, 0.6)], keep_records=True)
    kind_ = model._lvtp_hf_kind
    base = hf_vit.base_model(model, kind_)
    got, handles = capture_block_outputs(hf_vit.layers(base))
    try:
        after = hf_run(model, x, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    recs, st = lvtp_kernels.last_records(model), model._lvtp
    p = hf_vit.num_prefix(base, kind_)
    assert (recs[0].cluster_id[0] < 0).sum() == p  # class token (and registers) protected
    assert shapes(after.to_tuple()) == shapes(before.to_tuple())
    hs, ref = after.hidden_states, before.hidden_states
    assert len(hs) == 5 and all(h.shape == (2, 24 + p, 32) for h in hs)
    assert torch.equal(hs[0], ref[0]) and torch.equal(hs[1], ref[1])  # embeddings, layer 0 (before any stage)
    assert torch.equal(hs[2], recs[0].x_at_stage)
    assert sorted(got) == [0, 3]
    assert torch.equal(hs[4], rule(got[3], recs, 3, st))  # the rule, from layer 3's active tokens
    if hasattr(after, "last_hidden_state"):
        assert torch.equal(after.last_hidden_state, base.layernorm(hs[-1]))
    assert not torch.equal(hs[-1], ref[-1])


def test_hf_hidden_states_selection_by_index():
    model, x = hf_model("Dinov2Model"), images()
    before = hf_run(model, x, output_hidden_states=[0, -2])
    lvtp_kernels.patch(model, schedule=[(0, 0.5)])
    after = hf_run(model, x, output_hidden_states=[0, -2])
    assert [h is None for h in after.hidden_states] == [h is None for h in before.hidden_states] == [False, True, True, False, True]
    assert torch.equal(after.hidden_states[0], before.hidden_states[0])
    assert after.hidden_states[3].shape == before.hidden_states[3].shape
    full = hf_run(model, x, output_hidden_states=True).hidden_states
    assert torch.equal(full[3], after.hidden_states[3])
    model.config.output_hidden_states = True  # the config default is honoured too
    assert len(hf_run(model, x).hidden_states) == 5


@pytest.mark.parametrize("kind", ["Dinov2Backbone", "Dinov2WithRegistersBackbone"])
@pytest.mark.parametrize("reshape", [True, False])
def test_hf_backbone_feature_maps(kind, reshape):
    model = hf_model(kind, out_features=["stem", "stage2", "stage4"], reshape_hidden_states=reshape)
    x = images()
    before = hf_run(model, x)
    p = 1 + (2 if "WithRegisters" in kind else 0)
    want = [(2, 32, 4, 6)] * 3 if reshape else [(2, 24 + p, 32)] * 3
    assert shapes(before.feature_maps) == want and before.hidden_states is None
    lvtp_kernels.patch(model, schedule=[(3, 0.5)])  # pruning only after the last block: every map as unpatched
    last_only = hf_run(model, x)
    assert last_only.hidden_states is None
    assert_same(last_only.feature_maps, before.feature_maps, exact=False)
    assert torch.equal(last_only.feature_maps[0], before.feature_maps[0])  # the stem, untouched
    lvtp_kernels.patch(model, flops_reduction=0.3)
    pruned = hf_run(model, x, output_hidden_states=True)
    assert shapes(pruned.feature_maps) == want and len(pruned.hidden_states) == 5
    h = model.layernorm(pruned.hidden_states[2])
    if reshape:
        h = h[:, p:].reshape(2, 4, 6, 32).permute(0, 3, 1, 2)
    assert torch.equal(pruned.feature_maps[1], h)
    assert not torch.equal(pruned.feature_maps[2], before.feature_maps[2])
    as_tuple = hf_run(model, x, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and len(as_tuple[0]) == 3
    with pytest.raises(ValueError, match="bool_masked_pos"):
        hf_run(model, x, bool_masked_pos=torch.zeros(2, 24, dtype=torch.bool))


@pytest.mark.parametrize("head", ["dpt", "upernet"])
def test_hf_dense_heads_on_a_patched_backbone(head):
    model, x = (dpt_model() if head == "dpt" else upernet_model()), images()
    out = (lambda o: o.predicted_depth) if head == "dpt" else (lambda o: o.logits)
    before = out(hf_run(model, x))
    with pytest.raises(TypeError, match=r"patch\(model\.backbone"):
        lvtp_kernels.patch(model, flops_reduction=0.3)
    assert not is_patched(model) and not is_patched(model.backbone)
    lvtp_kernels.patch(model.backbone, schedule=[(1, 1.0), (2, 1.0)])
    assert torch.equal(out(hf_run(model, x)), before)
    lvtp_kernels.patch(model.backbone, flops_reduction=0.3, keep_records=True)
    pruned = out(hf_run(model, x))
    assert len(lvtp_kernels.last_records(model.backbone)) >= 2
    assert pruned.shape == before.shape and torch.isfinite(pruned).all() and not torch.equal(pruned, before)
    lvtp_kernels.unpatch(model.backbone)
    assert torch.equal(out(hf_run(model, x)), before)


@pytest.mark.parametrize("kind", ["ViTForImageClassification", "Dinov2Backbone", "dpt"])
def test_hf_save_pretrained_writes_the_unpatched_model(kind, tmp_path):
    tr = _tr()
    model = dpt_model() if kind == "dpt" else hf_model(kind)
    target = model.backbone if kind == "dpt" else model
    cls, x = type(target), images()
    outer_cls = type(model)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    unpatched = hf_run(model, x).to_tuple()
    lvtp_kernels.patch(target, schedule=[(1, 0.5), (2, 0.5)])
    pruned = hf_run(model, x).to_tuple()
    after = model.state_dict()
    assert list(after) == list(sd) and all(torch.equal(after[k], v) for k, v in sd.items())
    model.save_pretrained(tmp_path)
    assert is_patched(target) and type(target) is not cls  # still patched, still prunes
    assert_same(hf_run(model, x).to_tuple(), pruned)
    arch = json.loads((tmp_path / "config.json").read_text())["architectures"]
    assert arch == [outer_cls.__name__] and model.config.architectures == [outer_cls.__name__]
    loaded = getattr(tr, outer_cls.__name__).from_pretrained(tmp_path).eval()
    assert type(loaded) is outer_cls and not any(is_patched(m) for m in loaded.modules())
    loaded_sd = loaded.state_dict()
    assert list(loaded_sd) == list(sd) and all(torch.equal(loaded_sd[k], v) for k, v in sd.items())
    assert_same(hf_run(loaded, x).to_tuple(), unpatched)


@pytest.mark.parametrize("kind", ["Dinov2Backbone", "dpt"])
def test_hf_pickle_deepcopy_and_unpatch(kind, tmp_path):
    model = dpt_model() if kind == "dpt" else hf_model(kind)
    target = model.backbone if kind == "dpt" else model
    x = images()
    never = hf_run(model, x, output_hidden_states=True).to_tuple()
    lvtp_kernels.patch(target, schedule=[(1, 0.5), (2, 0.5)])
    pruned = hf_run(model, x, output_hidden_states=True).to_tuple()
    clone = copy.deepcopy(model)
    clone_target = clone.backbone if kind == "dpt" else clone
    assert is_patched(clone_target) and clone_target._lvtp.stages == {1: 0.5, 2: 0.5}
    assert_same(hf_run(clone, x, output_hidden_states=True).to_tuple(), pruned)
    lvtp_kernels.patch(clone_target, schedule=[(0, 0.3)])
    assert target._lvtp.stages == {1: 0.5, 2: 0.5}  # the copy's state is its own
    torch.save(model, tmp_path / "m.pt")
    want = pruned[0] if kind == "dpt" else hf_run(model, x).feature_maps[-1]
    torch.save({"x": x, "want": want}, tmp_path / "io.pt")
    call = "__call__(pixel_values=io['x'])" if kind == "dpt" else "__call__(pixel_values=io['x']).feature_maps[-1]"
    _load_in_fresh_process(tmp_path, call)
    lvtp_kernels.unpatch(target)
    assert not is_patched(target)
    assert_same(hf_run(model, x, output_hidden_states=True).to_tuple(), never)


def test_hf_registers_classifier_and_flops():
    from lvtp_kernels.flops import count_flops, vit_flops
    from lvtp_kernels.models.patching import cost_shape

    model, x = hf_model("Dinov2WithRegistersForImageClassification"), images(2, (32, 32))
    with torch.no_grad():
        base_flops = count_flops(model, x[:1])
    assert abs(vit_flops(cost_shape(model)) - base_flops) / base_flops < 0.01
    assert cost_shape(model).num_protected == 3
    before = hf_run(model, x).logits
    lvtp_kernels.patch(model, flops_reduction=0.3)
    out = hf_run(model, x, labels=torch.tensor([0, 2]))
    assert out.logits.shape == before.shape and out.loss.ndim == 0 and torch.isfinite(out.loss)
    with torch.no_grad():
        assert count_flops(model, x[:1]) < 0.8 * base_flops
