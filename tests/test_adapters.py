"""lvtp_kernels.patch on timm and Hugging Face ViTs (lvtp_kernels.adapters).

Tiny randomly initialised models (32 wide, 8 x 8 patches) keep these CPU tests fast.
timm needs torchvision, whose PyPI wheels need a CUDA build of torch (beside the CPU torch
of the main venv, ``import torchvision`` fails: "operator torchvision::nms does not
exist"). So ``make test`` runs the timm tests a second time in ``.venv-timm``
(scripts/test_timm.sh: torch 2.14.1 + torchvision 0.29.1, CUDA builds that run on the CPU),
with LVTP_REQUIRE_TIMM=1, which turns the skip below into a failure.
"""

import os

import subprocess
import sys

import pytest
import torch

import lvtp_kernels
from lvtp_kernels.flops import count_flops, stage_token_counts, vit_flops
from lvtp_kernels.models.patching import cost_shape, is_patched


def _timm_vit():
    try:
        from timm.models import vision_transformer
    except Exception as exc:  # ImportError, or torchvision failing to load its ops
        if os.environ.get("LVTP_REQUIRE_TIMM") == "1":
            raise
        pytest.skip(
            "timm does not import here (it needs torchvision, which does not import beside the CPU torch): "
            f"{type(exc).__name__}: {exc}"
        )
    return vision_transformer


def _transformers():
    return pytest.importorskip("transformers", reason="transformers is not installed (pip install -r requirements-dev.txt)")


# ----------------------------------------------------------------------------- models
TIMM_VARIANTS = {
    "cls": dict(),
    "reg_tokens": dict(reg_tokens=2),
    "no_class_token_avg": dict(class_token=False, global_pool="avg"),
    "layerscale_no_embed_class": dict(init_values=0.1, no_embed_class=True, reg_tokens=1),
}
HF_VARIANTS = ["vit_eager", "vit_sdpa", "vit_cls_sdpa", "dinov2_eager", "dinov2_swiglu_sdpa", "dinov2_cls_eager"]
IMG = (48, 64)  # 6 x 8 = 48 patches


def timm_model(variant="cls", depth=6):
    vt = _timm_vit()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = vt.VisionTransformer(
                img_size=IMG, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=5, **TIMM_VARIANTS[variant]
            )
        except TypeError as exc:  # an older timm without this option
            pytest.skip(f"this timm has no {variant} option: {exc}")
    return model.eval()


def hf_model(variant="vit_sdpa", depth=6, size=64):
    tr = _transformers()
    family, _, impl = variant.rpartition("_")
    common = dict(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=depth, num_attention_heads=2, num_labels=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if family.startswith("vit"):
            cfg = tr.ViTConfig(intermediate_size=64, attn_implementation=impl, **common)
            cls = tr.ViTForImageClassification if family == "vit_cls" else tr.ViTModel
        else:
            cfg = tr.Dinov2Config(
                mlp_ratio=2, layerscale_value=0.5, use_swiglu_ffn="swiglu" in family, attn_implementation=impl, **common
            )
            cls = tr.Dinov2ForImageClassification if family == "dinov2_cls" else tr.Dinov2Model
        return cls(cfg).eval()


def images(batch=2, size=IMG, seed=0):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def hf_out(out):
    """The dense output of a transformers model, else its logits."""
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def run(model, x):
    """(dense or class output, dense tokens or None) of either family."""
    with torch.no_grad():
        if hasattr(model, "forward_features"):  # timm
            return model(x), model.forward_features(x)
        out = model(pixel_values=x)
        return hf_out(out), getattr(out, "last_hidden_state", None)


def both(name):
    kind, variant = name.split(":")
    if kind == "timm":
        return timm_model(variant), images(2, IMG)
    return hf_model(variant), images(2, (64, 64))


FAMILIES = [f"timm:{v}" for v in TIMM_VARIANTS] + [f"hf:{v}" for v in HF_VARIANTS]


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", FAMILIES)
def test_keep_ratio_one_is_identical(name):
    model, x = both(name)
    before = run(model, x)
    lvtp_kernels.patch(model, schedule=[(1, 1.0), (3, 1.0)])
    assert is_patched(model)
    after = run(model, x)
    assert torch.equal(before[0], after[0])
    lvtp_kernels.patch(model, flops_reduction=0.0)
    assert torch.equal(before[0], run(model, x)[0])


@pytest.mark.parametrize("name", FAMILIES)
def test_stage_block_matches_the_block(name):
    # the stage path (attention from lvtp.attention_entropy) computes what the block does
    from lvtp_kernels.adapters import hf_vit, timm_vit

    model, x = both(name)
    if name.startswith("timm"):
        blk, mod = model.blocks[1], timm_vit
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        want = blk(tokens)
    else:
        mod = hf_vit
        base = hf_vit.base_model(model, model.__class__.__name__)
        blk = hf_vit.layers(base)[1]
        tokens = base.embeddings(x)
        want = hf_vit._run_layer(blk, tokens)
    with torch.no_grad():
        got, ent = mod.block_entropy(blk, tokens, (0.5, 1.0, 2.0))
        want = want.detach()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert ent.shape == (*tokens.shape[:2], 3) and ent.dtype == torch.float32


@pytest.mark.parametrize("name", FAMILIES)
def test_thirty_percent_reduction_tokens_and_flops(name):
    model, x = both(name)
    base_out = run(model, x)
    base_flops = count_flops(model.forward_features if name.startswith("timm") else model, x[:1])
    shape0 = cost_shape(model)
    assert abs(vit_flops(shape0) - base_flops) / base_flops < 0.01  # the cost model of the unpatched model
    lvtp_kernels.patch(model, flops_reduction=0.3, keep_records=True)
    out, dense = run(model, x)
    assert out.shape == base_out[0].shape  # class outputs unchanged, dense outputs at full N
    if dense is not None:
        assert dense.shape == base_out[1].shape
    schedule = model._lvtp.schedule
    shape = cost_shape(model)
    counts = stage_token_counts(shape, schedule)
    recs = lvtp_kernels.last_records(model)
    assert [r.layer for r in recs] == [layer for layer, _ in schedule]
    assert [r.x_at_stage.shape[1] for r in recs] == [counts[r.layer] for r in recs]
    assert [r.keep_idx.shape[1] for r in recs] == [counts[r.layer + 1] for r in recs]
    counted = count_flops(model.forward_features if name.startswith("timm") else model, x[:1])
    analytic = vit_flops(shape, schedule)
    assert abs(counted - analytic) / analytic < 0.03
    assert abs((1 - analytic / vit_flops(shape)) - 0.3) <= 0.02
    assert counted < 0.75 * base_flops


@pytest.mark.parametrize("name", ["timm:cls", "timm:reg_tokens", "hf:vit_cls_sdpa", "hf:dinov2_eager"])
def test_state_dict_unchanged_and_round_trip(name):
    model, x = both(name)
    cls = type(model)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    before = run(model, x)[0]
    lvtp_kernels.patch(model, flops_reduction=0.3)
    pruned = run(model, x)[0]
    assert type(model) is not cls and type(model)._lvtp_original_class is cls and isinstance(model, cls)
    after_sd = model.state_dict()
    assert list(after_sd) == list(sd) and all(torch.equal(after_sd[k], v) for k, v in sd.items())
    assert torch.isfinite(pruned).all() and not torch.equal(before, pruned)
    lvtp_kernels.patch(model, schedule=[(2, 0.5)])  # re-patching replaces the settings, patches once
    assert sum(c.__name__.startswith("LVTP") for c in type(model).__mro__) == 1
    lvtp_kernels.unpatch(model)
    assert type(model) is cls and not hasattr(model, "_lvtp") and not is_patched(model)
    assert torch.equal(run(model, x)[0], before)


@pytest.mark.parametrize("name", ["timm:cls", "hf:vit_sdpa"])
def test_patched_model_pickles(name, tmp_path):
    model, x = both(name)
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (3, 0.5)])
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert is_patched(loaded) and loaded._lvtp.stages == {1: 0.5, 3: 0.5}
    assert torch.equal(run(loaded, x)[0], run(model, x)[0])


def test_patched_model_never_asks_for_attention_maps(monkeypatch):
    model, x = hf_model("vit_eager"), images(2, (64, 64))
    lvtp_kernels.patch(model, schedule=[(1, 0.5), (3, 0.5)])
    calls = []
    real = lvtp_kernels.registry.kernels("cpu").attention_entropy  # what the patched forward calls
    monkeypatch.setattr(lvtp_kernels.registry.kernels("cpu"), "attention_entropy", lambda *a: calls.append(a[0].shape) or real(*a))
    assert run(model, x)[1].shape == (2, 65, 32)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="attention maps"):
        model(pixel_values=x, output_attentions=True)
    calls.clear()
    with torch.no_grad():  # per-layer hidden states come back as full token maps (tests/test_dense_adapters.py)
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    assert len(hidden) == 7 and all(h.shape == (2, 65, 32) for h in hidden) and len(calls) == 2


def test_hf_other_input_size_and_tuple_output():
    model = hf_model("vit_sdpa")
    x = images(1, (48, 80))  # position embeddings interpolated to 6 x 10
    lvtp_kernels.patch(model, schedule=[(1, 0.5)], keep_records=True)
    with torch.no_grad():
        out = model(pixel_values=x, interpolate_pos_encoding=True, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (1, 61, 32) and out[1].shape == (1, 32)
    assert lvtp_kernels.last_records(model)[0].x_at_stage.shape[1] == 61
    cls = hf_model("vit_cls_sdpa")
    lvtp_kernels.patch(cls, schedule=[(1, 0.5)])
    with torch.no_grad():
        out = cls(pixel_values=images(2, (64, 64)), labels=torch.tensor([0, 3]))
    assert out.logits.shape == (2, 5) and out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_compiled_patched_hf_model_matches_eager():
    torch._dynamo.reset()
    model = hf_model("vit_sdpa", depth=3, size=32)
    lvtp_kernels.patch(model, schedule=[(1, 0.5)], clusters=4, iters=3)
    x = images(2, (32, 32))
    with torch.no_grad():
        eager = model(pixel_values=x).last_hidden_state
        compiled = torch.compile(model, fullgraph=True)(pixel_values=x).last_hidden_state
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_exported_patched_hf_model_matches_eager():
    # torch.export of a patched model with a fixed schedule; the lvtp ops are inference
    # only, so export it with frozen parameters (model.requires_grad_(False)), as docs/api.md says
    torch._dynamo.reset()
    model = hf_model("vit_sdpa", depth=3, size=32)
    lvtp_kernels.patch(model, schedule=[(1, 0.5)], clusters=4, iters=3)
    model.requires_grad_(False)
    x = images(2, (32, 32))
    ep = torch.export.export(model, (), {"pixel_values": x})
    with torch.no_grad():
        eager = model(pixel_values=x).last_hidden_state
        exported = ep.module()(pixel_values=x).last_hidden_state
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-5)


def test_unsupported_models_name_the_supported_ones():
    from lvtp_kernels import adapters

    with pytest.raises(TypeError, match="supported:.*ViTSegmenter.*timm.*ViTModel.*Dinov2Model"):
        lvtp_kernels.patch(torch.nn.Linear(2, 2), flops_reduction=0.3)
    assert adapters.find_adapter(torch.nn.Linear(2, 2)) is None


def test_find_adapter_imports_neither_library():
    code = (
        "import sys, torch, lvtp_kernels\n"
        "from lvtp_kernels import adapters\n"
        "assert adapters.find_adapter(torch.nn.Linear(2, 2)) is None\n"
        "assert 'timm' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_transformers_imports_without_torchvision():
    _transformers()
    code = "import sys, transformers\nfrom transformers import ViTModel, Dinov2Model\nassert 'torchvision' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unsupported_timm_block_is_a_clear_type_error():
    model = timm_model("cls", depth=2)
    model.blocks[1].attn = torch.nn.Identity()
    with pytest.raises(TypeError, match="block 1"):
        lvtp_kernels.patch(model, schedule=[(0, 0.5)])
    assert not is_patched(model)


def test_timm_dynamic_img_size_and_compile():
    vt = _timm_vit()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = vt.VisionTransformer(img_size=IMG, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5,
                                         dynamic_img_size=True).eval()
        except TypeError as exc:
            pytest.skip(f"this timm has no dynamic_img_size: {exc}")
    lvtp_kernels.patch(model, schedule=[(1, 0.5)], clusters=4, iters=3, keep_records=True)
    x = images(1, (32, 40))  # 4 x 5 patches, position embeddings resampled by timm
    with torch.no_grad():
        eager = model.forward_features(x)
        assert eager.shape == (1, 21, 32)
        assert lvtp_kernels.last_records(model)[0].x_at_stage.shape[1] == 21
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled, model.forward_head(eager), rtol=1e-4, atol=1e-4)
